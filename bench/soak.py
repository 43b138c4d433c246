"""Soak: every fault a long run meets, injected together, on loopback; nothing may be lost.

Three worker processes (the tiny random model, CPU) work through a run of at least 600 jobs while
the script kills a random worker with SIGKILL every ``--kill-every`` seconds (and starts a new
one), restarts Redis once, flushes the broker once, restarts its own PostgreSQL once (started in a
temporary folder, never the machine's) and sends one message for a model nobody serves to a
worker's queue, each of these (and one more SIGKILL) at a point of the run's progress (5, 10, 20, 40, 60% of its jobs
stored), so each meets a run in flight. Then it prints a table: faults injected, jobs done, lost,
duplicated, aggregations, and each recovery's time (from the fault to the next stored
generation). Bounded in time and count.

    python bench/soak.py                       # 600 jobs, a kill every 20 s
    python bench/soak.py --jobs 120 --kill-every 8 --out soak.json   # the CI-sized one
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.helpers import RedisServer, Worker, free_port, make_tiny_model  # noqa: E402

DEMO = ROOT / "nerfleet" / "data" / "demo-corpus"
PROMPTS = ("v1", "v2", "v3")


def synthetic_corpus(folder: Path, docs: int) -> Path:
    """The demo corpus's notes copied until there are ``docs`` of them, each copy's text made its own
    (a job's identity holds the text) by a line appended after its last mention."""
    for sub in ("distemist", "symptemist", "medprocner"):
        src = DEMO / sub
        (folder / sub / "txt").mkdir(parents=True)
        tsv = next(src.glob("*.tsv"))
        lines = tsv.read_text().splitlines()
        out = [lines[0]]
        originals = sorted(p.stem for p in (src / "txt").glob("*.txt"))
        for k in range(docs):
            stem = originals[k % len(originals)]
            doc = f"{stem}-{k:04d}"
            text = (src / "txt" / f"{stem}.txt").read_text()
            (folder / sub / "txt" / f"{doc}.txt").write_text(f"{text}\nCopy {k}.\n")
            out += [doc + line[len(stem) :] for line in lines[1:] if line.split("\t", 1)[0] == stem]
        (folder / sub / tsv.name).write_text("\n".join(out) + "\n")
    return folder


class Postgres:
    """A PostgreSQL of this script's own, in a temporary folder, on a free loopback port."""

    def __init__(self, folder: Path):
        self.folder, self.port = folder, free_port()
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    @staticmethod
    def missing() -> str | None:
        return None if shutil.which("initdb") and shutil.which("pg_ctl") else "no initdb/pg_ctl on PATH"

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _ctl(self, *args: str) -> None:
        opts = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1"
        subprocess.run(
            [*self.as_user, "pg_ctl", "-D", str(self.folder / "data"), "-o", opts, "-w", "-l",
             str(self.folder / "pg.log"), *args],
            check=True, capture_output=True,
        )  # fmt: skip

    def start(self) -> Postgres:
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.as_user:
            shutil.chown(self.folder, "postgres", "postgres")
        subprocess.run(
            [*self.as_user, "initdb", "-D", str(self.folder / "data"), "-U", "postgres", "--auth=trust"],
            check=True,
            capture_output=True,
        )
        self._ctl("start")
        return self

    def restart(self) -> None:
        self._ctl("restart", "-m", "fast")

    def stop(self) -> None:
        self._ctl("stop", "-m", "fast")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=600)
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--kill-every", type=float, default=20.0)
    ap.add_argument("--limit-s", type=float, default=900.0, help="give up (and say so) after this long")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="nerfleet-soak-"))
    work.chmod(0o755)  # PostgreSQL runs as its own user and must reach its folder inside
    redis_server = RedisServer(work / "redis").start()
    pg = None if Postgres.missing() else Postgres(work / "pg").start()
    env = {
        **os.environ,
        "NERFLEET_HOME": str(work / "home"),
        "NERFLEET_BROKER_URL": redis_server.url,
        "NERFLEET_DATABASE_URL": pg.url if pg else f"sqlite:///{work / 'nerfleet.db'}",
        "NERFLEET_LEASE_S": "6",
        "NERFLEET_HEARTBEAT_S": "1",
        "NERFLEET_SWEEP_INTERVAL_S": "1",
        "NERFLEET_ORPHAN_S": "5",
        "NERFLEET_AGGREGATION_LEASE_S": "15",
        "NERFLEET_BATCH_SIZE": "4",
        "NERFLEET_MAX_ATTEMPTS": "10",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_VERBOSITY": "error",
    }
    os.environ.update(env)
    cli = [sys.executable, "-m", "nerfleet.cli"]
    docs = -(-args.jobs // len(PROMPTS))
    corpus = synthetic_corpus(work / "corpus", docs)
    model = make_tiny_model(work / "tiny")
    subprocess.run([*cli, "corpus", "build", str(corpus)], env=env, check=True, capture_output=True)
    workers: list[Worker] = []
    started = 0

    def start_worker() -> None:
        nonlocal started
        started += 1
        workers.append(Worker(str(model), env, work / f"worker-{started}.log", name=f"soak{started}@%h"))

    for _ in range(args.workers):
        start_worker()
    for w in workers:
        w.wait_ready(180)
    prompts = [a for p in PROMPTS for a in ("--prompt", p)]
    run = subprocess.run(
        [*cli, "run", "--model", str(model), *prompts, "--split", "all", "--limit", str(docs),
         "--max-new-tokens", "8"],
        env=env, check=True, capture_output=True, text=True,
    )  # fmt: skip
    run_id = run.stdout.split()[-1]

    import sqlalchemy

    db = sqlalchemy.create_engine(env["NERFLEET_DATABASE_URL"], pool_pre_ping=True)

    def query(sql: str):
        for _ in range(60):  # through the PostgreSQL restart too
            try:
                with db.connect() as conn:
                    return conn.exec_driver_sql(sql).fetchall()
            except sqlalchemy.exc.OperationalError:
                time.sleep(0.5)
        raise RuntimeError(f"database unreachable for 30 s: {sql}")

    def stored() -> int:
        return query("SELECT count(*) FROM generation")[0][0]

    faults: list[dict] = []
    t0 = time.time()
    # the one-off faults at points of the run's progress (share of its jobs stored), so each
    # meets a run in flight whatever the machine's speed
    # (one SIGKILL among them: a fast machine may store the whole run before the first periodic one)
    plan = [(0.05, "wrong-model message"), (0.1, "worker SIGKILL"), (0.2, "Redis restart"), (0.4, "broker flushed")]
    if pg:
        plan.append((0.6, "PostgreSQL restart"))
    total = query(f"SELECT count(*) FROM runjob WHERE run_id = '{run_id}'")[0][0]
    next_kill = t0 + args.kill_every
    rng = random.Random(0)
    aggregated = False

    def kill_one() -> None:
        victim = rng.choice([w for w in workers if w.proc.poll() is None])
        victim.kill()
        workers.remove(victim)
        start_worker()

    while time.time() - t0 < args.limit_s:
        now = time.time() - t0
        if plan and stored() >= plan[0][0] * total:
            _, what = plan.pop(0)
            if what == "wrong-model message":
                from nerfleet.tasks.app import make_app
                from nerfleet.tasks.queues import generation_queue

                some = [h for (h,) in query("SELECT job_hash FROM runjob LIMIT 4")]
                make_app().send_task("nerfleet.generate", args=[run_id, "nobody", some],
                                     queue=generation_queue(model.name))  # fmt: skip
            elif what == "Redis restart":
                redis_server.stop()
                time.sleep(1)
                redis_server.start()
            elif what == "broker flushed":
                import redis

                redis.Redis.from_url(redis_server.url).flushall()
            elif what == "PostgreSQL restart":
                pg.restart()
            elif what == "worker SIGKILL":
                kill_one()
            faults.append({"fault": what, "at_s": round(now, 1), "stored_before": stored()})
        if time.time() >= next_kill:
            kill_one()
            faults.append({"fault": "worker SIGKILL", "at_s": round(time.time() - t0, 1), "stored_before": stored()})
            next_kill = time.time() + args.kill_every
        for f in faults:  # recovery: the first stored generation after the fault
            if "recovered_s" not in f and stored() > f["stored_before"]:
                f["recovered_s"] = round(time.time() - t0 - f["at_s"], 1)
        if query(f"SELECT aggregated_at FROM run WHERE id = '{run_id}'")[0][0] is not None and not plan:
            aggregated = True
            break
        time.sleep(0.5)
    wall = time.time() - t0
    for w in workers:
        w.stop()
    states = dict(
        query(
            "SELECT state, count(*) FROM job JOIN runjob ON runjob.job_hash = job.hash "
            f"WHERE runjob.run_id = '{run_id}' GROUP BY state"
        )
    )
    generations = stored()
    distinct = query("SELECT count(DISTINCT job_hash) FROM generation")[0][0]
    aggregations = query(f"SELECT aggregation_count FROM run WHERE id = '{run_id}'")[0][0]
    forwarded = sum("sent to" in p.read_text(errors="replace") for p in work.glob("worker-*.log"))
    result = {
        "jobs": total,
        "done": states.get("done", 0),
        "failed": states.get("failed", 0),
        "lost": total - states.get("done", 0) - states.get("failed", 0),
        "duplicate_generations": generations - distinct,
        "aggregations": aggregations,
        "aggregated": aggregated,
        "wall_s": round(wall, 1),
        "workers_started": started,
        "wrong_model_messages_forwarded": forwarded,
        "database": "PostgreSQL (own, restarted once)" if pg else f"SQLite ({Postgres.missing()})",
        "faults": faults,
    }
    print(f"{'fault':<22} {'at s':>6} {'recovered after s':>18}")
    for f in faults:
        print(f"{f['fault']:<22} {f['at_s']:>6} {str(f.get('recovered_s', '—')):>18}")
    keys = ("jobs", "done", "failed", "lost", "duplicate_generations", "aggregations", "wall_s", "workers_started")
    print("  ".join(f"{k} {result[k]}" for k in keys))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    redis_server.stop()
    if pg:
        pg.stop()
    ok = aggregated and result["lost"] == 0 and result["duplicate_generations"] == 0 and aggregations == 1
    shutil.rmtree(work, ignore_errors=True)
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    main()

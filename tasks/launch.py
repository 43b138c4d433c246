"""Starting GPU-pinned workers: CUDA_VISIBLE_DEVICES is set before torch is imported."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

from nerfleet.settings import get_settings
from nerfleet.tasks.broker import wait_for_services


def process_age() -> float:
    """Seconds since this process started (Linux's /proc; 0 elsewhere): the worker's start-up
    times count the interpreter's and the CLI's imports too."""
    try:
        since_boot = float(open("/proc/uptime").read().split()[0])
        ticks = int(open("/proc/self/stat").read().rsplit(")", 1)[1].split()[19])
        return max(0.0, since_boot - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


def visible_gpus() -> list[str]:
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env:
        return [g for g in env.split(",") if g.strip()]
    if shutil.which("nvidia-smi"):
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False).stdout
        return [str(i) for i, line in enumerate(ln for ln in out.splitlines() if ln.startswith("GPU"))]
    return []


def spawn_per_gpu(argv: list[str]) -> int:
    """``--gpu all``: one worker process per visible GPU; signals are passed on."""
    gpus = visible_gpus()
    if not gpus:
        raise RuntimeError("--gpu all: no GPU visible (nvidia-smi found none and CUDA_VISIBLE_DEVICES is unset)")
    procs = []
    for gpu in gpus:
        args = [sys.executable, "-m", "nerfleet.cli", *argv, "--gpu", gpu]
        procs.append(subprocess.Popen(args))

    def forward(signum, _frame):
        for p in procs:
            p.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    return max(p.wait() for p in procs)


def _pin(gpu: str | None) -> str:
    """Pin this process to one GPU before torch is imported; the node-name suffix."""
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
        return f"gpu{gpu}"
    return "cpu"


def _run_celery_worker(app, queues: str, node: str, loglevel: str, tasks: int = 1) -> None:
    # No fork after CUDA: the model lives in this process. One task at a time (solo pool), or for
    # an engine with slots several task threads feeding it, each acknowledged once stored.
    app.worker_main(
        [
            "worker",
            "-P",
            "solo" if tasks == 1 else "threads",
            "-c",
            str(tasks),
            "-Q",
            queues,
            "-n",
            node,
            "-E",
            "--loglevel",
            loglevel,
            "--without-gossip",
            "--without-mingle",
        ]
    )


def start_worker(model: str, gpu: str | None, engine: str, loglevel: str = "INFO", name: str | None = None) -> None:
    started = time.time() - process_age()
    where = _pin(gpu)

    s = get_settings()
    wait_for_services(s.broker_url, s.db_url, s.connect_timeout_s)  # before minutes of model loading
    # Compiled kernels kept in NERFLEET_HOME, not /tmp: a restarted worker (after a reboot too) reads
    # them instead of compiling its engine's step again.
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(s.home / "compile-cache" / "inductor"))
    os.environ.setdefault("TRITON_CACHE_DIR", str(s.home / "compile-cache" / "triton"))
    # Only now may torch be imported.
    from nerfleet.tasks import scoring
    from nerfleet.tasks.app import app
    from nerfleet.tasks.queues import aggregate_queue, generation_queue
    from nerfleet.tasks.sweeper import start_sweeper
    from nerfleet.workers import runtime
    from nerfleet.workers.engine import engine_counters
    from nerfleet.workers.models import resolve

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    scorers = scoring.start()  # spawned now: their imports overlap the model's loading
    spec = resolve(model)
    node = name or f"{spec.name}-{where}@%h"
    rt = runtime.install(spec, engine, worker=node.replace("%h", os.uname().nodename))
    tasks = runtime.tasks_in_flight(rt.engine, get_settings().batch_size)
    slots = f", {rt.engine.slots} slots, {tasks} tasks in flight" if tasks > 1 else ""
    slots += f", {scorers} scoring processes" if scorers else ""
    print(
        f"nerfleet worker {rt.worker}: model {spec.name} loaded ({rt.engine.name} engine{slots}) "
        f"in {time.time() - started:.1f} s, queue {generation_queue(spec.name)}",
        flush=True,
    )
    if hasattr(rt.engine, "on_first_token"):
        rt.engine.on_first_token = lambda at: print(
            f"nerfleet worker {rt.worker}: first token {at - started:.1f} s after start", flush=True
        )
    start_sweeper(app)
    try:
        _run_celery_worker(app, f"{generation_queue(spec.name)},{aggregate_queue()}", node, loglevel, tasks)
    finally:
        # what the engine did in this process's life (steps, prefill and decoding seconds, tokens):
        # an operator's view of where a worker's time went, and the fleet benchmark's per-step costs
        counters = engine_counters(rt.engine)
        if counters:
            print(f"nerfleet worker {rt.worker}: engine counters {json.dumps(counters)}", flush=True)
        scoring.stop()


def start_train_worker(gpu: str | None, loglevel: str = "INFO") -> None:
    where = _pin(gpu)
    # after the GPU pin: nothing may import torch before CUDA_VISIBLE_DEVICES is set
    from nerfleet.tasks.app import app
    from nerfleet.tasks.queues import train_queue

    _run_celery_worker(app, train_queue(), f"train-{where}@%h", loglevel)

"""Starting GPU-pinned workers: CUDA_VISIBLE_DEVICES is set before torch is imported."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys


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


def _run_celery_worker(app, queues: str, node: str, loglevel: str) -> None:
    # Solo pool: the model lives in this process (no fork after CUDA), one batch at a time.
    app.worker_main(
        [
            "worker",
            "-P",
            "solo",
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
    where = _pin(gpu)
    # Only now may torch be imported.
    from nerfleet.tasks.app import AGGREGATE_QUEUE, app
    from nerfleet.tasks.sweeper import start_sweeper
    from nerfleet.workers import runtime
    from nerfleet.workers.models import resolve

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    spec = resolve(model)
    node = name or f"{spec.name}-{where}@%h"
    rt = runtime.install(spec, engine, worker=node.replace("%h", os.uname().nodename))
    print(
        f"nerfleet worker {rt.worker}: model {spec.name} loaded ({rt.engine.name} engine), queue {spec.queue}",
        flush=True,
    )
    start_sweeper(app)
    _run_celery_worker(app, f"{spec.queue},{AGGREGATE_QUEUE}", node, loglevel)


def start_train_worker(gpu: str | None, loglevel: str = "INFO") -> None:
    where = _pin(gpu)
    from nerfleet.tasks.app import TRAIN_QUEUE, app

    _run_celery_worker(app, TRAIN_QUEUE, f"train-{where}@%h", loglevel)

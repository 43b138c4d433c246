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


def start_worker(model: str, gpu: str | None, engine: str, loglevel: str = "INFO", name: str | None = None) -> None:
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    # Only now may torch be imported.
    from nerfleet.tasks.app import AGGREGATE_QUEUE, app
    from nerfleet.tasks.sweeper import start_sweeper
    from nerfleet.workers import runtime
    from nerfleet.workers.models import resolve

    spec = resolve(model)
    node = name or f"{spec.name}-{'gpu' + gpu if gpu is not None else 'cpu'}@%h"
    rt = runtime.install(
        spec,
        engine,
        device=None if gpu is not None else "cpu" if not _has_cuda() else None,
        worker=node.replace("%h", os.uname().nodename),
    )
    print(
        f"nerfleet worker {rt.worker}: model {spec.name} loaded ({rt.engine.name} engine), queue {spec.queue}",
        flush=True,
    )
    start_sweeper(app)
    app.worker_main(
        [
            "worker",
            "-P",
            "solo",
            "-Q",
            f"{spec.queue},{AGGREGATE_QUEUE}",
            "-n",
            node,
            "-E",
            "--loglevel",
            loglevel,
            "--without-gossip",
            "--without-mingle",
        ]
    )


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def start_train_worker(gpu: str | None, loglevel: str = "INFO") -> None:
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    from nerfleet.tasks.app import TRAIN_QUEUE, app

    node = f"train-{'gpu' + gpu if gpu is not None else 'cpu'}@%h"
    app.worker_main(
        [
            "worker",
            "-P",
            "solo",
            "-Q",
            TRAIN_QUEUE,
            "-n",
            node,
            "-E",
            "--loglevel",
            loglevel,
            "--without-gossip",
            "--without-mingle",
        ]
    )

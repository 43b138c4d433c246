"""GPU time per call, shared by the kernel benchmarks."""

from __future__ import annotations

import torch


def seconds_per_call(fn, reps: int = 20, samples: int = 7) -> float:
    """``reps`` calls queued back to back between two CUDA events (the host's launch time hidden, as
    in the engine's CUDA graphs), after a warm-up; the median of ``samples`` such windows."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(samples):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1000 / reps)
    return sorted(times)[len(times) // 2]

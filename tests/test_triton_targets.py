"""nerfleet's Triton kernels build for the H100 (sm_90) here, without a GPU (tests/triton_targets.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.helpers import ROOT


def test_every_triton_kernel_compiles_for_the_h100():
    pytest.importorskip("triton.backends.nvidia", reason="needs Triton's NVIDIA backend (ships with triton)")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run(
        [sys.executable, "-m", "tests.triton_targets"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    lines = run.stdout.splitlines()
    assert run.returncode == 0, "\n".join(line for line in lines if line.startswith("FAILED")) or run.stderr[-2000:]
    from tests.triton_targets import launches

    assert len([line for line in lines if line.startswith("ok ")]) == len(launches()) == 16, run.stdout


def test_every_kernel_of_nerfleet_is_in_the_compiled_list():
    pytest.importorskip("triton")
    from nerfleet.workers import decoding_kernels, invariant_kernels
    from tests.triton_targets import launches

    defined = {n for m in (decoding_kernels, invariant_kernels) for n in vars(m) if n.endswith("_kernel")}
    assert defined == {launch.name.split()[0] for launch in launches()}

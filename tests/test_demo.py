"""`nerfleet demo` as a user runs it: embedded Redis, a real SmolLM2 worker, the tables."""

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_demo_runs_three_documents_with_smollm2(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("NERFLEET_")}
    env["NERFLEET_HOME"] = str(tmp_path / "home")
    result = subprocess.run(
        [sys.executable, "-m", "nerfleet.cli", "demo", "--limit", "3", "--max-new-tokens", "24"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "embedded Redis" in out
    for title in ("Table 3", "Table 4", "Table 5"):
        assert title in out
    assert "smollm2" in out and "3 documents" in out
    # the closing lines say why a tiny model's structured tables are zeros
    assert "Tables 4 and 5 are zeros because smollm2 wrote none of its answers in the requested structures" in out
    assert (tmp_path / "home" / "nerfleet.db").is_file()
    reports = list((tmp_path / "home" / "reports").glob("*/f1.png"))
    assert reports and reports[0].stat().st_size > 1000

"""``bench/rerun.py`` at one repeat: the figures it prints, and no Prefect server left behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _servers_under(folder: Path) -> list[int]:
    """Live msaflow server processes whose home (their cwd) lies under ``folder``."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes()
            cwd = os.readlink(proc / "cwd")
        except OSError:
            continue
        if b"serve_main" in cmd and cwd.startswith(str(folder)):
            pids.append(int(proc.name))
    return pids


@pytest.mark.slow
def test_rerun_bench_prints_the_ratio_and_stops_its_server(tmp_path):
    env = {**os.environ, "TMPDIR": str(tmp_path), "PYTHONPATH": str(ROOT)}
    env.pop("MSAFLOW_PREFECT_SERVER", None)  # the session's "ephemeral": the bench sets its own
    proc = subprocess.run(
        [sys.executable, "bench/rerun.py", "--repeats", "1", "--mode", "reuse", "--no-breakdown"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    try:
        assert proc.returncode == 0, proc.stderr[-3000:]
        got = json.loads(proc.stdout)
        rerun = got["rerun"]["reuse"]
        assert rerun["median_s"] > 0 and got["import_torch_s"]["median"] > 0
        assert rerun["ratio_median_per_round"] > 0
        assert _servers_under(tmp_path) == [], "the bench left its Prefect server running"
    finally:
        for pid in _servers_under(tmp_path):
            os.kill(pid, 9)

"""Run a benchmark module the way a user does, on this CPU machine."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def run_bench(tmp_path):
    """``run_bench("bench_norms", "--hidden", "2816")`` -> (stdout, CSV rows).

    TRITON_INTERPRET is removed: static compilation needs Triton's real compiler.
    """

    def run(module: str, *args: str):
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        out = tmp_path / f"{module}.csv"
        proc = subprocess.run(
            [sys.executable, "-m", f"microbench.{module}", *args, "--csv", str(out)],
            capture_output=True,
            text=True,
            cwd=REPO,
            env=env,
            timeout=600,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout, list(csv.DictReader(out.open()))

    return run

"""bench_norms runs end to end on CPU: labelled launch model and static metrics, no spills."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU mode of the benchmark")
def test_cpu_mode(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = tmp_path / "norms.csv"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "microbench.bench_norms",
            "--hidden",
            "2816,5376",
            "--csv",
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = list(csv.DictReader(out.open()))
    model = [row for row in rows if row["impl"] == "model"]
    assert [(r["cuda_launches_stock"], r["cuda_launches_patched"]) for r in model] == [
        ("4", "1"),
        ("7", "3"),
    ]
    static = [row for row in rows if row.get("registers")]
    kernels = {row["kernel"] for row in static}
    assert {"_triple_rmsnorm_kernel", "_rmsnorm_add_kernel", "_gelu_tanh_mul_kernel"} <= kernels
    for row in static:  # a real hidden size must not spill
        assert int(row["spill_store_bytes"]) == 0 and int(row["spill_load_bytes"]) == 0, row

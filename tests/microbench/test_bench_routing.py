"""bench_routing runs end to end on CPU: no timings, a labelled launch model, static metrics."""

from __future__ import annotations

import pytest
import torch


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU mode of the benchmark")
def test_cpu_mode_reports_model_and_static_metrics(run_bench):
    stdout, rows = run_bench("bench_routing")
    assert "no GPU: no timings" in stdout
    assert {row["device"] for row in rows} == {"cpu-no-gpu"}
    assert not any(row.get("median_us") for row in rows), "no timings without a GPU"
    static = {(row["shape"], row["impl"]): row for row in rows if row.get("registers")}
    for key in [
        ("routing E=128 K=8", "ours"),
        ("routing E=128 K=8", "upstream_fused"),
        ("routing E=4096 K=8", "ours"),
    ]:
        row = static[key]
        assert row["arch"] == "sm_90a" and int(row["sass_instructions"]) > 0
        assert int(row["spill_store_bytes"]) == 0, row

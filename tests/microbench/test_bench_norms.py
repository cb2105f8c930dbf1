"""bench_norms runs end to end on CPU: labelled launch model and static metrics, no spills."""

from __future__ import annotations

import pytest
import torch


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU mode of the benchmark")
def test_cpu_mode(run_bench):
    stdout, rows = run_bench("bench_norms", "--hidden", "2816,5376")
    assert "no GPU: no timings" in stdout
    model = [row for row in rows if row["impl"] == "model"]
    assert [(r["cuda_launches_stock"], r["cuda_launches_patched"]) for r in model] == [
        ("4", "1"),
        ("7", "3"),
        ("2", "1"),
        ("2", "1"),
        ("2", "2"),
    ]
    static = [row for row in rows if row.get("registers")]
    kernels = {row["kernel"] for row in static}
    assert {
        "_triple_rmsnorm_kernel",
        "_rmsnorm_add_kernel",
        "_gelu_tanh_mul_kernel",
        "_layer_tail_next_norm_kernel",
    } <= kernels
    # SGLang's kernel that layer_tail_next_norm replaces, side by side.
    assert {r["kernel"] for r in static if r["impl"] == "sglang"} == {
        "_gemma_rmsnorm_residual_kernel"
    }
    for row in static:  # a real hidden size must not spill
        assert int(row["spill_store_bytes"]) == 0 and int(row["spill_load_bytes"]) == 0, row

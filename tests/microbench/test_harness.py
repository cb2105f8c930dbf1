"""The GPU timing harness's arithmetic (no GPU needed) and the README section generator."""

from __future__ import annotations

import csv

import pytest
import torch

from microbench import harness, readme_table


@pytest.mark.parametrize(
    "name, tbps",
    [
        ("NVIDIA H100 80GB HBM3", 3.35),
        ("NVIDIA H200", 4.8),
        ("NVIDIA B200", 8.0),
        ("NVIDIA H100 PCIe", None),  # other memory system: no % rather than a wrong one
        ("NVIDIA H100 NVL", None),
        ("NVIDIA A100-SXM4-80GB", None),
        ("cpu-no-gpu", None),
    ],
)
def test_peak_bandwidth_by_device_name(name, tbps):
    assert harness.peak_tbps(name) == tbps


def test_bandwidth_and_speedup_arithmetic():
    assert harness.achieved_gbps(3.35e9, 1.0) == pytest.approx(3350)
    assert harness.pct_of_peak(3350, "NVIDIA H100 80GB HBM3") == pytest.approx(100)
    assert harness.pct_of_peak(2400, "NVIDIA H200") == pytest.approx(50)
    assert harness.pct_of_peak(1000, "NVIDIA A100") is None
    with pytest.raises(ValueError, match="milliseconds"):
        harness.achieved_gbps(1, 0)
    # 1 MB in 2 µs = 500 GB/s = 10.4 % of an H200; ours took 1 µs, so it is 2x faster.
    row = harness.timing_row("x T=1", "sglang", (0.002, 0.0019, 0.0021), 1e6, "NVIDIA H200", 0.001)
    assert row["median_us"] == 2.0 and (row["p20_us"], row["p80_us"]) == (1.9, 2.1)
    assert row["GB/s"] == 500.0 and row["pct_peak_hbm"] == 10.4 and row["speedup_vs_ours"] == 2.0
    unknown = harness.timing_row("x T=1", "ours", (0.001,) * 3, 1e6, "NVIDIA L4", 0.001)
    assert unknown["pct_peak_hbm"] == "" and unknown["what"] == "GPU timing"
    assert harness.uses_cuda_graph(256) and not harness.uses_cuda_graph(257)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without a GPU")
def test_timing_refuses_without_a_gpu():
    with pytest.raises(RuntimeError, match="needs a GPU"):
        harness.time_impls("x T=1", 1, {"ours": lambda: None}, 1.0)


def _bench_csv(path, device, date, rows):
    context = {
        "date": date,
        "device": device,
        "torch": "t",
        "triton": "tr",
        "sglang": "s",
        "git_sha": "abc1234",
    }
    rows = [{**context, **r} for r in rows]
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


STEP = {
    "shape": "31B decode T=1",
    "op": readme_table.STEP_OP,
    "what": "model (CUDA path, whole decode step)",
    "context": 2048,
    "launches_stock": 785,
    "launches_patched": 735,
    "bytes_stock": 62_664_000_000,
    "bytes_patched": 62_443_000_000,
    "roofline_us_stock_H100": 18705.53,
    "roofline_us_patched_H100": 18639.82,
    "roofline_us_stock_H200": 13054.9,
    "roofline_us_patched_H200": 13009.04,
}


def test_readme_section_from_the_latest_csv_per_device(tmp_path):
    _bench_csv(tmp_path / "2026-11-20-cpu-no-gpu-bench.csv", "cpu-no-gpu", "2026-11-20", [STEP])
    newer = {**STEP, "launches_patched": 700}
    _bench_csv(tmp_path / "2026-11-24-cpu-no-gpu-bench.csv", "cpu-no-gpu", "2026-11-24", [newer])
    timing = {
        "shape": "H=5376 triple T=1",
        "impl": "ours",
        "what": "GPU timing",
        "median_us": 4.1,
        "p20_us": 4.0,
        "p80_us": 4.3,
        "GB/s": 100.0,
        "pct_peak_hbm": 3.0,
        "speedup_vs_ours": 1.0,
    }
    _bench_csv(
        tmp_path / "2026-11-22-NVIDIA-H100-80GB-HBM3-bench.csv",
        "NVIDIA-H100-80GB-HBM3",
        "2026-11-22",
        [STEP, timing],
    )
    (tmp_path / "2026-11-25-cpu-no-gpu-norms.csv").write_text("not a bench csv\n")
    found = readme_table.latest_per_device(tmp_path)
    assert {d: p.name for d, p in found.items()} == {
        "NVIDIA-H100-80GB-HBM3": "2026-11-22-NVIDIA-H100-80GB-HBM3-bench.csv",
        "cpu-no-gpu": "2026-11-24-cpu-no-gpu-bench.csv",
    }
    text = readme_table.render(tmp_path)
    assert "#### cpu-no-gpu, 2026-11-24 (git abc1234" in text
    assert "| 31B decode T=1 | 785 → 700 | 62.664 → 62.443 | 18,705.5 → 18,639.8 |" in text
    assert "not a measurement" in text and "No GPU timings on cpu-no-gpu." in text
    assert "| H=5376 triple T=1 | ours | 4.1 | 4.0–4.3 | 100.0 | 3.0 | 1.0 |" in text
    with pytest.raises(ValueError, match="no <date>-<device>-bench.csv"):
        readme_table.render(tmp_path / "empty")

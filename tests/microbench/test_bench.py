"""The shared bench: shapes, the CUDA-path op model, `gemma4-kernels bench`, plots, and the
serving script's argument handling."""

from __future__ import annotations

import csv
import json
import subprocess

import pytest
import torch

from microbench import op_model, plot, shapes
from tests.microbench.conftest import REPO

H = 2816  # 26B-A4B hidden
BF16 = 2


def test_cases_are_named_for_reading_and_cover_every_model():
    cases = shapes.cases()
    assert {c.model.name for c in cases} == {"26B-A4B", "31B", "E4B", "E2B"}
    labels = {c.label for c in cases}
    assert "26B-A4B decode T=64" in labels and "31B prefill T=8192" in labels
    assert {c.tokens for c in cases if c.phase == "decode"} == {1, 2, 4, 8, 16, 32, 64, 128, 256}
    assert shapes.cases(["E2B"], ["decode"], [1, 2])[1].label == "E2B decode T=1 TP=2"
    with pytest.raises(ValueError, match="unknown model"):
        shapes.cases(["70B"])
    with pytest.raises(ValueError, match="unknown phase"):
        shapes.cases(phases=["verify"])


def test_bytes_follow_the_tensors_each_kernel_moves():
    case = shapes.Case(shapes.MODELS["26B-A4B"], "decode", 4)
    row = {r["op"]: r for r in op_model.rows([case])}
    # SGLang: post-attn norm (read a, write h), fused add+norm (read h, r; write pre, r),
    # router norm and pre_ff_2 norm (read r, write one each); one weight vector each.
    assert row["triple_rmsnorm"]["bytes_stock"] == (2 + 4 + 2 + 2) * 4 * H * BF16 + 4 * H * BF16
    # Ours: read a, r; write four outputs; four weight vectors.
    assert row["triple_rmsnorm"]["bytes_ours"] == 6 * 4 * H * BF16 + 4 * H * BF16
    assert (row["triple_rmsnorm"]["launches_stock"], row["triple_rmsnorm"]["launches_ours"]) == (
        4,
        1,
    )
    # Routing: fp32 logits [T, 128] and scale [128] in, fp32 weights + int32 ids [T, 8] out.
    assert row["moe_routing"]["bytes_ours"] == 4 * (4 * 128 + 128) + 8 * 4 * 8
    assert row["moe_routing"]["roofline_ns_ours_H100"] == pytest.approx(
        row["moe_routing"]["bytes_ours"] / 3.35e3, abs=0.01
    )


def test_bench_cli_writes_csv_and_json_for_every_op_and_architecture(tmp_path, capsys):
    from gemma4_kernels.cli import main

    out = tmp_path / "bench.csv"
    assert main(["bench", "--phase", "decode", "--out", str(out), "--markdown"]) == 0
    rows = list(csv.DictReader(out.open()))
    ops_by_model = {}
    for r in rows:
        ops_by_model.setdefault(r["shape"].split()[0], set()).add(r["op"])
    assert ops_by_model["26B-A4B"] >= {"moe_routing", "triple_rmsnorm"}
    assert "layer_tail_next_norm" in ops_by_model["31B"]
    assert "layer_tail_next_norm" in ops_by_model["E2B"]
    step = "decode step (all layers, embedding, final norm, LM head)"
    for model, patches in (
        ("26B-A4B", {"moe_routing", "post_attn_triple_norm", "router_fp32", "k_eq_v_skip_v"}),
        ("31B", {"layer_boundary_fusion", "k_eq_v_skip_v"}),
        ("E4B", {"ple_tail", "layer_boundary_fusion"}),
        ("E2B", {"ple_tail", "layer_boundary_fusion"}),
    ):
        assert step in ops_by_model[model]
        assert {f"patch {p}" for p in patches} <= ops_by_model[model], model
    steps = [r for r in rows if r["op"] == step]
    assert len(steps) == 4 * len(shapes.DECODE_TOKENS)
    assert all(r["context"] == "2048" for r in steps)
    if not torch.cuda.is_available():
        assert {r["what"] for r in rows} == {
            "model (CUDA path, per layer)",
            "model (CUDA path, whole decode step)",
        }
        assert rows[0]["device"] == "cpu-no-gpu"
    payload = json.loads(out.with_suffix(".json").read_text())
    assert payload["context"]["sglang"] == "0.5.23" and len(payload["rows"]) == len(rows)
    printed = capsys.readouterr().out
    # 31B stock: 2 entry + 60 layers x 13 (norm, qkv, qkv norm, rope, KV write, attention,
    # o_proj, 2 norms, 3 MLP, tail) + 3 exit; patched: -60 boundary fusion, +10 V copies.
    assert "not a measurement" in printed and "| 31B decode T=64 | 785 → 735 |" in printed
    assert main(["bench", "--shapes", "70B"]) == 2
    assert main(["bench", "--context", "0"]) == 2


def test_plots_render(tmp_path):
    from gemma4_kernels.cli import main

    out = tmp_path / "bench.csv"
    assert main(["bench", "--shapes", "31B,E2B", "--phase", "decode", "--out", str(out)]) == 0
    written = plot.plot(out, tmp_path / "plots")
    names = {p.name for p in written}
    assert {"layer_tail_next_norm.png"} <= names
    assert "decode_step_all_layers_embedding_final_norm_LM_head.png" in names
    # GPU timing rows (synthetic numbers: this checks the drawing, not a measurement).
    timed = tmp_path / "timed.csv"
    fields = ["device", "shape", "impl", "what", "median_us", "speedup_vs_ours", "pct_peak_hbm"]
    with timed.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for t in (1, 64):
            for impl, speedup in (("ours", 1.0), ("sglang_sequence", 2.0)):
                values = ["test", f"H=2816 triple T={t}", impl, "GPU timing", 5, speedup, 40]
                writer.writerow(dict(zip(fields, values, strict=True)))
    gpu = plot.plot(timed, tmp_path / "gpu")
    assert [p.name for p in gpu] == ["gpu_H_2816_triple.png"]
    for path in written + gpu:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def serving(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(REPO / "scripts" / "bench_serving.sh"), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    "args, rc, message",
    [
        ((), 2, "--model-path is required"),
        (("--model-path", "m", "--tp", "two"), 2, "positive integers"),
        (("--model-path", "m", "--workloads", "3000-100"), 2, "IN/OUT token pairs"),
        (("--model-path", "m", "--bogus"), 2, "unknown argument '--bogus'"),
        (("--model-path", "m", "--max-concurrency", "0"), 2, "positive integers"),
        (("--model-path",), 2, "--model-path needs a value"),
    ],
)
def test_serving_script_rejects_bad_arguments(args, rc, message):
    proc = serving(*args)
    assert proc.returncode == rc and message in proc.stderr, proc.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without GPU")
def test_serving_script_refuses_without_a_gpu():
    proc = serving("--model-path", "google/gemma-4-31B-it")
    assert proc.returncode == 3 and "no GPU" in proc.stderr
    assert serving("--help").returncode == 0

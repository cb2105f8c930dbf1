"""YOCO benchmark pieces on CPU: the FLOPs model (checked by hand on a toy layer stack),
the GPU throughput script's dry run (configs SGLang resolves) and its refusal on CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from microbench import yoco_model
from microbench.bench_yoco import plan, write_checkpoint_config
from tests.microbench.conftest import REPO

TOY = yoco_model.TextShape(
    hidden=2, intermediate=3, heads=1, kv_heads=1, head_dim=2, global_head_dim=4, window=2,
    ple=1, layer_types=("sliding_attention", "full_attention"), shared=1, double_wide=False,
)  # fmt: skip


def test_flops_model_on_a_toy_stack_by_hand():
    # Sliding layer 0 (not shared), 3 rows: per row q+o 16, MLP 36, PLE 8, K/V 16 = 76;
    # keys attended 1+2+2 = 5 -> 2*2*1*2*5 = 40. Total 3*76 + 40 = 268 (both paths).
    # Full layer 1 (shared, d=4): per row 32+36+8 = 76; stock 3 rows + 2*2*4*(1+2+3)=96
    # -> 324; YOCO 1 row + 2*2*4*3 = 48 -> 124. Stock 592, YOCO 392.
    out = yoco_model.prefill_model(TOY, prompts=1, prompt_len=3)
    assert out["tflops_stock"] == round(592 / 1e12, 3)
    assert out["flops_avoided_pct"] == round(100 * 200 / 592, 1)
    assert out["rows_x_layers_avoided"] == 2
    assert yoco_model.attended_keys(3, 2) == 5 and yoco_model.attended_keys(3, None) == 6


def test_real_models_save_more_on_e2b_than_e4b():
    e2b = yoco_model.prefill_model(yoco_model.load_shape("E2B"), 30, 7000)
    e4b = yoco_model.prefill_model(yoco_model.load_shape("E4B"), 30, 7000)
    assert e2b["rows_x_layers_avoided"] == 30 * 6999 * 20
    assert e4b["rows_x_layers_avoided"] == 30 * 6999 * 18
    assert e2b["flops_avoided_pct"] > e4b["flops_avoided_pct"] > 0
    assert yoco_model.load_shape("E4B").layer_types[5] == "full_attention"


def test_dry_run_configs_resolve_in_sglang(tmp_path):
    from tests.helpers import resolve

    model_dir = write_checkpoint_config("E2B", tmp_path / "E2B")
    text = json.loads((model_dir / "config.json").read_text())["text_config"]
    assert (text["num_hidden_layers"], text["num_kv_shared_layers"]) == (35, 20)
    _, view = resolve(model_dir, load_format="dummy", skip_tokenizer_init=True)
    assert view.model_path == str(model_dir)


def test_plan_refuses_bad_arguments():
    assert len(plan(["E2B"], 30, 7000, 1)) == 2
    with pytest.raises(ValueError, match="unknown model"):
        plan(["E9B"], 30, 7000, 1)
    with pytest.raises(ValueError, match="prompt_len >= 2"):
        plan(["E2B"], 30, 1, 1)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU behaviour")
def test_bench_refuses_without_a_gpu_and_dry_runs():
    def run(*args):
        return subprocess.run(
            [sys.executable, "-m", "microbench.bench_yoco", *args],
            capture_output=True, text=True, cwd=REPO, env=dict(os.environ), timeout=300,
        )  # fmt: skip

    refused = run()
    assert refused.returncode == 2 and "--dry-run" in refused.stderr
    dry = run("--dry-run", "--models", "E2B", "--csv", os.devnull)
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert "no runs" in dry.stdout

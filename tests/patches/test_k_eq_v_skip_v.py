"""k_eq_v_skip_v on SGLang's real Gemma 4 model (CPU harness) vs stock and HF."""

from __future__ import annotations

import pytest
import torch

from gemma4_kernels.harness.runtime import SGLangCpuRuntime

FIXES = ("triton_swa_decode_window", "cpu_router_scale")


def qkv_params(run) -> dict[int, int]:
    return {
        m.layer_id: m.qkv_proj.weight.numel()
        for m in run.model.model.modules()
        if type(m).__name__ == "Gemma4Attention"
    }


def test_k_eq_v_layers_drop_the_v_shard_and_keep_parity(tiny_families):
    stock = tiny_families.run("moe", FIXES)
    patched = tiny_families.run("moe", ("k_eq_v_skip_v", *FIXES))
    assert patched.patch_states["k_eq_v_skip_v"] == "applied"
    config = tiny_families.get("moe")[1].config.text_config
    full_layers = [i for i, t in enumerate(config.layer_types) if t == "full_attention"]
    v_shard = 1 * 64 * config.hidden_size  # global KV heads x global head_dim x hidden
    before, after = qkv_params(stock), qkv_params(patched)
    for layer in before:
        saved = before[layer] - after[layer]
        assert saved == (v_shard if layer in full_layers else 0), layer
    assert patched.report.ok(), patched.report.step_max_abs
    for ours, theirs in zip(patched.generation.logits, stock.generation.logits, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-5)


def test_models_without_k_eq_v_are_untouched(tiny_families):
    short = dict(decode_steps=1, count_decode_step=None)  # construction is what matters
    stock = tiny_families.run("dense", FIXES, **short)
    patched = tiny_families.run("dense", ("k_eq_v_skip_v", *FIXES), **short)
    assert qkv_params(stock) == qkv_params(patched)


def test_refuses_a_checkpoint_whose_v_differs_from_k(tiny_families, install_only):
    path, _, weights = tiny_families.get("moe")
    k_name = "model.language_model.layers.1.self_attn.k_proj.weight"
    k = dict(weights)[k_name]
    bad = [*weights, (k_name.replace("k_proj", "v_proj"), k + 1.0)]
    install_only("k_eq_v_skip_v", *FIXES)
    with pytest.raises(ValueError, match="checkpoint V differs from K"):
        SGLangCpuRuntime.get().load(path, bad)
    same = [*weights, (k_name.replace("k_proj", "v_proj"), k.clone())]
    SGLangCpuRuntime.get().load(path, same)  # an explicit V equal to K is fine

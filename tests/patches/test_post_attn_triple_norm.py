"""post_attn_triple_norm on SGLang's real Gemma 4 MoE layers (CPU harness)."""

from __future__ import annotations

import torch

from sglang_patches import post_attn_triple_norm
from sglang_patches.post_attn_triple_norm import serving

FIXES = ("triton_swa_decode_window", "cpu_router_scale")


def per_layer(run, op):
    layers = len(run.model.decoder_layers())
    return [run.op_counts.layers[i].ours.get(op, 0) for i in range(layers)]


def test_one_triple_norm_per_moe_layer_and_parity(tiny_families):
    stock = tiny_families.run("moe", FIXES)
    patched = tiny_families.run("moe", ("post_attn_triple_norm", *FIXES))
    assert patched.patch_states["post_attn_triple_norm"] == "applied"
    assert per_layer(patched, "gemma4::triple_rmsnorm") == [1, 1, 1, 1]
    assert per_layer(patched, "gemma4::rmsnorm_pair") == [0, 0, 0, 0]
    assert per_layer(stock, "gemma4::triple_rmsnorm") == [0, 0, 0, 0]
    assert patched.report.ok(), patched.report.step_max_abs
    assert patched.generation.tokens == stock.generation.tokens


def test_ineligible_read_falls_back_to_the_pair(tiny_families, monkeypatch):
    """Without the fused read (e.g. a quantized FFN input), router norm + pre_ff_norm_2
    still run as one launch, and the result is the same."""
    monkeypatch.setattr(post_attn_triple_norm.PATCH, "fused_read", lambda *a, **k: None)
    run = tiny_families.run("moe", ("post_attn_triple_norm", *FIXES), fresh=True)
    assert per_layer(run, "gemma4::triple_rmsnorm") == [0, 0, 0, 0]
    assert per_layer(run, "gemma4::rmsnorm_pair") == [1, 1, 1, 1]
    assert run.report.ok(), run.report.step_max_abs


def test_dense_and_ple_layers_untouched(tiny_families):
    for family in ("dense", "e2b"):  # one counted decode step is enough to see no op
        run = tiny_families.run(
            family, ("post_attn_triple_norm", *FIXES), decode_steps=1, count_decode_step=1
        )
        assert run.op_counts.per_layer("ours") == [0] * len(run.model.decoder_layers())
        assert run.report.ok(), (family, run.report.step_max_abs)


def test_serving_answers_only_the_expected_input():
    module = torch.nn.Linear(2, 2)
    x, other = torch.ones(1, 2), torch.zeros(1, 2)
    sentinel = torch.full((1, 2), 7.0)
    with serving(module, x, sentinel):
        assert module(x) is sentinel
        assert torch.equal(module(other), module.bias.unsqueeze(0).detach())
    assert "forward" not in module.__dict__
    assert module(x) is not sentinel

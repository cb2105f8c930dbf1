"""moe_routing on SGLang's real Gemma 4 MoE model (CPU harness) and its routing contract."""

from __future__ import annotations

import torch

from gemma4_kernels.ops.routing import moe_routing
from sglang_patches.moe_routing import make_routing_function

FIXES = ("triton_swa_decode_window", "cpu_router_scale")


def test_routing_function_follows_sglang_contract():
    logits = torch.randn(5, 8, generator=torch.Generator().manual_seed(0))
    scale = torch.rand(8) + 0.5
    route = make_routing_function(scale)
    weights, ids = route(
        hidden_states=torch.zeros(5, 4), gating_output=logits, topk=2, renormalize=True
    )
    expected = moe_routing(logits, scale, 2)
    assert torch.equal(weights, expected[0]) and torch.equal(ids, expected[1])
    assert weights.dtype == torch.float32 and ids.dtype == torch.int32


def test_patched_model_routes_through_our_op_in_every_moe_layer(tiny_families):
    stock = tiny_families.run("moe", FIXES)
    patched = tiny_families.run("moe", ("moe_routing", *FIXES))
    assert patched.patch_states["moe_routing"] == "applied"
    layers = len(patched.model.decoder_layers())
    assert stock.op_counts.per_layer("ours") == [0] * layers
    assert [patched.op_counts.layers[i].ours["gemma4::moe_routing"] for i in range(layers)] == [
        1
    ] * layers
    assert patched.report.ok(), patched.report.step_max_abs
    assert patched.generation.tokens == stock.generation.tokens


def test_models_built_after_revert_use_sglang_routing(tiny_families):
    patched = tiny_families.run("moe", ("moe_routing", *FIXES))
    moe = next(m for m in patched.model.model.modules() if type(m).__name__ == "Gemma4MoE")
    assert moe.topk.topk_config.custom_routing_function.__name__ == "gemma4_routing"
    stock = tiny_families.run("moe", FIXES, fresh=True)  # built with nothing installed
    moe = next(m for m in stock.model.model.modules() if type(m).__name__ == "Gemma4MoE")
    assert "Gemma4MoE.__init__" in moe.topk.topk_config.custom_routing_function.__qualname__

"""layer_boundary_fusion on SGLang's real Gemma 4 layers (CPU harness) and its serving rule."""

from __future__ import annotations

import pytest
import torch

from sglang_patches import gemma4_layers
from sglang_patches.layer_boundary_fusion import PATCH, _Scope

FIXES = ("triton_swa_decode_window", "cpu_router_scale")
FUSED = "gemma4::layer_tail_next_norm"
DECODE_STEPS = 3


def per_layer(run, op):
    return [run.op_counts.layers[i].ours.get(op, 0) for i in range(len(run.model.decoder_layers()))]


@pytest.mark.parametrize("family, extra", [("dense", ()), ("e2b", ("ple_tail",))])
def test_every_layer_tail_feeds_the_next_norm_with_parity(tiny_families, family, extra):
    stock = tiny_families.run(family, (*extra, *FIXES), decode_steps=DECODE_STEPS)
    patched = tiny_families.run(
        family, ("layer_boundary_fusion", *extra, *FIXES), decode_steps=DECODE_STEPS, fresh=True
    )
    layers = len(patched.model.decoder_layers())
    assert patched.patch_states["layer_boundary_fusion"] == "applied"
    assert per_layer(patched, FUSED) == [1] * layers
    assert per_layer(stock, FUSED) == [0] * layers
    # Proof the second launch is gone: every layer's output reached its consumer (the next
    # input norm, or the final norm after the last layer) as the fused result, in the
    # prefill and each decode step, and no consumer had to compute it again.
    assert PATCH.served == layers * (1 + DECODE_STEPS)
    assert PATCH.missed == 0 and PATCH.runtime.counts == {}
    assert patched.report.ok(), patched.report.step_max_abs
    assert patched.generation.tokens == stock.generation.tokens
    for step, (a, b) in enumerate(
        zip(patched.generation.logits, stock.generation.logits, strict=True)
    ):
        # fp32 on both sides; only the reduction order of the fused norms differs.
        torch.testing.assert_close(a, b, rtol=0, atol=1e-4, msg=f"step {step}")


def test_moe_layers_and_ple_layers_without_ple_tail_stay_stock(tiny_families):
    moe = tiny_families.run(
        "moe", ("layer_boundary_fusion", *FIXES), decode_steps=1, count_decode_step=1, fresh=True
    )
    assert per_layer(moe, FUSED) == [0] * len(moe.model.decoder_layers())
    assert moe.report.ok(), moe.report.step_max_abs
    e2b = tiny_families.run(
        "e2b", ("layer_boundary_fusion", *FIXES), decode_steps=1, count_decode_step=1, fresh=True
    )
    assert per_layer(e2b, FUSED) == [0] * len(e2b.model.decoder_layers())
    assert PATCH.served == 0 and PATCH.missed == 0
    assert e2b.report.ok(), e2b.report.step_max_abs


# ----------------------------------------------------------------------------------------
# The serving rule on SGLang's real RMSNorm module
# ----------------------------------------------------------------------------------------


class _Layer(torch.nn.Module):
    def __init__(self, hidden):
        super().__init__()
        self.register_buffer("layer_scalar", torch.tensor([0.75]))


@pytest.fixture
def scope(install_only):
    from sglang.srt.layers.layernorm import RMSNorm

    assert install_only("layer_boundary_fusion")["layer_boundary_fusion"]["state"] == "applied"
    hidden = 64
    norm = RMSNorm(hidden, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 1.5, hidden))
    layer = _Layer(hidden)
    s = _Scope({id(layer): norm})
    PATCH._local.scopes = [s]
    for module in (norm,):
        module.forward = PATCH._serving_forward(module, s)
    yield layer, norm, s
    del norm.forward
    PATCH._local.scopes = []


def tail_inputs(hidden=64):
    g = torch.Generator().manual_seed(0)
    return torch.randn(3, hidden, generator=g), torch.ones(hidden), torch.randn(3, hidden)


def test_consumer_gets_the_fused_result_only_for_the_tensor_written(scope):
    layer, norm, s = scope
    x, w, residual = tail_inputs()
    new = gemma4_layers.layer_tail(layer, x, w, residual, 1e-6)
    expected_new = ((x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)) * w + residual) * 0.75
    torch.testing.assert_close(new, expected_new, rtol=1e-5, atol=1e-5)
    written, fused = s.ready[id(norm)]
    assert written is new
    served = norm(new)
    assert served is fused  # the module did not run again
    unfused = type(norm).forward(norm, new)
    torch.testing.assert_close(served, unfused, rtol=1e-5, atol=1e-5)
    assert PATCH.served == 1 and PATCH.missed == 0


def test_a_copy_of_the_stream_is_normed_by_the_module_itself(scope):
    layer, norm, s = scope
    x, w, residual = tail_inputs()
    new = gemma4_layers.layer_tail(layer, x, w, residual, 1e-6)
    copy = new.clone() * 2  # e.g. rows a boundary gathered: a different tensor
    out = norm(copy)
    torch.testing.assert_close(out, type(norm).forward(norm, copy), rtol=0, atol=0)
    assert PATCH.served == 0 and PATCH.missed == 1
    assert not s.ready  # a stale result is never served later
    assert norm(new) is not None and PATCH.served == 0


def test_unequal_eps_or_no_scope_takes_the_plain_tail(scope):
    from gemma4_kernels.ops.norms import rmsnorm_residual_scalar

    layer, norm, s = scope
    x, w, residual = tail_inputs()
    out = gemma4_layers.layer_tail(layer, x, w, residual, 1e-5)  # norm's eps is 1e-6
    assert not s.ready and PATCH.runtime.counts
    torch.testing.assert_close(
        out, rmsnorm_residual_scalar(x, w, residual, layer.layer_scalar, 1e-5), rtol=0, atol=0
    )
    PATCH._local.scopes = []
    out = gemma4_layers.layer_tail(_Layer(64), x, w, residual, 1e-6)
    assert not s.ready


def test_revert_restores_the_seam():
    import gemma4_kernels

    original = gemma4_layers.layer_tail
    PATCH.apply()
    assert gemma4_layers.layer_tail is not original
    gemma4_kernels.revert()
    PATCH.revert()
    assert gemma4_layers.layer_tail is original

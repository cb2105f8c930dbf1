"""gemma4::triple_rmsnorm, rmsnorm_add, rmsnorm_residual_scalar: kernel vs reference vs HF."""

from __future__ import annotations

import pytest
import torch

from gemma4_kernels.ops.norms import (
    rmsnorm_add,
    rmsnorm_add_ref,
    rmsnorm_pair,
    rmsnorm_pair_ref,
    rmsnorm_residual_scalar,
    rmsnorm_residual_scalar_ref,
    triple_rmsnorm,
    triple_rmsnorm_ref,
)
from tests.helpers import assert_close, tolerance

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# Real Gemma 4 hidden sizes (E2B, E4B, 26B-A4B, 31B), odd ones, the largest supported.
HIDDEN = [1536, 2560, 2816, 5376, 1, 7, 300, 8192]
EPS = 1e-6


def rows(tokens, hidden, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(tokens, hidden, generator=g) * 2).to(dtype)


def vector(hidden, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (1 + 0.3 * torch.randn(hidden, generator=g)).to(dtype)


def triple_args(tokens, hidden, dtype):
    return (
        rows(tokens, hidden, dtype, 0),
        rows(tokens, hidden, dtype, 1),
        vector(hidden, 2),
        vector(hidden, 3),
        vector(hidden, 4),
        vector(hidden, 5) * hidden**-0.5,
        EPS,
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", HIDDEN)
@pytest.mark.parametrize("tokens", [1, 3])
def test_triple_kernel_matches_reference(tokens, hidden, dtype):
    args = triple_args(tokens, hidden, dtype)
    outs, refs = triple_rmsnorm(*args), triple_rmsnorm_ref(*args)
    for name, out, ref in zip(
        ("residual", "pre_ff", "router_in", "pre_ff_2"), outs, refs, strict=True
    ):
        assert out.dtype == dtype and out.shape == (tokens, hidden)
        assert_close(name, out, ref, **tolerance(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", HIDDEN)
def test_rmsnorm_add_and_scalar_match_reference(hidden, dtype):
    x, r = rows(3, hidden, dtype, 0), rows(3, hidden, dtype, 1)
    w, scalar = vector(hidden, 2, dtype), torch.tensor([0.625], dtype=dtype)
    assert_close(
        "rmsnorm_add", rmsnorm_add(x, w, r), rmsnorm_add_ref(x, w, r, EPS), **tolerance(dtype)
    )
    assert_close(
        "rmsnorm_residual_scalar",
        rmsnorm_residual_scalar(x, w, r, scalar),
        rmsnorm_residual_scalar_ref(x, w, r, scalar, EPS),
        **tolerance(dtype),
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", HIDDEN)
def test_rmsnorm_pair_matches_reference(hidden, dtype):
    x = rows(3, hidden, dtype, 0)
    w_a, w_b = vector(hidden, 1), vector(hidden, 2, dtype)
    for name, out, ref in zip(
        "ab", rmsnorm_pair(x, w_a, w_b), rmsnorm_pair_ref(x, w_a, w_b, EPS), strict=True
    ):
        assert_close(f"pair {name}", out, ref, **tolerance(dtype))


def test_empty_batch():
    x = torch.empty(0, 2816)
    w = vector(2816, 0)
    assert rmsnorm_add(x, w, x).shape == (0, 2816)
    assert rmsnorm_residual_scalar(x, w, x, torch.ones(1)).shape == (0, 2816)
    assert [o.shape for o in triple_rmsnorm(x, x, w, w, w, w)] == [(0, 2816)] * 4
    assert [o.shape for o in rmsnorm_pair(x, w, w)] == [(0, 2816)] * 2


def test_strided_rows_and_columns():
    hidden = 2560
    wide = rows(4, hidden + 64, torch.float32, 0)
    x = wide[:, 32 : 32 + hidden]  # row stride > hidden
    r = rows(hidden, 4, torch.float32, 1).t()  # column-major
    assert not x.is_contiguous() and not r.is_contiguous()
    w = vector(hidden, 2)
    assert_close(
        "strided",
        rmsnorm_add(x, w, r),
        rmsnorm_add_ref(x.contiguous(), w, r.contiguous(), EPS),
        rtol=1e-5,
        atol=1e-5,
    )
    outs = triple_rmsnorm(x, r, w, w, w, w)
    refs = triple_rmsnorm_ref(x.contiguous(), r.contiguous(), w, w, w, w, EPS)
    for out, ref in zip(outs, refs, strict=True):
        assert out.is_contiguous()
        assert_close("strided triple", out, ref, rtol=1e-5, atol=1e-5)


def test_inputs_untouched_and_outputs_fresh():
    args = triple_args(3, 2816, torch.bfloat16)
    before = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
    outs = triple_rmsnorm(*args)
    for a, b in zip(args, before, strict=True):
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, b)
    pointers = {a.untyped_storage().data_ptr() for a in args if isinstance(a, torch.Tensor)}
    assert not pointers & {o.untyped_storage().data_ptr() for o in outs}
    x, w, r = args[0], args[2], args[1]
    out = rmsnorm_residual_scalar(x, w, r, torch.ones(1, dtype=torch.bfloat16))
    assert out.untyped_storage().data_ptr() not in pointers
    assert torch.equal(x, before[0]) and torch.equal(r, before[1])


def test_zero_rows_stay_finite():
    x = torch.zeros(2, 64)
    out = rmsnorm_add(x, vector(64, 0), torch.ones(2, 64))
    assert torch.equal(out, torch.ones(2, 64))


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda x, w: rmsnorm_add(x[0], w, x[0]), ValueError, "x must be 2-D"),
        (lambda x, w: rmsnorm_add(x, w, x[:, :-1]), ValueError, "r has shape"),
        (lambda x, w: rmsnorm_add(x, w, x.half()), TypeError, "r has dtype"),
        (lambda x, w: rmsnorm_add(x.int(), w, x.int()), TypeError, "x must be float32"),
        (lambda x, w: rmsnorm_add(x, w[:-1], x), ValueError, r"w must have shape \(64,\)"),
        (lambda x, w: rmsnorm_add(x, w.to("meta"), x), ValueError, "w is on meta"),
        (lambda x, w: rmsnorm_add(x, w, x, eps=-1.0), ValueError, "eps must be >= 0"),
        (lambda x, w: rmsnorm_add(x, w, x, eps="1e-6"), TypeError, "eps must be a float"),
        (
            lambda x, w: rmsnorm_residual_scalar(x, w, x, torch.ones(2)),
            ValueError,
            "scalar must have shape",
        ),
        (lambda x, w: rmsnorm_add([[1.0]], w, x), TypeError, "x must be a torch.Tensor"),
        (
            lambda x, w: triple_rmsnorm(x, x, w, w, w, w.int()),
            TypeError,
            "router_scale must be floating",
        ),
        (lambda x, w: triple_rmsnorm(x, x.t(), w, w, w, w), ValueError, "residual has shape"),
        (lambda x, w: rmsnorm_pair(x, w, w[:3]), ValueError, r"w_b must have shape \(64,\)"),
        (
            lambda x, w: rmsnorm_add(
                torch.zeros(1, 16385), torch.ones(16385), torch.zeros(1, 16385)
            ),
            ValueError,
            "hidden size must be in",
        ),
    ],
)
def test_bad_input_is_rejected_before_launch(call, error, match):
    with pytest.raises(error, match=match):
        call(torch.randn(4, 64), vector(64, 0))


def test_opcheck():
    x, r, w = rows(3, 64, torch.float32, 0), rows(3, 64, torch.float32, 1), vector(64, 2)
    torch.library.opcheck(torch.ops.gemma4.rmsnorm_add.default, (x, w, r, EPS))
    torch.library.opcheck(
        torch.ops.gemma4.rmsnorm_residual_scalar.default, (x, w, r, torch.ones(1), EPS)
    )
    torch.library.opcheck(torch.ops.gemma4.triple_rmsnorm.default, (x, r, w, w, w, w, EPS))
    torch.library.opcheck(torch.ops.gemma4.rmsnorm_pair.default, (x, w, w, EPS))


def test_torch_compile_fullgraph():
    def block(x, r, w):
        h, pre, router_in, pre2 = triple_rmsnorm(x, r, w, w, w, w)
        return rmsnorm_residual_scalar(pre + pre2, w, h, torch.ones(1), EPS) + router_in

    x, r, w = rows(3, 64, torch.float32, 0), rows(3, 64, torch.float32, 1), vector(64, 2)
    compiled = torch.compile(block, fullgraph=True, backend="eager")
    assert torch.equal(compiled(x, r, w), block(x, r, w))


# ----------------------------------------------------------------------------------
# References vs the external oracle: HF transformers' Gemma4TextDecoderLayer modules
# ----------------------------------------------------------------------------------


def hf_layer(hidden: int, moe: bool, ple: bool, dtype=torch.float32):
    from transformers import Gemma4TextConfig
    from transformers.models.gemma4.modeling_gemma4 import Gemma4TextDecoderLayer

    config = Gemma4TextConfig(
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        num_hidden_layers=1,
        layer_types=["full_attention"],
        enable_moe_block=moe,
        num_experts=4 if moe else None,
        top_k_experts=2 if moe else None,
        moe_intermediate_size=16 if moe else None,
        hidden_size_per_layer_input=16 if ple else 0,
    )
    torch.manual_seed(0)
    layer = Gemma4TextDecoderLayer(config, 0).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, t in list(layer.named_parameters()) + list(layer.named_buffers()):
            if "norm" in name or "scale" in name:
                t.copy_(1 + 0.3 * torch.randn(t.shape, generator=g))
            elif t.dim() == 2:
                t.normal_(0, 0.1, generator=g)
    return layer.to(dtype)


@pytest.mark.parametrize(
    "hidden, dtype", [(64, torch.float32), (2816, torch.float32), (2816, torch.bfloat16)]
)
def test_triple_reference_matches_hf_decoder_layer(hidden, dtype):
    layer = hf_layer(hidden, moe=True, ple=False, dtype=dtype)
    attn_out, residual = rows(4, hidden, dtype, 7), rows(4, hidden, dtype, 8)
    with torch.no_grad():
        h = residual + layer.post_attention_layernorm(attn_out)
        expected = (
            h,
            layer.pre_feedforward_layernorm(h),
            (layer.router.norm(h) * layer.router.scale * layer.router.scalar_root_size).to(dtype),
            layer.pre_feedforward_layernorm_2(h),
        )
    router_scale = (layer.router.scale.float() * layer.router.scalar_root_size).detach()
    args = (
        attn_out,
        residual,
        layer.post_attention_layernorm.weight.detach(),
        layer.pre_feedforward_layernorm.weight.detach(),
        layer.pre_feedforward_layernorm_2.weight.detach(),
        router_scale,
        layer.config.rms_norm_eps,
    )
    # fp32: operation order only. bf16: HF rounds h to bf16 before the second norm and
    # rounds the router input twice; we keep h in fp32 and round each output once.
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=3e-2, atol=3e-2)
    pair = rmsnorm_pair(
        expected[0], router_scale, layer.pre_feedforward_layernorm_2.weight.detach()
    )
    assert_close("pair router_in vs HF", pair[0], expected[2], **tol)
    assert_close("pair pre_ff_2 vs HF", pair[1], expected[3], **tol)
    for name, ref, kernel, hf in zip(
        ("residual", "pre_ff", "router_in", "pre_ff_2"),
        triple_rmsnorm_ref(*args),
        triple_rmsnorm(*args),
        expected,
        strict=True,
    ):
        assert_close(f"ref vs HF {name}", ref, hf, **tol)
        assert_close(f"kernel vs HF {name}", kernel, hf, **tol)


def test_ple_tail_references_match_hf_decoder_layer():
    """HF's PLE tail = rmsnorm_add -> gate GEMM -> gelu_tanh_mul -> proj GEMM ->
    rmsnorm_residual_scalar, all in fp32."""
    from gemma4_kernels.ops.gelu_tanh_mul import gelu_tanh_mul, gelu_tanh_mul_ref

    hidden = 64
    layer = hf_layer(hidden, moe=False, ple=True)
    mlp_out, residual = rows(4, hidden, torch.float32, 7), rows(4, hidden, torch.float32, 8)
    per_layer_input = rows(4, 16, torch.float32, 9)
    scalar = torch.tensor([0.8])
    with torch.no_grad():
        h = residual + layer.post_feedforward_layernorm(mlp_out)
        gated = layer.act_fn(layer.per_layer_input_gate(h)) * per_layer_input
        contribution = layer.per_layer_projection(gated)
        expected = (h + layer.post_per_layer_input_norm(contribution)) * scalar

        eps = layer.config.rms_norm_eps
        for add, gelu, tail in (
            (rmsnorm_add_ref, gelu_tanh_mul_ref, rmsnorm_residual_scalar_ref),
            (lambda *a: rmsnorm_add(*a), gelu_tanh_mul, lambda *a: rmsnorm_residual_scalar(*a)),
        ):
            ours_h = add(mlp_out, layer.post_feedforward_layernorm.weight, residual, eps)
            ours_gated = gelu(layer.per_layer_input_gate(ours_h), per_layer_input)
            ours = tail(
                layer.per_layer_projection(ours_gated),
                layer.post_per_layer_input_norm.weight,
                ours_h,
                scalar,
                eps,
            )
            assert_close("PLE tail vs HF", ours, expected, rtol=1e-5, atol=1e-5)

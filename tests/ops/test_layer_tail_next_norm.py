"""gemma4::layer_tail_next_norm: kernel vs reference vs HF's consecutive decoder layers."""

from __future__ import annotations

import pytest
import torch

from gemma4_kernels.ops.layer_tail_next_norm import (
    layer_tail_next_norm,
    layer_tail_next_norm_ref,
)
from tests.helpers import assert_close, tolerance
from tests.ops.test_norms import DTYPES, EPS, HIDDEN, hf_layer, rows, vector


def args_for(tokens, hidden, dtype, scalar=0.625):
    return (
        rows(tokens, hidden, dtype, 0),
        vector(hidden, 1),
        rows(tokens, hidden, dtype, 2),
        torch.tensor([scalar], dtype=dtype),
        vector(hidden, 3),
        EPS,
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", HIDDEN)
@pytest.mark.parametrize("tokens", [1, 3])
def test_kernel_matches_reference(tokens, hidden, dtype):
    args = args_for(tokens, hidden, dtype)
    (new, normed), (new_ref, normed_ref) = (
        layer_tail_next_norm(*args),
        layer_tail_next_norm_ref(*args),
    )
    for name, out, ref in (("new_residual", new, new_ref), ("next_normed", normed, normed_ref)):
        assert out.dtype == dtype and out.shape == (tokens, hidden)
        assert_close(name, out, ref, **tolerance(dtype))


def test_empty_batch_and_strides():
    x = torch.empty(0, 2816)
    w = vector(2816, 0)
    assert [o.shape for o in layer_tail_next_norm(x, w, x, torch.ones(1), w)] == [(0, 2816)] * 2
    hidden = 2560
    wide = rows(4, hidden + 64, torch.float32, 0)
    x = wide[:, 32 : 32 + hidden]  # row stride > hidden
    r = rows(hidden, 4, torch.float32, 1).t()  # column-major
    assert not x.is_contiguous() and not r.is_contiguous()
    args = (x, vector(hidden, 2), r, torch.tensor([0.5]), vector(hidden, 3), EPS)
    outs = layer_tail_next_norm(*args)
    refs = layer_tail_next_norm_ref(x.contiguous(), args[1], r.contiguous(), *args[3:])
    for out, ref in zip(outs, refs, strict=True):
        assert out.is_contiguous()
        assert_close("strided", out, ref, rtol=1e-5, atol=1e-5)


def test_inputs_untouched_and_outputs_fresh():
    args = args_for(3, 1536, torch.bfloat16)
    before = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
    outs = layer_tail_next_norm(*args)
    for a, b in zip(args, before, strict=True):
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, b)
    inputs = {a.untyped_storage().data_ptr() for a in args if isinstance(a, torch.Tensor)}
    outputs = {o.untyped_storage().data_ptr() for o in outs}
    assert not inputs & outputs and len(outputs) == 2


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda x, w, s: layer_tail_next_norm(x[0], w, x, s, w), ValueError, "x must be 2-D"),
        (lambda x, w, s: layer_tail_next_norm(x, w, x[:2], s, w), ValueError, "residual has"),
        (lambda x, w, s: layer_tail_next_norm(x, w, x.half(), s, w), TypeError, "residual has"),
        (lambda x, w, s: layer_tail_next_norm(x, w[:3], x, s, w), ValueError, "w_post must"),
        (lambda x, w, s: layer_tail_next_norm(x, w, x, s, w[:3]), ValueError, "w_next must"),
        (
            lambda x, w, s: layer_tail_next_norm(x, w, x, torch.ones(2), w),
            ValueError,
            "layer_scalar must have shape",
        ),
        (lambda x, w, s: layer_tail_next_norm(x, w, x, 0.5, w), TypeError, "layer_scalar must"),
        (lambda x, w, s: layer_tail_next_norm(x, w, x, s, w, eps=-1.0), ValueError, "eps must"),
        (lambda x, w, s: layer_tail_next_norm(x.int(), w, x, s, w), TypeError, "x must be"),
    ],
)
def test_bad_input_is_rejected_before_launch(call, error, match):
    with pytest.raises(error, match=match):
        call(torch.randn(4, 64), vector(64, 0), torch.ones(1))


def test_opcheck_and_compile():
    args = args_for(3, 64, torch.float32)
    torch.library.opcheck(torch.ops.gemma4.layer_tail_next_norm.default, args)

    def two_layers(x, w, r, s, w2):
        new, normed = layer_tail_next_norm(x, w, r, s, w2, EPS)
        return layer_tail_next_norm(normed, w, new, s, w2, EPS)

    compiled = torch.compile(two_layers, fullgraph=True, backend="eager")
    for out, ref in zip(compiled(*args[:5]), two_layers(*args[:5]), strict=True):
        assert torch.equal(out, ref)


@pytest.mark.parametrize("hidden, dtype", [(64, torch.float32), (2816, torch.bfloat16)])
def test_matches_hf_dense_tail_and_next_input_norm(hidden, dtype):
    """HF: layer i ends ``(residual + post_ff_norm(mlp_out)) * layer_scalar``; layer i+1
    starts with ``input_layernorm`` of that."""
    layer, following = hf_layer(hidden, False, False, dtype), hf_layer(hidden, False, False, dtype)
    with torch.no_grad():
        layer.layer_scalar.fill_(0.7)
        following.input_layernorm.weight.mul_(1.3)
    mlp_out, residual = rows(5, hidden, dtype, 7), rows(5, hidden, dtype, 8)
    with torch.no_grad():
        expected_new = (residual + layer.post_feedforward_layernorm(mlp_out)) * layer.layer_scalar
        expected_normed = following.input_layernorm(expected_new)
    args = (
        mlp_out,
        layer.post_feedforward_layernorm.weight.detach(),
        residual,
        layer.layer_scalar.detach(),
        following.input_layernorm.weight.detach(),
        layer.config.rms_norm_eps,
    )
    # fp32: operation order only. bf16: HF rounds after the norm, the add and the scale
    # (three roundings); we round the stream once, as SGLang's fused CUDA tail does.
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=3e-2, atol=3e-2)
    for impl in (layer_tail_next_norm_ref, layer_tail_next_norm):
        new, normed = impl(*args)
        assert_close(f"{impl.__name__} new_residual vs HF", new, expected_new, **tol)
        assert_close(f"{impl.__name__} next_normed vs HF", normed, expected_normed, **tol)

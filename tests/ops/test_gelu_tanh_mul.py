"""gemma4::gelu_tanh_mul: kernel vs reference vs HF's gelu_pytorch_tanh."""

from __future__ import annotations

import pytest
import torch

from gemma4_kernels.ops.gelu_tanh_mul import gelu_tanh_mul, gelu_tanh_mul_ref
from tests.helpers import assert_close, tolerance

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def pair(tokens, width, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    gate = torch.randn(tokens, width, generator=g) * 4  # reaches both tails
    up = torch.randn(tokens, width, generator=g)
    return gate.to(dtype), up.to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("width", [256, 1, 7, 1536, 2816, 5376])
@pytest.mark.parametrize("tokens", [1, 3])
def test_kernel_matches_reference(tokens, width, dtype):
    gate, up = pair(tokens, width, dtype)
    out = gelu_tanh_mul(gate, up)
    assert out.dtype == dtype and out.shape == gate.shape
    assert_close("gelu_tanh_mul", out, gelu_tanh_mul_ref(gate, up), **tolerance(dtype))


def test_reference_matches_hf_activation():
    from transformers.activations import ACT2FN

    gate, up = pair(4, 512, torch.float32)
    hf = ACT2FN["gelu_pytorch_tanh"](gate) * up
    assert_close("ref vs HF", gelu_tanh_mul_ref(gate, up), hf, rtol=1e-6, atol=1e-6)
    assert_close("kernel vs HF", gelu_tanh_mul(gate, up), hf, rtol=1e-5, atol=1e-5)
    erf = torch.nn.functional.gelu(gate) * up
    assert (erf - hf).abs().max() > 1e-4, "tanh and erf GELU must be distinguishable here"


def test_strided_and_empty():
    gate, up = pair(6, 256, torch.float32)
    out = gelu_tanh_mul(gate[::2], up.t().contiguous().t()[::2])
    assert_close("strided", out, gelu_tanh_mul_ref(gate[::2], up[::2]), rtol=1e-5, atol=1e-5)
    assert gelu_tanh_mul(torch.empty(0, 16), torch.empty(0, 16)).shape == (0, 16)


def test_inputs_untouched():
    gate, up = pair(2, 64, torch.bfloat16)
    before = gate.clone(), up.clone()
    out = gelu_tanh_mul(gate, up)
    assert torch.equal(gate, before[0]) and torch.equal(up, before[1])
    assert out.data_ptr() not in (gate.data_ptr(), up.data_ptr())


@pytest.mark.parametrize(
    "gate, up, error, match",
    [
        (torch.zeros(2, 4), torch.zeros(2, 5), ValueError, "up has shape"),
        (torch.zeros(2, 4), torch.zeros(2, 4, dtype=torch.float16), TypeError, "up has dtype"),
        (torch.zeros(4), torch.zeros(4), ValueError, "gate must be 2-D"),
        (
            torch.zeros(2, 4, dtype=torch.int32),
            torch.zeros(2, 4, dtype=torch.int32),
            TypeError,
            "gate must be float32",
        ),
        (torch.zeros(2, 4), torch.zeros(2, 4, device="meta"), ValueError, "up is on meta"),
    ],
)
def test_bad_input(gate, up, error, match):
    with pytest.raises(error, match=match):
        gelu_tanh_mul(gate, up)


def test_opcheck_and_compile():
    gate, up = pair(3, 64, torch.float32)
    torch.library.opcheck(torch.ops.gemma4.gelu_tanh_mul.default, (gate, up))
    compiled = torch.compile(lambda g, u: gelu_tanh_mul(g, u) * 2, fullgraph=True, backend="eager")
    assert torch.equal(compiled(gate, up), gelu_tanh_mul(gate, up) * 2)

"""``gelu_tanh(gate) * up`` for separate gate and up tensors (the PLE gate of E2B/E4B).

HF's ``gelu_pytorch_tanh``: ``0.5 g (1 + tanh(sqrt(2/pi) (g + 0.044715 g^3)))``, computed
here in fp32 as the identical ``g * sigmoid(2 sqrt(2/pi) (g + 0.044715 g^3))`` and
rounded once to the input dtype. ``gate`` and ``up`` are ``[T, N]`` with any strides;
the output is a fresh contiguous tensor. Without a GPU and without
``TRITON_INTERPRET=1`` the eager reference runs.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from gemma4_kernels.ops._common import check_row_tensor, interpreter_active

_BLOCK = 1024
_TWO_SQRT_2_OVER_PI = 2.0 * math.sqrt(2.0 / math.pi)


@triton.jit
def _gelu_tanh_mul_kernel(
    gate_ptr,
    up_ptr,
    out_ptr,
    N,
    stride_gt,
    stride_gn,
    stride_ut,
    stride_un,
    COEF: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    g = tl.load(gate_ptr + row * stride_gt + offs * stride_gn, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(up_ptr + row * stride_ut + offs * stride_un, mask=mask, other=0.0).to(tl.float32)
    y = g * tl.sigmoid(COEF * (g + 0.044715 * g * g * g)) * u
    tl.store(out_ptr + row * N + offs, y.to(out_ptr.dtype.element_ty), mask=mask)


def _check(gate, up) -> None:
    check_row_tensor("gate", gate)
    check_row_tensor("up", up, like=gate)


def _launch(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    _check(gate, up)
    tokens, width = gate.shape
    out = torch.empty((tokens, width), dtype=gate.dtype, device=gate.device)
    if tokens == 0:
        return out
    block = min(_BLOCK, triton.next_power_of_2(width))
    grid = (tokens, triton.cdiv(width, block))
    _gelu_tanh_mul_kernel[grid](
        gate,
        up,
        out,
        width,
        gate.stride(0),
        gate.stride(1),
        up.stride(0),
        up.stride(1),
        COEF=_TWO_SQRT_2_OVER_PI,
        BLOCK=block,
        num_warps=4,
    )
    return out


def gelu_tanh_mul_ref(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """Eager fp32 reference: HF's tanh-approximated GELU of ``gate`` times ``up``."""
    _check(gate, up)
    g = gate.float()
    return (torch.nn.functional.gelu(g, approximate="tanh") * up.float()).to(gate.dtype)


@torch.library.custom_op("gemma4::gelu_tanh_mul", mutates_args=())
def _gelu_tanh_mul_op(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    if gate.is_cuda or interpreter_active():
        return _launch(gate, up)
    return gelu_tanh_mul_ref(gate, up)


@_gelu_tanh_mul_op.register_fake
def _(gate, up):
    _check(gate, up)
    return torch.empty_like(gate, memory_format=torch.contiguous_format)


def gelu_tanh_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """``gelu_tanh(gate) * up``; ``gate`` and ``up`` are ``[T, N]`` of one dtype."""
    _check(gate, up)
    return torch.ops.gemma4.gelu_tanh_mul(gate, up)

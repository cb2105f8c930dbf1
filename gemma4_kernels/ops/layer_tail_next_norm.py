"""Across the layer boundary: a Gemma 4 layer's last step and the next layer's input norm.

Every Gemma 4 decoder layer ends with ``new = (rmsnorm(x, w_post) + residual) * layer_scalar``
(dense layers: ``x`` is the MLP output and ``w_post`` the post-FFN norm; E2B/E4B layers:
``x`` is the per-layer-embedding projection and ``w_post`` the post-PLE norm), and the
next layer starts with ``input_layernorm(new)`` — or, after the last layer, the model's
final norm. SGLang 0.5.23 launches these as two kernels that both read the row from
HBM; TensorRT-LLM fuses the same chain into one (NVIDIA/TensorRT-LLM#13013).

``layer_tail_next_norm(x, w_post, residual, layer_scalar, w_next, eps)``
-> ``(new_residual, next_normed)``, both ``[T, H]`` in the dtype of ``x``:

* ``new_residual = ((rmsnorm(x, w_post) + residual) * layer_scalar)`` rounded once to the
  dtype, exactly what SGLang's ``gemma_rmsnorm_residual_scalar`` stores;
* ``next_normed = rmsnorm(new_residual, w_next)`` computed from the **rounded**
  ``new_residual``, as the unfused next-layer norm reads it from memory. So the fused
  op agrees with the two-kernel sequence up to fp32 reduction order, in every dtype,
  rather than being "more exact" than the stream the rest of the model sees.

Two row reductions, one read of ``x``/``residual``, two writes; fp32 accumulation; fresh
outputs (never aliasing an input); any row/column strides; T = 0; H <= 16384. Without a
GPU and without ``TRITON_INTERPRET=1`` the eager reference runs.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from gemma4_kernels.ops._common import check_row_tensor, check_vector, row_block
from gemma4_kernels.ops.norms import (
    _check_eps,
    _inv_rms,
    _load_row,
    _load_vector,
    _use_kernel,
    rmsnorm_ref,
)


@triton.jit
def _layer_tail_next_norm_kernel(
    x_ptr,
    w_post_ptr,
    r_ptr,
    scalar_ptr,
    w_next_ptr,
    res_out_ptr,
    normed_out_ptr,
    H,
    stride_xt,
    stride_xh,
    stride_rt,
    stride_rh,
    eps,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    mask = offs < H
    x = _load_row(x_ptr, row, stride_xt, stride_xh, offs, mask)
    r = _load_row(r_ptr, row, stride_rt, stride_rh, offs, mask)
    w_post = _load_vector(w_post_ptr, offs, mask)
    scalar = tl.load(scalar_ptr).to(tl.float32)

    dtype = res_out_ptr.dtype.element_ty
    # Masked lanes: x = r = w = 0, so new is 0 there and the second reduction is exact.
    new = ((x * _inv_rms(x, H, eps) * w_post + r) * scalar).to(dtype)
    tl.store(res_out_ptr + row * H + offs, new, mask=mask)

    # The next layer's norm reads the stored (rounded) stream, so round before reducing.
    new = new.to(tl.float32)
    w_next = _load_vector(w_next_ptr, offs, mask)
    normed = new * _inv_rms(new, H, eps) * w_next
    tl.store(normed_out_ptr + row * H + offs, normed.to(dtype), mask=mask)


def _check(x, w_post, residual, layer_scalar, w_next, eps) -> None:
    check_row_tensor("x", x)
    hidden = x.shape[1]
    check_row_tensor("residual", residual, like=x)
    check_vector("w_post", w_post, hidden, x.device)
    check_vector("layer_scalar", layer_scalar, 1, x.device)
    check_vector("w_next", w_next, hidden, x.device)
    _check_eps(eps)


def _launch(x, w_post, residual, layer_scalar, w_next, eps) -> tuple[torch.Tensor, torch.Tensor]:
    _check(x, w_post, residual, layer_scalar, w_next, eps)
    tokens, hidden = x.shape
    new_residual = torch.empty((tokens, hidden), dtype=x.dtype, device=x.device)
    next_normed = torch.empty_like(new_residual)
    if tokens == 0:
        return new_residual, next_normed
    block, warps = row_block(hidden)
    _layer_tail_next_norm_kernel[(tokens,)](
        x,
        w_post,
        residual,
        layer_scalar,
        w_next,
        new_residual,
        next_normed,
        hidden,
        x.stride(0),
        x.stride(1),
        residual.stride(0),
        residual.stride(1),
        float(eps),
        BLOCK=block,
        num_warps=warps,
    )
    return new_residual, next_normed


def layer_tail_next_norm_ref(x, w_post, residual, layer_scalar, w_next, eps):
    """Eager fp32 reference (the spec)."""
    _check(x, w_post, residual, layer_scalar, w_next, eps)
    new = (rmsnorm_ref(x, w_post, eps) + residual.float()) * layer_scalar.float()
    new = new.to(x.dtype)
    return new, rmsnorm_ref(new, w_next, eps).to(x.dtype)


@torch.library.custom_op("gemma4::layer_tail_next_norm", mutates_args=())
def _layer_tail_next_norm_op(
    x: torch.Tensor,
    w_post: torch.Tensor,
    residual: torch.Tensor,
    layer_scalar: torch.Tensor,
    w_next: torch.Tensor,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    args = (x, w_post, residual, layer_scalar, w_next, eps)
    if _use_kernel(x):
        return _launch(*args)
    return layer_tail_next_norm_ref(*args)


@_layer_tail_next_norm_op.register_fake
def _(x, w_post, residual, layer_scalar, w_next, eps):
    _check(x, w_post, residual, layer_scalar, w_next, eps)
    return (
        torch.empty_like(x, memory_format=torch.contiguous_format),
        torch.empty_like(x, memory_format=torch.contiguous_format),
    )


def layer_tail_next_norm(
    x: torch.Tensor,
    w_post: torch.Tensor,
    residual: torch.Tensor,
    layer_scalar: torch.Tensor,
    w_next: torch.Tensor,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(new_residual, next_normed)``: a layer's tail and the next layer's input norm.

    ``x, residual: [T, H]``; ``w_post, w_next: [H]``; ``layer_scalar``: 1-element tensor.
    """
    _check(x, w_post, residual, layer_scalar, w_next, eps)
    return torch.ops.gemma4.layer_tail_next_norm(
        x, w_post, residual, layer_scalar, w_next, float(eps)
    )

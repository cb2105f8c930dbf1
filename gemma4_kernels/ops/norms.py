"""Gemma 4 RMSNorm fusions: the post-attention triple norm and the residual tails.

Gemma 4's RMSNorm is ``x * rsqrt(mean(x^2) + eps) * w`` with a plain ``w`` (no ``1 + w``).
All three ops read each row once, accumulate in fp32, round each output once to the
input dtype, write fresh tensors (never an input: the fork's in-place residual
aliasing cost 31B its quality) and accept any row/column strides, T = 0 and hidden
sizes up to 16384.

* ``triple_rmsnorm(attn_out, residual, w_post_attn, w_pre_ff, w_pre_ff_2, router_scale, eps)``
  -> ``(residual_out, pre_ff_out, router_in, pre_ff_2_out)`` with
  ``h = rmsnorm(attn_out, w_post_attn) + residual``, ``residual_out = h``,
  ``pre_ff_out = rmsnorm(h, w_pre_ff)``, ``router_in = rmsnorm(h) * router_scale``
  (router scale x H^-0.5, the vector SGLang folds in ``fuse_scale``),
  ``pre_ff_2_out = rmsnorm(h, w_pre_ff_2)``: two row reductions, the second's rsqrt
  shared by the three outputs. Seed 002 (MoE layers): 4 norm launches -> 1.
  ``h`` stays in fp32 between the two reductions (HF rounds it to the model dtype
  first; the difference is below bf16 rounding of the outputs).
* ``rmsnorm_pair(x, w_a, w_b, eps) -> (rmsnorm(x, w_a), rmsnorm(x, w_b))``: one
  reduction, two weighted outputs (the MoE router's norm and ``pre_ff_norm_2``, both
  of the residual, when the full triple cannot run).
* ``rmsnorm_add(x, w, r, eps) = rmsnorm(x, w) + r``
* ``rmsnorm_residual_scalar(x, w, r, scalar, eps) = (rmsnorm(x, w) + r) * scalar``,
  ``scalar`` a 1-element tensor (Gemma 4's ``layer_scalar``).

Without a GPU and without ``TRITON_INTERPRET=1`` the ops run the eager references.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from gemma4_kernels.ops._common import (
    check_row_tensor,
    check_vector,
    interpreter_active,
    row_block,
)

# --------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------


@triton.jit
def _load_row(ptr, row, stride_t, stride_h, offs, mask):
    """One row (any strides) as fp32; masked lanes are 0."""
    return tl.load(ptr + row * stride_t + offs * stride_h, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _load_vector(ptr, offs, mask):
    return tl.load(ptr + offs, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _inv_rms(x, H, eps):
    """1 / sqrt(mean(x^2) + eps) over one row held in registers (masked lanes are 0)."""
    return 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / H + eps)


@triton.jit
def _rmsnorm_add_kernel(
    x_ptr,
    w_ptr,
    r_ptr,
    scalar_ptr,
    out_ptr,
    H,
    stride_xt,
    stride_xh,
    stride_rt,
    stride_rh,
    eps,
    HAS_SCALAR: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    mask = offs < H
    x = _load_row(x_ptr, row, stride_xt, stride_xh, offs, mask)
    r = _load_row(r_ptr, row, stride_rt, stride_rh, offs, mask)
    w = _load_vector(w_ptr, offs, mask)
    y = x * _inv_rms(x, H, eps) * w + r
    if HAS_SCALAR:
        y = y * tl.load(scalar_ptr).to(tl.float32)
    tl.store(out_ptr + row * H + offs, y.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _triple_rmsnorm_kernel(
    a_ptr,
    r_ptr,
    w_post_ptr,
    w_pre_ptr,
    w_pre2_ptr,
    router_scale_ptr,
    res_out_ptr,
    pre_out_ptr,
    router_out_ptr,
    pre2_out_ptr,
    H,
    stride_at,
    stride_ah,
    stride_rt,
    stride_rh,
    eps,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    mask = offs < H
    a = _load_row(a_ptr, row, stride_at, stride_ah, offs, mask)
    r = _load_row(r_ptr, row, stride_rt, stride_rh, offs, mask)
    w_post = _load_vector(w_post_ptr, offs, mask)

    h = a * _inv_rms(a, H, eps) * w_post + r  # masked lanes stay 0
    normed = h * _inv_rms(h, H, eps)

    w_pre = _load_vector(w_pre_ptr, offs, mask)
    w_pre2 = _load_vector(w_pre2_ptr, offs, mask)
    router_scale = _load_vector(router_scale_ptr, offs, mask)
    out = row * H + offs
    dtype = res_out_ptr.dtype.element_ty
    tl.store(res_out_ptr + out, h.to(dtype), mask=mask)
    tl.store(pre_out_ptr + out, (normed * w_pre).to(dtype), mask=mask)
    tl.store(router_out_ptr + out, (normed * router_scale).to(dtype), mask=mask)
    tl.store(pre2_out_ptr + out, (normed * w_pre2).to(dtype), mask=mask)


@triton.jit
def _rmsnorm_pair_kernel(
    x_ptr,
    wa_ptr,
    wb_ptr,
    a_out_ptr,
    b_out_ptr,
    H,
    stride_xt,
    stride_xh,
    eps,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    mask = offs < H
    x = _load_row(x_ptr, row, stride_xt, stride_xh, offs, mask)
    normed = x * _inv_rms(x, H, eps)
    wa = _load_vector(wa_ptr, offs, mask)
    wb = _load_vector(wb_ptr, offs, mask)
    dtype = a_out_ptr.dtype.element_ty
    tl.store(a_out_ptr + row * H + offs, (normed * wa).to(dtype), mask=mask)
    tl.store(b_out_ptr + row * H + offs, (normed * wb).to(dtype), mask=mask)


# --------------------------------------------------------------------------------
# Input checks and launchers
# --------------------------------------------------------------------------------


def _check_eps(eps: float) -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)):
        raise TypeError(f"eps must be a float, got {type(eps).__name__}")
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    return float(eps)


def _check_rmsnorm_add(x, w, r, scalar, eps) -> None:
    check_row_tensor("x", x)
    hidden = x.shape[1]
    check_row_tensor("r", r, like=x)
    check_vector("w", w, hidden, x.device)
    if scalar is not None:
        check_vector("scalar", scalar, 1, x.device)
    _check_eps(eps)


def _launch_rmsnorm_add(x, w, r, scalar, eps) -> torch.Tensor:
    _check_rmsnorm_add(x, w, r, scalar, eps)
    tokens, hidden = x.shape
    out = torch.empty((tokens, hidden), dtype=x.dtype, device=x.device)
    if tokens == 0:
        return out
    block, warps = row_block(hidden)
    _rmsnorm_add_kernel[(tokens,)](
        x,
        w,
        r,
        scalar if scalar is not None else w,  # unread without HAS_SCALAR
        out,
        hidden,
        x.stride(0),
        x.stride(1),
        r.stride(0),
        r.stride(1),
        float(eps),
        HAS_SCALAR=scalar is not None,
        BLOCK=block,
        num_warps=warps,
    )
    return out


def _check_pair(x, w_a, w_b, eps) -> None:
    check_row_tensor("x", x)
    check_vector("w_a", w_a, x.shape[1], x.device)
    check_vector("w_b", w_b, x.shape[1], x.device)
    _check_eps(eps)


def _launch_pair(x, w_a, w_b, eps) -> tuple[torch.Tensor, torch.Tensor]:
    _check_pair(x, w_a, w_b, eps)
    tokens, hidden = x.shape
    a = torch.empty((tokens, hidden), dtype=x.dtype, device=x.device)
    b = torch.empty_like(a)
    if tokens == 0:
        return a, b
    block, warps = row_block(hidden)
    _rmsnorm_pair_kernel[(tokens,)](
        x,
        w_a,
        w_b,
        a,
        b,
        hidden,
        x.stride(0),
        x.stride(1),
        float(eps),
        BLOCK=block,
        num_warps=warps,
    )
    return a, b


def _check_triple(attn_out, residual, w_post_attn, w_pre_ff, w_pre_ff_2, router_scale, eps):
    check_row_tensor("attn_out", attn_out)
    hidden = attn_out.shape[1]
    check_row_tensor("residual", residual, like=attn_out)
    for name, vector in (
        ("w_post_attn", w_post_attn),
        ("w_pre_ff", w_pre_ff),
        ("w_pre_ff_2", w_pre_ff_2),
        ("router_scale", router_scale),
    ):
        check_vector(name, vector, hidden, attn_out.device)
    _check_eps(eps)


def _launch_triple(attn_out, residual, w_post_attn, w_pre_ff, w_pre_ff_2, router_scale, eps):
    _check_triple(attn_out, residual, w_post_attn, w_pre_ff, w_pre_ff_2, router_scale, eps)
    tokens, hidden = attn_out.shape
    outs = [
        torch.empty((tokens, hidden), dtype=attn_out.dtype, device=attn_out.device)
        for _ in range(4)
    ]
    if tokens == 0:
        return tuple(outs)
    block, warps = row_block(hidden)
    _triple_rmsnorm_kernel[(tokens,)](
        attn_out,
        residual,
        w_post_attn,
        w_pre_ff,
        w_pre_ff_2,
        router_scale,
        *outs,
        hidden,
        attn_out.stride(0),
        attn_out.stride(1),
        residual.stride(0),
        residual.stride(1),
        float(eps),
        BLOCK=block,
        num_warps=warps,
    )
    return tuple(outs)


# --------------------------------------------------------------------------------
# References (eager, fp32): the spec
# --------------------------------------------------------------------------------


def rmsnorm_ref(x: torch.Tensor, w: torch.Tensor | None, eps: float) -> torch.Tensor:
    """Gemma 4 RMSNorm in fp32 (no cast back): ``x * rsqrt(mean(x^2) + eps) * w``."""
    x = x.float()
    y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return y if w is None else y * w.float()


def rmsnorm_add_ref(x, w, r, eps):
    _check_rmsnorm_add(x, w, r, None, eps)
    return (rmsnorm_ref(x, w, eps) + r.float()).to(x.dtype)


def rmsnorm_residual_scalar_ref(x, w, r, scalar, eps):
    _check_rmsnorm_add(x, w, r, scalar, eps)
    return ((rmsnorm_ref(x, w, eps) + r.float()) * scalar.float()).to(x.dtype)


def rmsnorm_pair_ref(x, w_a, w_b, eps):
    _check_pair(x, w_a, w_b, eps)
    normed = rmsnorm_ref(x, None, eps)
    return (normed * w_a.float()).to(x.dtype), (normed * w_b.float()).to(x.dtype)


def triple_rmsnorm_ref(attn_out, residual, w_post_attn, w_pre_ff, w_pre_ff_2, router_scale, eps):
    _check_triple(attn_out, residual, w_post_attn, w_pre_ff, w_pre_ff_2, router_scale, eps)
    h = rmsnorm_ref(attn_out, w_post_attn, eps) + residual.float()
    normed = rmsnorm_ref(h, None, eps)
    dtype = attn_out.dtype
    return (
        h.to(dtype),
        (normed * w_pre_ff.float()).to(dtype),
        (normed * router_scale.float()).to(dtype),
        (normed * w_pre_ff_2.float()).to(dtype),
    )


# --------------------------------------------------------------------------------
# Registration
# --------------------------------------------------------------------------------


def _use_kernel(t: torch.Tensor) -> bool:
    return t.is_cuda or interpreter_active()


@torch.library.custom_op("gemma4::rmsnorm_add", mutates_args=())
def _rmsnorm_add_op(x: torch.Tensor, w: torch.Tensor, r: torch.Tensor, eps: float) -> torch.Tensor:
    if _use_kernel(x):
        return _launch_rmsnorm_add(x, w, r, None, eps)
    return rmsnorm_add_ref(x, w, r, eps)


@_rmsnorm_add_op.register_fake
def _(x, w, r, eps):
    _check_rmsnorm_add(x, w, r, None, eps)
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.custom_op("gemma4::rmsnorm_residual_scalar", mutates_args=())
def _rmsnorm_residual_scalar_op(
    x: torch.Tensor, w: torch.Tensor, r: torch.Tensor, scalar: torch.Tensor, eps: float
) -> torch.Tensor:
    if _use_kernel(x):
        return _launch_rmsnorm_add(x, w, r, scalar, eps)
    return rmsnorm_residual_scalar_ref(x, w, r, scalar, eps)


@_rmsnorm_residual_scalar_op.register_fake
def _(x, w, r, scalar, eps):
    _check_rmsnorm_add(x, w, r, scalar, eps)
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.custom_op("gemma4::rmsnorm_pair", mutates_args=())
def _rmsnorm_pair_op(
    x: torch.Tensor, w_a: torch.Tensor, w_b: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    if _use_kernel(x):
        return _launch_pair(x, w_a, w_b, eps)
    return rmsnorm_pair_ref(x, w_a, w_b, eps)


@_rmsnorm_pair_op.register_fake
def _(x, w_a, w_b, eps):
    _check_pair(x, w_a, w_b, eps)
    return (
        torch.empty_like(x, memory_format=torch.contiguous_format),
        torch.empty_like(x, memory_format=torch.contiguous_format),
    )


@torch.library.custom_op("gemma4::triple_rmsnorm", mutates_args=())
def _triple_rmsnorm_op(
    attn_out: torch.Tensor,
    residual: torch.Tensor,
    w_post_attn: torch.Tensor,
    w_pre_ff: torch.Tensor,
    w_pre_ff_2: torch.Tensor,
    router_scale: torch.Tensor,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    args = (attn_out, residual, w_post_attn, w_pre_ff, w_pre_ff_2, router_scale, eps)
    if _use_kernel(attn_out):
        return _launch_triple(*args)
    return triple_rmsnorm_ref(*args)


@_triple_rmsnorm_op.register_fake
def _(attn_out, residual, w_post_attn, w_pre_ff, w_pre_ff_2, router_scale, eps):
    _check_triple(attn_out, residual, w_post_attn, w_pre_ff, w_pre_ff_2, router_scale, eps)
    return tuple(
        torch.empty_like(attn_out, memory_format=torch.contiguous_format) for _ in range(4)
    )


# --------------------------------------------------------------------------------
# Public functions
# --------------------------------------------------------------------------------


def rmsnorm_add(
    x: torch.Tensor, w: torch.Tensor, r: torch.Tensor, eps: float = 1e-6
) -> torch.Tensor:
    """``rmsnorm(x, w) + r`` for ``x, r: [T, H]``, ``w: [H]``; output dtype of ``x``."""
    _check_rmsnorm_add(x, w, r, None, eps)
    return torch.ops.gemma4.rmsnorm_add(x, w, r, float(eps))


def rmsnorm_residual_scalar(
    x: torch.Tensor, w: torch.Tensor, r: torch.Tensor, scalar: torch.Tensor, eps: float = 1e-6
) -> torch.Tensor:
    """``(rmsnorm(x, w) + r) * scalar`` with ``scalar`` a 1-element tensor."""
    _check_rmsnorm_add(x, w, r, scalar, eps)
    return torch.ops.gemma4.rmsnorm_residual_scalar(x, w, r, scalar, float(eps))


def rmsnorm_pair(
    x: torch.Tensor, w_a: torch.Tensor, w_b: torch.Tensor, eps: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rmsnorm(x, w_a), rmsnorm(x, w_b))`` from one reduction per row."""
    _check_pair(x, w_a, w_b, eps)
    return torch.ops.gemma4.rmsnorm_pair(x, w_a, w_b, float(eps))


def triple_rmsnorm(
    attn_out: torch.Tensor,
    residual: torch.Tensor,
    w_post_attn: torch.Tensor,
    w_pre_ff: torch.Tensor,
    w_pre_ff_2: torch.Tensor,
    router_scale: torch.Tensor,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Post-attention block of a Gemma 4 MoE layer; returns
    ``(residual_out, pre_ff_out, router_in, pre_ff_2_out)``, each ``[T, H]``."""
    args = (attn_out, residual, w_post_attn, w_pre_ff, w_pre_ff_2, router_scale, eps)
    _check_triple(*args)
    return torch.ops.gemma4.triple_rmsnorm(*args[:-1], float(eps))

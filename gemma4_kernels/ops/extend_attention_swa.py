"""Sliding-window extend attention whose K/V loop the Triton pipeliner can overlap.

SGLang 0.5.23's ``_fwd_kernel`` sweeps every prefix tile and skips the tiles outside
the window with ``if not SKIP_TILE:`` around the loads. Compiled for sm_90a with
``num_stages=2`` that branch keeps the software pipeliner from applying: the loop
issues no ``cp.async`` (static metrics: microbench/extend_attention_static.py). Here
each query block computes the first in-window key up front,

    lo = floor((prefix_len + m * BLOCK_M - W) / BLOCK_N) * BLOCK_N   (W = radius),

and loops over ``[lo, prefix_len)`` and then the causal extend range with unconditional
loads; the per-element window mask stays, so the result is the same attention.

Semantics follow SGLang's extend kernel for the case Gemma 4's sliding layers use
(page size 1, causal, no custom mask, sinks, LSE or fp8): query row ``i`` of a request
sits at position ``prefix_len + i`` and sees prefix/extend keys ``j`` with
``j <= prefix_len + i <= j + W``. ``sliding_window_size`` is SGLang's radius (HF window
minus one). Chosen only through the extend-attention tile table, and only for an entry
carrying a GPU timing.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from gemma4_kernels.ops._common import interpreter_active


@triton.jit
def _tanh(x):
    return 2 * tl.sigmoid(2 * x) - 1


@triton.jit
def _online_step(qk, v, acc, deno, e_max, mask, v_scale):
    """One online-softmax step over a [BLOCK_M, BLOCK_N] score tile."""
    qk = tl.where(mask, qk, float("-inf"))
    row_max = tl.max(qk, 1)
    row_max = tl.where(row_max == float("-inf"), -1e20, row_max)
    new_max = tl.maximum(row_max, e_max)
    rescale = tl.exp(e_max - new_max)
    p = tl.exp(qk - new_max[:, None])
    deno = deno * rescale + tl.sum(p, 1)
    acc = acc * rescale[:, None] + tl.dot(p.to(v.dtype), v) * v_scale
    return acc, deno, new_max


@triton.jit
def _extend_swa_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    o_ptr,
    k_buf_ptr,
    v_buf_ptr,
    qo_indptr_ptr,
    kv_indptr_ptr,
    kv_indices_ptr,
    sm_scale,
    v_scale,
    kv_group_num,
    stride_qt,
    stride_qh,
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    stride_ot,
    stride_oh,
    stride_kbuf_t,
    stride_kbuf_h,
    stride_vbuf_t,
    stride_vbuf_h,
    WINDOW: tl.constexpr,
    LOGIT_CAP: tl.constexpr,
    LQ: tl.constexpr,
    LV: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    seq = tl.program_id(0)
    head = tl.program_id(1)
    block_m = tl.program_id(2)
    kv_head = head // kv_group_num

    q_start = tl.load(qo_indptr_ptr + seq)
    ext_len = tl.load(qo_indptr_ptr + seq + 1) - q_start
    kv_start = tl.load(kv_indptr_ptr + seq)
    prefix_len = tl.load(kv_indptr_ptr + seq + 1) - kv_start
    if block_m * BLOCK_M >= ext_len:
        return

    offs_m = block_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    mask_m = offs_m < ext_len
    mask_d = offs_d < LQ
    mask_dv = offs_dv < LV

    q = tl.load(
        q_ptr + (q_start + offs_m[:, None]) * stride_qt + head * stride_qh + offs_d[None, :],
        mask=mask_m[:, None] & mask_d[None, :],
        other=0.0,
    )
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
    deno = tl.zeros([BLOCK_M], dtype=tl.float32)
    e_max = tl.zeros([BLOCK_M], dtype=tl.float32) - float("inf")

    # Prefix keys: only the tiles the block's lowest query row can still see.
    q_pos = prefix_len + offs_m
    lo = (tl.maximum(prefix_len + block_m * BLOCK_M - WINDOW, 0) // BLOCK_N) * BLOCK_N
    for start_n in range(lo, prefix_len, BLOCK_N):
        n = start_n + offs_n
        mask_n = n < prefix_len
        loc = tl.load(kv_indices_ptr + kv_start + n, mask=mask_n, other=0)
        k = tl.load(
            k_buf_ptr + loc[None, :] * stride_kbuf_t + kv_head * stride_kbuf_h + offs_d[:, None],
            mask=mask_n[None, :] & mask_d[:, None],
            other=0.0,
        )
        v = tl.load(
            v_buf_ptr + loc[:, None] * stride_vbuf_t + kv_head * stride_vbuf_h + offs_dv[None, :],
            mask=mask_n[:, None] & mask_dv[None, :],
            other=0.0,
        )
        qk = tl.dot(q, k) * sm_scale
        if LOGIT_CAP > 0:
            qk = LOGIT_CAP * _tanh(qk / LOGIT_CAP)
        mask = mask_m[:, None] & mask_n[None, :] & (q_pos[:, None] <= n[None, :] + WINDOW)
        acc, deno, e_max = _online_step(qk, v, acc, deno, e_max, mask, v_scale)

    # Extend keys: causal, from the first tile inside the window of the lowest row.
    lo = (tl.maximum(block_m * BLOCK_M - WINDOW, 0) // BLOCK_N) * BLOCK_N
    hi = tl.minimum(ext_len, (block_m + 1) * BLOCK_M)
    for start_n in range(lo, hi, BLOCK_N):
        n = start_n + offs_n
        mask_n = n < hi
        k = tl.load(
            k_ptr + (q_start + n[None, :]) * stride_kt + kv_head * stride_kh + offs_d[:, None],
            mask=mask_n[None, :] & mask_d[:, None],
            other=0.0,
        )
        v = tl.load(
            v_ptr + (q_start + n[:, None]) * stride_vt + kv_head * stride_vh + offs_dv[None, :],
            mask=mask_n[:, None] & mask_dv[None, :],
            other=0.0,
        )
        qk = tl.dot(q, k) * sm_scale
        if LOGIT_CAP > 0:
            qk = LOGIT_CAP * _tanh(qk / LOGIT_CAP)
        causal = offs_m[:, None] >= n[None, :]
        in_window = offs_m[:, None] <= n[None, :] + WINDOW
        mask = mask_m[:, None] & mask_n[None, :] & causal & in_window
        acc, deno, e_max = _online_step(qk, v, acc, deno, e_max, mask, 1.0)

    out = acc / tl.where(deno == 0.0, 1.0, deno)[:, None]
    tl.store(
        o_ptr + (q_start + offs_m[:, None]) * stride_ot + head * stride_oh + offs_dv[None, :],
        out.to(o_ptr.dtype.element_ty),
        mask=mask_m[:, None] & mask_dv[None, :],
    )


def _check(q, k, v, o, k_buffer, v_buffer, qo_indptr, kv_indptr, kv_indices, window) -> None:
    named = dict(q=q, k=k, v=v, o=o, k_buffer=k_buffer, v_buffer=v_buffer)
    for name, t in {**named, "qo_indptr": qo_indptr, "kv_indptr": kv_indptr}.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not isinstance(kv_indices, torch.Tensor):
        raise TypeError(f"kv_indices must be a torch.Tensor, got {type(kv_indices).__name__}")
    for name, t in named.items():
        if t.dim() != 3:
            raise ValueError(f"{name} must be 3-D [tokens, heads, head_dim], got {tuple(t.shape)}")
        if t.stride(-1) != 1:
            raise ValueError(f"{name} must be contiguous in its last dimension")
    if q.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise TypeError(f"q must be float32, bfloat16 or float16, got {q.dtype}")
    for name in ("k", "v", "o", "k_buffer", "v_buffer"):
        if named[name].dtype != q.dtype:
            raise TypeError(f"{name} has dtype {named[name].dtype}, expected q's {q.dtype}")
    tokens, heads, lq = q.shape
    kv_heads = k.shape[1]
    if k.shape != (tokens, kv_heads, lq):
        raise ValueError(f"k has shape {tuple(k.shape)}, expected ({tokens}, heads_kv, {lq})")
    lv = v.shape[-1]
    if v.shape[:2] != (tokens, kv_heads) or o.shape != (tokens, heads, lv):
        raise ValueError("v must be [tokens, heads_kv, Lv] and o [tokens, heads, Lv]")
    if kv_heads == 0 or heads % kv_heads:
        raise ValueError(f"q heads ({heads}) must be a multiple of k heads ({kv_heads})")
    if k_buffer.shape[1:] != (kv_heads, lq) or v_buffer.shape[1:] != (kv_heads, lv):
        raise ValueError("k_buffer/v_buffer must be [slots, heads_kv, Lq/Lv]")
    if qo_indptr.dim() != 1 or qo_indptr.shape != kv_indptr.shape or qo_indptr.numel() < 1:
        raise ValueError("qo_indptr and kv_indptr must be 1-D [batch + 1] of the same length")
    if qo_indptr.dtype not in (torch.int32, torch.int64) or kv_indptr.dtype != qo_indptr.dtype:
        raise TypeError("qo_indptr and kv_indptr must both be int32 or both int64")
    if kv_indices.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"kv_indices must be int32 or int64, got {kv_indices.dtype}")
    if not isinstance(window, int) or isinstance(window, bool) or window <= 0:
        raise ValueError(f"sliding_window_size must be a positive int radius, got {window!r}")


def extend_attention_swa_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_buffer: torch.Tensor,
    v_buffer: torch.Tensor,
    qo_indptr: torch.Tensor,
    kv_indptr: torch.Tensor,
    kv_indices: torch.Tensor,
    sm_scale: float,
    sliding_window_size: int,
    logit_cap: float = 0.0,
    v_scale: float = 1.0,
) -> torch.Tensor:
    """Eager fp32 reference: ``[tokens, heads, Lv]`` float32, request by request.
    ``sliding_window_size <= 0`` means full causal attention (as in SGLang)."""
    heads, lv = q.shape[1], v.shape[-1]
    group = heads // k.shape[1]
    out = torch.zeros(q.shape[0], heads, lv, dtype=torch.float32, device=q.device)
    for r in range(qo_indptr.numel() - 1):
        q0, q1 = int(qo_indptr[r]), int(qo_indptr[r + 1])
        k0, k1 = int(kv_indptr[r]), int(kv_indptr[r + 1])
        if q1 == q0:
            continue
        loc = kv_indices[k0:k1].long()
        keys = torch.cat([k_buffer[loc], k[q0:q1]]).float().repeat_interleave(group, dim=1)
        values = torch.cat([v_buffer[loc] * v_scale, v[q0:q1]]).float()
        values = values.repeat_interleave(group, dim=1)
        scores = torch.einsum("qhd,khd->hqk", q[q0:q1].float(), keys) * sm_scale
        if logit_cap > 0:
            scores = logit_cap * torch.tanh(scores / logit_cap)
        prefix = k1 - k0
        q_pos = prefix + torch.arange(q1 - q0, device=q.device)[:, None]
        k_pos = torch.arange(prefix + q1 - q0, device=q.device)[None, :]
        visible = k_pos <= q_pos
        if sliding_window_size > 0:
            visible &= q_pos <= k_pos + sliding_window_size
        scores = scores.masked_fill(~visible, float("-inf"))
        out[q0:q1] = torch.einsum("hqk,khd->qhd", scores.softmax(-1), values)
    return out


def _launch(
    q,
    k,
    v,
    o,
    k_buffer,
    v_buffer,
    qo_indptr,
    kv_indptr,
    kv_indices,
    max_len_extend,
    sm_scale,
    window,
    logit_cap,
    v_scale,
    block_m,
    block_n,
    num_warps,
    num_stages,
) -> None:
    batch, heads = qo_indptr.numel() - 1, q.shape[1]
    if batch == 0 or max_len_extend <= 0 or q.shape[0] == 0:
        return
    lq, lv = q.shape[-1], v.shape[-1]
    grid = (batch, heads, triton.cdiv(max_len_extend, block_m))
    _extend_swa_kernel[grid](
        q, k, v, o, k_buffer, v_buffer, qo_indptr, kv_indptr, kv_indices,
        sm_scale, v_scale, heads // k.shape[1],
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        o.stride(0), o.stride(1),
        k_buffer.stride(0), k_buffer.stride(1), v_buffer.stride(0), v_buffer.stride(1),
        WINDOW=window,
        LOGIT_CAP=logit_cap,
        LQ=lq,
        LV=lv,
        BLOCK_D=triton.next_power_of_2(lq),
        BLOCK_DV=triton.next_power_of_2(lv),
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        num_warps=num_warps,
        num_stages=num_stages,
    )  # fmt: skip


@torch.library.custom_op("gemma4::extend_attention_swa", mutates_args=("o",))
def _extend_attention_swa_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    o: torch.Tensor,
    k_buffer: torch.Tensor,
    v_buffer: torch.Tensor,
    qo_indptr: torch.Tensor,
    kv_indptr: torch.Tensor,
    kv_indices: torch.Tensor,
    max_len_extend: int,
    sm_scale: float,
    sliding_window_size: int,
    logit_cap: float,
    v_scale: float,
    block_m: int,
    block_n: int,
    num_warps: int,
    num_stages: int,
) -> None:
    if q.is_cuda or interpreter_active():
        _launch(q, k, v, o, k_buffer, v_buffer, qo_indptr, kv_indptr, kv_indices,
                max_len_extend, sm_scale, sliding_window_size, logit_cap, v_scale,
                block_m, block_n, num_warps, num_stages)  # fmt: skip
        return
    ref = extend_attention_swa_ref(
        q, k, v, k_buffer, v_buffer, qo_indptr, kv_indptr, kv_indices,
        sm_scale, sliding_window_size, logit_cap, v_scale,
    )  # fmt: skip
    o.copy_(ref.to(o.dtype))


@_extend_attention_swa_op.register_fake
def _(*args: object) -> None:
    return None  # writes ``o`` in place; no tensor to describe


def extend_attention_swa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    o: torch.Tensor,
    k_buffer: torch.Tensor,
    v_buffer: torch.Tensor,
    qo_indptr: torch.Tensor,
    kv_indptr: torch.Tensor,
    kv_indices: torch.Tensor,
    max_len_extend: int,
    *,
    sm_scale: float,
    sliding_window_size: int,
    logit_cap: float = 0.0,
    v_scale: float = 1.0,
    block_m: int = 32,
    block_n: int = 64,
    num_warps: int = 4,
    num_stages: int = 2,
) -> None:
    """Sliding-window extend attention into ``o`` (``[tokens, heads, Lv]``).

    ``q``/``k``/``v`` hold the new tokens (``qo_indptr`` splits them by request);
    the prefix of request ``r`` is ``kv_indices[kv_indptr[r]:kv_indptr[r+1]]`` in
    ``k_buffer``/``v_buffer``. ``max_len_extend`` must be at least the longest extend.
    """
    _check(q, k, v, o, k_buffer, v_buffer, qo_indptr, kv_indptr, kv_indices, sliding_window_size)
    for name, value in (("block_m", block_m), ("block_n", block_n)):
        if not isinstance(value, int) or value < 16 or value & (value - 1):
            raise ValueError(f"{name} must be a power of two >= 16, got {value!r}")
    if not isinstance(max_len_extend, int) or max_len_extend < 0:
        raise ValueError(f"max_len_extend must be a non-negative int, got {max_len_extend!r}")
    torch.ops.gemma4.extend_attention_swa(
        q, k, v, o, k_buffer, v_buffer, qo_indptr, kv_indptr, kv_indices, max_len_extend,
        float(sm_scale), sliding_window_size, float(logit_cap), float(v_scale),
        block_m, block_n, num_warps, num_stages,
    )  # fmt: skip

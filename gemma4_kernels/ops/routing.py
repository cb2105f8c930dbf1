"""Gemma 4 MoE routing in one launch: top-K experts per token and their weights.

``moe_routing(router_logits[T, E], per_expert_scale[E] | None, top_k)`` returns
``(topk_weights fp32 [T, K], topk_ids int32 [T, K])`` with the semantics of HF's
``Gemma4TextRouter`` after the projection: softmax over all E, top-K, renormalise
over the K, times ``per_expert_scale[id]`` — computed as one fp32 softmax over the K
selected logits (the same numbers: renormalised top-K of a softmax is the softmax of
the top-K logits).

Algorithm (vLLM #39083, the kernel SGLang 0.5.23 also ships): one program per
token maps each logit's fp32 bits to an order-preserving int32 key and packs
``key << 32 | id`` into int64, so a single bitonic network orders experts by logit
with ties broken by id. Unlike that kernel we take only the top ``next_pow2(K)``
(``tl.topk``, a truncated bitonic sort) instead of sorting all E, read any strides,
accept E up to 16384, and define every input:

* order: descending logit; ties -> lower expert id first; -0.0 and +0.0 rank equal.
* -inf: ranks below every finite logit, so it is chosen only when fewer than K finite
  logits exist; a chosen -inf gets weight 0 when a finite logit is also chosen.
* NaN policy: a NaN logit ranks below everything (even -inf), so ids stay the
  top-K of the numbers and are always valid expert ids; and, as in HF (whose softmax
  over all E is NaN), every weight of a row containing a NaN is NaN. Where the
  softmax over the chosen logits is undefined (+inf chosen, or all chosen are -inf)
  the weights are NaN too, again as in HF. Rows never influence each other.

Without a GPU and without ``TRITON_INTERPRET=1`` the op runs the eager reference.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from gemma4_kernels.ops._common import interpreter_active

MAX_EXPERTS = 16384
_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

# --------------------------------------------------------------------------------
# Kernel
# --------------------------------------------------------------------------------


@triton.jit
def _moe_routing_kernel(
    logits_ptr,
    scale_ptr,
    weights_ptr,
    ids_ptr,
    E,
    K,
    stride_t,
    stride_e,
    HAS_SCALE: tl.constexpr,
    BLOCK_E: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_E)
    in_row = offs < E
    x = tl.load(logits_ptr + token * stride_t + offs * stride_e, mask=in_row, other=0.0)
    x = x.to(tl.float32) + 0.0  # -0.0 + 0.0 == +0.0: both zeros get one key
    is_nan = (x != x) & in_row

    # Order-preserving int32 key of the fp32 bits: positives keep their bits,
    # negatives flip the magnitude bits so more negative means smaller.
    bits = x.to(tl.int32, bitcast=True)
    key = tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)
    lowest = -2147483648  # below -inf's key: NaN and padding lanes
    key = tl.where(is_nan | ~in_row, lowest, key)
    # Low word: (BLOCK_E - 1 - id), so among equal keys a lower id sorts higher.
    packed = (key.to(tl.int64) << 32) | (BLOCK_E - 1 - offs).to(tl.int64)
    top = tl.topk(packed, BLOCK_K)  # the BLOCK_K largest, descending

    offs_k = tl.arange(0, BLOCK_K)
    chosen = offs_k < K
    ids = (BLOCK_E - 1 - (top & 0xFFFFFFFF)).to(tl.int32)
    top_key = (top >> 32).to(tl.int32)
    top_bits = tl.where(top_key >= 0, top_key, top_key ^ 0x7FFFFFFF)
    values = top_bits.to(tl.float32, bitcast=True)

    best = tl.max(tl.where(chosen, values, float("-inf")), axis=0)
    unnorm = tl.where(chosen, tl.exp(values - best), 0.0)
    weights = unnorm / tl.sum(unnorm, axis=0)
    row_has_nan = tl.max(is_nan.to(tl.int32), axis=0) > 0
    weights = tl.where(row_has_nan, float("nan"), weights)
    if HAS_SCALE:
        scale = tl.load(scale_ptr + ids.to(tl.int64), mask=chosen, other=1.0)
        weights = weights * scale.to(tl.float32)

    out = token * K + offs_k
    tl.store(weights_ptr + out, weights, mask=chosen)
    tl.store(ids_ptr + out, ids, mask=chosen)


# --------------------------------------------------------------------------------
# Launcher
# --------------------------------------------------------------------------------


def _check_inputs(
    router_logits: torch.Tensor, per_expert_scale: torch.Tensor | None, top_k: int
) -> tuple[int, int]:
    """Validate everything before any launch; returns (T, E)."""
    if not isinstance(router_logits, torch.Tensor):
        raise TypeError(f"router_logits must be a torch.Tensor, got {type(router_logits).__name__}")
    if router_logits.dim() != 2:
        raise ValueError(
            f"router_logits must be 2-D [tokens, experts], got shape {tuple(router_logits.shape)}"
        )
    if router_logits.dtype not in _FLOAT_DTYPES:
        raise TypeError(
            f"router_logits must be float32, bfloat16 or float16, got {router_logits.dtype}"
        )
    tokens, experts = router_logits.shape
    if isinstance(top_k, bool) or not isinstance(top_k, int):
        raise TypeError(f"top_k must be an int, got {type(top_k).__name__}")
    if not 1 <= top_k <= experts:
        raise ValueError(f"top_k must be in 1..{experts} (the number of experts), got {top_k}")
    if experts > MAX_EXPERTS:
        raise ValueError(f"router_logits has {experts} experts; at most {MAX_EXPERTS} supported")
    if per_expert_scale is not None:
        if not isinstance(per_expert_scale, torch.Tensor):
            raise TypeError(
                "per_expert_scale must be a torch.Tensor or None, "
                f"got {type(per_expert_scale).__name__}"
            )
        if not per_expert_scale.is_floating_point():
            raise TypeError(
                f"per_expert_scale must be floating point, got {per_expert_scale.dtype}"
            )
        if per_expert_scale.shape != (experts,):
            raise ValueError(
                f"per_expert_scale must have shape ({experts},) to match router_logits, "
                f"got {tuple(per_expert_scale.shape)}"
            )
        if per_expert_scale.device != router_logits.device:
            raise ValueError(
                f"per_expert_scale is on {per_expert_scale.device} but router_logits is on "
                f"{router_logits.device}"
            )
    return tokens, experts


def _num_warps(block_e: int) -> int:
    # E=128 fits one warp (4 int64 keys per thread); larger E spreads the network.
    return min(max(block_e // 512, 1), 16)


def _moe_routing_launch(
    router_logits: torch.Tensor, per_expert_scale: torch.Tensor | None, top_k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    tokens, experts = _check_inputs(router_logits, per_expert_scale, top_k)
    device = router_logits.device
    weights = torch.empty((tokens, top_k), dtype=torch.float32, device=device)
    ids = torch.empty((tokens, top_k), dtype=torch.int32, device=device)
    if tokens == 0:
        return weights, ids
    block_e = triton.next_power_of_2(experts)
    scale = per_expert_scale if per_expert_scale is not None else weights  # unread
    _moe_routing_kernel[(tokens,)](
        router_logits,
        scale,
        weights,
        ids,
        experts,
        top_k,
        router_logits.stride(0),
        router_logits.stride(1),
        HAS_SCALE=per_expert_scale is not None,
        BLOCK_E=block_e,
        # tl.topk needs k >= 2 unless it sorts the whole (1-wide) row.
        BLOCK_K=min(max(triton.next_power_of_2(top_k), 2), block_e),
        num_warps=_num_warps(block_e),
    )
    return weights, ids


# --------------------------------------------------------------------------------
# Reference (eager, fp32): the spec
# --------------------------------------------------------------------------------


def moe_routing_ref(
    router_logits: torch.Tensor, per_expert_scale: torch.Tensor | None, top_k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager fp32 routing with the documented order, tie, NaN and -inf policy."""
    tokens, experts = _check_inputs(router_logits, per_expert_scale, top_k)
    x = router_logits.float() + 0.0
    is_nan = torch.isnan(x)
    ranked = torch.where(is_nan, torch.full_like(x, float("-inf")), x)
    # Stable sorts: by value (descending, ties keep the lower id first), then push
    # NaNs after every number (including -inf, which they tie with above).
    order = torch.sort(ranked, dim=-1, descending=True, stable=True).indices
    nan_last = torch.sort(is_nan.gather(-1, order).to(torch.int8), dim=-1, stable=True).indices
    ids = order.gather(-1, nan_last)[:, :top_k]
    values = x.gather(-1, ids)
    best = values[:, :1]
    unnorm = torch.exp(values - best)
    weights = unnorm / unnorm.sum(dim=-1, keepdim=True)
    weights = torch.where(is_nan.any(dim=-1, keepdim=True), float("nan"), weights)
    if per_expert_scale is not None:
        weights = weights * per_expert_scale.float()[ids]
    return weights.float().reshape(tokens, top_k), ids.to(torch.int32).reshape(tokens, top_k)


# --------------------------------------------------------------------------------
# Registration
# --------------------------------------------------------------------------------


@torch.library.custom_op("gemma4::moe_routing", mutates_args=())
def _moe_routing_op(
    router_logits: torch.Tensor, per_expert_scale: torch.Tensor | None, top_k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    if router_logits.is_cuda or interpreter_active():
        return _moe_routing_launch(router_logits, per_expert_scale, top_k)
    return moe_routing_ref(router_logits, per_expert_scale, top_k)


@_moe_routing_op.register_fake
def _(router_logits, per_expert_scale, top_k):
    tokens, _ = _check_inputs(router_logits, per_expert_scale, top_k)
    weights = router_logits.new_empty((tokens, top_k), dtype=torch.float32)
    ids = router_logits.new_empty((tokens, top_k), dtype=torch.int32)
    return weights, ids


def moe_routing(
    router_logits: torch.Tensor, per_expert_scale: torch.Tensor | None, top_k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-K experts and weights per token; see the module docstring for the policy.

    Args:
        router_logits: ``[T, E]`` fp32/bf16/fp16, any strides; ``T`` may be 0.
        per_expert_scale: ``[E]`` any float dtype, or None for no scaling.
        top_k: ``1 <= top_k <= E``.

    Returns:
        ``(weights fp32 [T, top_k], ids int32 [T, top_k])``, ids in descending logit order.
    """
    _check_inputs(router_logits, per_expert_scale, top_k)
    return torch.ops.gemma4.moe_routing(router_logits, per_expert_scale, top_k)

"""Every patch, listed once, in application order (a patch comes after what it requires)."""

from __future__ import annotations

from sglang_patches import (
    allreduce_rmsnorm,
    batched_mm_encoder,
    cpu_router_scale,
    dense_chunk_mem,
    extend_attention_tiles,
    frozen_kv_mtp_swa,
    fused_rope_kv_write,
    k_eq_v_skip_v,
    layer_boundary_fusion,
    mm_lm_only,
    moe_gelu_tanh,
    moe_routing,
    ple_tail,
    post_attn_triple_norm,
    prefill_graph_gate,
    router_fp32,
    swa_ratio_moe,
    text_only_default,
    triton_swa_decode_window,
    trtllm_bounds_trap,
    yoco_fast_prefill,
)
from sglang_patches.base import Patch

PATCHES: list[Patch] = [
    swa_ratio_moe.PATCH,
    dense_chunk_mem.PATCH,
    prefill_graph_gate.PATCH,
    mm_lm_only.PATCH,
    text_only_default.PATCH,
    triton_swa_decode_window.PATCH,
    extend_attention_tiles.PATCH,
    cpu_router_scale.PATCH,
    moe_routing.PATCH,
    moe_gelu_tanh.PATCH,
    post_attn_triple_norm.PATCH,
    ple_tail.PATCH,
    layer_boundary_fusion.PATCH,
    yoco_fast_prefill.PATCH,
    router_fp32.PATCH,
    k_eq_v_skip_v.PATCH,
    fused_rope_kv_write.PATCH,
    allreduce_rmsnorm.PATCH,
    batched_mm_encoder.PATCH,
    trtllm_bounds_trap.PATCH,
    frozen_kv_mtp_swa.PATCH,
]

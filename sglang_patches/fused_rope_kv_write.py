"""fused_rope_kv_write — the fused RoPE + KV-cache write writes sliding layers to their own slots.

SGLang 0.5.23 ships a fused RoPE + KV-cache store for Gemma 4 but keeps it off
(``can_fuse = False`` in ``Gemma4Attention.forward``, "causes accuracy regression in
launch_server path"). Root cause (docs/fused_rope_kv_write.md; reproduced on CPU by
tests/patches/test_fused_rope_kv_write.py with SGLang's real pool and arg builder):

* Gemma 4 is served with the hybrid pool (``SWAKVPool``): full-attention layers live in
  the full pool, sliding layers in the SWA pool, and a token's SWA slot is
  ``full_to_swa_index_mapping[full slot]``. The attention backends write sliding layers
  at the translated slot (``KVWriteLoc.swa_loc``).
* The CUDA branch of ``create_fused_set_kv_buffer_arg`` (the fused write's arguments)
  hands the kernel ``forward_batch.out_cache_loc`` — full-pool slots — together with
  ``get_key_buffer(layer_id)``, which for a sliding layer is the SWA buffer. So sliding
  layers' K/V land in other tokens' SWA slots. In a fresh process both allocators hand
  out slots in the same order and the mapping is the identity, so short offline tests
  pass; in a running server the two free lists diverge (windows are evicted, the SWA
  pool is smaller) and decode reads garbage: the regression seen only under
  ``launch_server``. Full-attention layers are written correctly.

This patch fixes the argument builder where Gemma 4 calls it: for a layer the hybrid
pool maps to the SWA side, the write location becomes the translated SWA slot (what the
backend's own write uses); full layers and non-hybrid pools are untouched. Settings the
fused kernel cannot reproduce (decode context parallel's masked shard writes) are
refused loudly instead of written wrong.

What it does not do: turn the fusion on. In 0.5.23 ``can_fuse`` is a constant, so with
this patch Gemma 4 still runs the unfused path (nothing changes at run time today).
Enabling it needs the fused JIT CUDA kernel (``kernels/jit/csrc/elementwise/rope.cuh``)
checked on a GPU against the unfused path; that has not been possible here.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

from sglang_patches.base import CheckResult, Patch, Pin, UndoLog, verify_pins

MODEL = "sglang.srt.models.gemma4_causal"
BUILDER = "sglang.srt.models.utils.create_fused_set_kv_buffer_arg"


class FusedKVWriteUnsupported(RuntimeError):
    """The fused RoPE + KV write was asked for a setting it would write wrong."""


class FusedRopeKvWrite(Patch):
    name = "fused_rope_kv_write"
    purpose = (
        "fix: the fused RoPE + KV write's arguments address sliding layers of the hybrid "
        "pool by their SWA slots (stock: full-pool slots, the 'launch_server regression')"
    )
    targets = (f"{MODEL}.create_fused_set_kv_buffer_arg",)

    pins = (
        Pin(BUILDER, "7ffa9ba1e4dcda23"),
        Pin(f"{MODEL}.Gemma4Attention.forward", "3e2f0f3572e49507"),
        Pin("sglang.srt.mem_cache.swa_memory_pool.SWAKVPool.set_kv_buffer", "a94af6db74c663e5"),
        Pin(
            "sglang.srt.mem_cache.swa_memory_pool.SWAKVPool.translate_loc_from_full_to_swa",
            "8e17ff7501a33172",
        ),
    )

    def check(self) -> CheckResult:
        return verify_pins(self.pins)

    @staticmethod
    def fixed_arg(arg: Any, layer: Any, forward_batch: Any) -> Any:
        """``arg`` with its write location in the space of the buffer it writes."""
        from sglang.kernels.ops.attention.rope import FusedSetKVBufferArg
        from sglang.srt.mem_cache.swa_memory_pool import SWAKVPool
        from sglang.srt.model_executor.forward_context import get_attn_backend

        if not isinstance(arg, FusedSetKVBufferArg):  # the ROCm branch translates itself
            return arg
        backend = get_attn_backend()
        # Decode context parallel: the backends write a rank-local shard (loc // dcp_size,
        # masked by position), which the fused kernel's plain slot store cannot do.
        if (
            getattr(backend, "dcp_size", 1) > 1
            or getattr(forward_batch, "dcp_kv_mask", None) is not None
        ):
            raise FusedKVWriteUnsupported(
                "fused RoPE + KV write with decode context parallel: the backend writes a "
                "masked rank-local shard, the fused kernel cannot"
            )
        pool = backend.token_to_kv_pool
        if not isinstance(pool, SWAKVPool) or not pool.layers_mapping[layer.layer_id][1]:
            return arg
        swa_loc = pool.translate_loc_from_full_to_swa(arg.cache_loc)
        return dataclasses.replace(arg, cache_loc=swa_loc)

    def _apply(self, undo: UndoLog) -> None:
        from sglang.srt.models import gemma4_causal

        original = gemma4_causal.create_fused_set_kv_buffer_arg
        patch = self

        @functools.wraps(original)
        def create_fused_set_kv_buffer_arg(value, layer, forward_batch):
            arg = original(value=value, layer=layer, forward_batch=forward_batch)
            return patch.fixed_arg(arg, layer, forward_batch)

        # Only Gemma 4's reference: other models gate the fusion off for hybrid pools.
        undo.set_attr(
            gemma4_causal, "create_fused_set_kv_buffer_arg", create_fused_set_kv_buffer_arg
        )


PATCH = FusedRopeKvWrite()

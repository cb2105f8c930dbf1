"""fused_rope_kv_write: the root cause of 0.5.23's disabled fused RoPE + KV write, reproduced
on CPU with SGLang's real hybrid pool and arg builder, and the fix.

The fused kernel itself is CUDA-only (JIT ``rope.cuh``). What decides where it writes is
Python: ``create_fused_set_kv_buffer_arg`` picks the buffers and the slot of every token.
``store_as_the_fused_kernel`` below is a torch model of the kernel's store (labelled: not
the kernel): K rotated by the same RoPE the unfused path applies, written to
``k_buffer[cache_loc]``, V to ``v_buffer[cache_loc]`` (``fused_rope_store_kernel``: ``k_out =
k_cache + loc * cache_stride``, same for V). RoPE is left to SGLang's unfused call, so the
only difference from stock is who writes the cache, with which slots.
"""

from __future__ import annotations

import pytest
import torch

from sglang_patches import fused_rope_kv_write

FIXES = ("triton_swa_decode_window", "cpu_router_scale")
HELD_SWA_SLOTS = 7  # SWA slots another request holds: full slot i <-> SWA slot i + 7


def store_as_the_fused_kernel(monkeypatch, full_layers_only=False):
    """Every attention layer that writes KV (or only full-attention layers) does it as the
    fused path would."""
    from sglang.srt.layers.radix_attention import RadixAttention
    from sglang.srt.models import gemma4_causal

    original = RadixAttention.forward
    writes = {"sliding": 0, "full": 0}

    def forward(self, q, k, v, forward_batch, save_kv_cache=True, **kwargs):
        sliding = (self.sliding_window_size or 0) > 0
        if k is None or not save_kv_cache or (sliding and full_layers_only):
            return original(self, q, k, v, forward_batch, save_kv_cache, **kwargs)
        # Looked up in Gemma 4's module at call time, as Gemma4Attention.forward does.
        arg = gemma4_causal.create_fused_set_kv_buffer_arg(
            value=v.reshape(v.shape[0], -1), layer=self, forward_batch=forward_batch
        )
        arg.k_buffer[arg.cache_loc] = k.reshape(k.shape[0], -1).to(arg.k_buffer.dtype)
        arg.v_buffer[arg.cache_loc] = v.reshape(v.shape[0], -1).to(arg.v_buffer.dtype)
        writes["sliding" if sliding else "full"] += 1
        return original(self, q, k, v, forward_batch, False, **kwargs)

    monkeypatch.setattr(RadixAttention, "forward", forward)
    return writes


def hold_swa_slots(monkeypatch):
    """After each pool reset, another request holds a few SWA slots, so the full -> SWA
    slot mapping is no longer the identity (in a fresh process both free lists hand out
    slots in the same order; in a running server they diverge)."""
    from sglang.srt.mem_cache.allocator.swa import SWATokenToKVPoolAllocator

    original = SWATokenToKVPoolAllocator.clear

    def clear(self):
        original(self)
        assert self.swa_attn_allocator.alloc(HELD_SWA_SLOTS) is not None

    monkeypatch.setattr(SWATokenToKVPoolAllocator, "clear", clear)


def decode_gap(run, stock):
    return [float((a - b).abs().max()) for a, b in zip(run.logits, stock.logits, strict=True)]


@pytest.fixture
def stock_with_held_slots(tiny_families, monkeypatch):
    hold_swa_slots(monkeypatch)
    stock = tiny_families.run("dense", FIXES, decode_steps=3, count_decode_step=1, fresh=True)
    assert stock.report.ok(), stock.report.step_max_abs  # the unfused path is right
    return stock


def test_root_cause_sliding_layers_written_to_full_pool_slots(
    tiny_families, monkeypatch, stock_with_held_slots
):
    writes = store_as_the_fused_kernel(monkeypatch)
    run = tiny_families.run("dense", FIXES, decode_steps=3, count_decode_step=1, fresh=True)
    assert run.patch_states["fused_rope_kv_write"] == "disabled"  # stock builder
    assert writes["sliding"] > 0 and writes["full"] > 0
    gap = decode_gap(run.generation, stock_with_held_slots.generation)
    # Prefill attends to the fresh K/V tensors, not the cache: still exact. Every decode
    # step reads the sliding layers' cache, which holds other tokens' slots.
    assert gap[0] == 0.0
    assert min(gap[1:]) > 1.0, gap


def test_full_layers_alone_are_written_correctly_by_the_stock_builder(
    tiny_families, monkeypatch, stock_with_held_slots
):
    writes = store_as_the_fused_kernel(monkeypatch, full_layers_only=True)
    run = tiny_families.run("dense", FIXES, decode_steps=3, count_decode_step=1, fresh=True)
    assert writes["full"] > 0 and writes["sliding"] == 0
    assert decode_gap(run.generation, stock_with_held_slots.generation) == [0.0] * 4


def test_patched_builder_makes_every_fused_write_exact(
    tiny_families, monkeypatch, stock_with_held_slots
):
    writes = store_as_the_fused_kernel(monkeypatch)
    run = tiny_families.run(
        "dense", ("fused_rope_kv_write", *FIXES), decode_steps=3, count_decode_step=1, fresh=True
    )
    assert run.patch_states["fused_rope_kv_write"] == "applied"
    assert writes["sliding"] > 0 and writes["full"] > 0
    assert decode_gap(run.generation, stock_with_held_slots.generation) == [0.0] * 4
    assert run.generation.tokens == stock_with_held_slots.generation.tokens


def test_builder_translates_only_sliding_layers_and_refuses_dcp(
    tiny_families, install_only, monkeypatch
):
    """Unit check on the tiny model's real pool and attention layers."""
    from types import SimpleNamespace

    from sglang.srt.model_executor.forward_context import ForwardContext, forward_context
    from sglang.srt.models import gemma4_causal

    model = tiny_families.run("dense", FIXES, decode_steps=1, count_decode_step=1).model
    pool = model.runner.token_to_kv_pool
    layers = model.decoder_layers()
    sliding = next(ly.self_attn.attn for ly in layers if ly.self_attn.attn.sliding_window_size > 0)
    full = next(ly.self_attn.attn for ly in layers if ly.self_attn.attn.sliding_window_size <= 0)
    loc = torch.tensor([3, 4, 9])
    batch = SimpleNamespace(out_cache_loc=loc, dcp_kv_mask=None)
    pool.full_to_swa_index_mapping[loc] = torch.tensor([11, 5, 20], dtype=torch.int32).to(
        pool.full_to_swa_index_mapping.dtype
    )
    value = torch.zeros(3, sliding.tp_v_head_num * sliding.v_head_dim)
    with forward_context(ForwardContext(model.runner.attn_backend)):
        # Stock: the SWA buffer of a sliding layer, addressed with full-pool slots.
        stock = gemma4_causal.create_fused_set_kv_buffer_arg(value, sliding, batch)
        assert stock.cache_loc is loc
        assert stock.k_buffer.data_ptr() == pool.get_key_buffer(sliding.layer_id).data_ptr()
    assert install_only("fused_rope_kv_write")["fused_rope_kv_write"]["state"] == "applied"
    with forward_context(ForwardContext(model.runner.attn_backend)):
        arg = gemma4_causal.create_fused_set_kv_buffer_arg(value, sliding, batch)
        assert arg.cache_loc.tolist() == [11, 5, 20]
        assert arg.k_buffer.data_ptr() == pool.get_key_buffer(sliding.layer_id).data_ptr()
        value = torch.zeros(3, full.tp_v_head_num * full.v_head_dim)
        assert gemma4_causal.create_fused_set_kv_buffer_arg(value, full, batch).cache_loc is loc
        with pytest.raises(fused_rope_kv_write.FusedKVWriteUnsupported, match="context parallel"):
            gemma4_causal.create_fused_set_kv_buffer_arg(
                value, full, SimpleNamespace(out_cache_loc=loc, dcp_kv_mask=torch.ones(3))
            )
        monkeypatch.setattr(model.runner.attn_backend, "dcp_size", 2)
        with pytest.raises(fused_rope_kv_write.FusedKVWriteUnsupported, match="context parallel"):
            gemma4_causal.create_fused_set_kv_buffer_arg(value, full, batch)

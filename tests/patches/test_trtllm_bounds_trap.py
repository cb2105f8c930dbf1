"""trtllm_bounds_trap: the check on constructed tensors, and the hook on SGLang 0.5.23's
real ``TRTLLMHAAttnBackend`` methods (run on a hand-built backend state: the backend
itself needs a GPU to construct)."""

from __future__ import annotations

import types
from pathlib import Path

import pytest
import torch

from sglang_patches.trtllm_bounds_trap import (
    PageTableOutOfBounds,
    check_cache_loc,
    check_page_table,
    first_violation,
)

PAGE = 4


def table(*rows):
    return torch.tensor(rows, dtype=torch.int32)


def test_in_range_tables_pass():
    check_page_table(
        table([0, 1, 2], [3, 4, 0]), torch.tensor([12, 9]), PAGE, 5, layer_id=0, kind="full"
    )


def test_only_live_pages_are_checked():
    # row 0 holds 5 tokens = 2 pages; the stale third entry (99) is never read
    check_page_table(table([0, 1, 99]), torch.tensor([5]), PAGE, 4, layer_id=0, kind="full")
    with pytest.raises(PageTableOutOfBounds):
        check_page_table(table([0, 1, 99]), torch.tensor([9]), PAGE, 4, layer_id=0, kind="full")


def test_empty_batch_passes():
    empty = torch.zeros(0, 8, dtype=torch.int32)
    check_page_table(empty, torch.zeros(0, dtype=torch.int32), PAGE, 4, layer_id=0, kind="swa")
    check_cache_loc(torch.zeros(0, dtype=torch.int64), 16, layer_id=0, kind="swa")
    assert first_violation(empty, 4) is None


@pytest.mark.parametrize("kind", ["full", "swa"])
@pytest.mark.parametrize("bad", [7, -1])
def test_violation_names_layer_row_index_pool_and_dumps(kind, bad):
    pt = table([0, 1, 2], [3, bad, 0])
    lens = torch.tensor([12, 8])
    with pytest.raises(PageTableOutOfBounds) as err:
        check_page_table(pt, lens, PAGE, 7, layer_id=11, kind=kind)
    message = str(err.value)
    assert f"{kind} page table of layer 11" in message
    assert f"row 1, page 1 holds index {bad}" in message
    assert "outside the pool's 7 pages" in message
    path = Path(message.rsplit("dump written to ", 1)[1])
    dump = torch.load(path)
    path.unlink()
    assert torch.equal(dump["page_table"], pt) and torch.equal(dump["seq_lens"], lens)
    assert dump["pool_pages"] == 7 and dump["layer_id"] == 11 and dump["kind"] == kind


def test_cache_loc_violation():
    check_cache_loc(torch.tensor([0, 5, 15]), 16, layer_id=2, kind="swa")
    with pytest.raises(PageTableOutOfBounds, match=r"row 2 holds slot 16, outside the pool's 16"):
        check_cache_loc(torch.tensor([0, 5, 16]), 16, layer_id=2, kind="swa")


# --------------------------------------------------------------------------------------
# the hook on the real 0.5.23 methods
# --------------------------------------------------------------------------------------
def test_off_by_default_and_on_with_the_seed_switch(monkeypatch):
    from sglang.srt.layers.attention.trtllm_mha_backend import TRTLLMHAAttnBackend

    import gemma4_kernels

    original = TRTLLMHAAttnBackend.__dict__["_get_layer_page_table"]
    rows = {r["name"]: r for r in gemma4_kernels.install()}
    assert rows["trtllm_bounds_trap"]["state"] == "disabled"
    assert TRTLLMHAAttnBackend.__dict__["_get_layer_page_table"] is original
    gemma4_kernels.revert()

    monkeypatch.setenv("SGLANG_TRTLLM_MHA_DEBUG", "1")
    rows = {r["name"]: r for r in gemma4_kernels.install()}
    assert rows["trtllm_bounds_trap"]["state"] == "applied"
    assert TRTLLMHAAttnBackend.__dict__["_get_layer_page_table"] is not original
    gemma4_kernels.revert()
    assert TRTLLMHAAttnBackend.__dict__["_get_layer_page_table"] is original


class FakeSWAPool:
    """The two things the backend reads of an SWA pool: layer -> (index, is_swa) and
    the full -> SWA slot table."""

    def __init__(self, swa_layers):
        self.layers_mapping = {i: (i, i in swa_layers) for i in range(4)}
        self.full_to_swa_index_mapping = torch.arange(64)


def fake_backend(full_tokens=32, swa_tokens=16):
    pool = types.SimpleNamespace(
        get_kv_buffer=lambda layer_id: (
            (torch.empty(swa_tokens if layer_id in (0, 1) else full_tokens, 1, 8),) * 2
        )
    )
    metadata = types.SimpleNamespace(
        page_table=table([0, 1, 7]),  # full pool: 32 / 4 = 8 pages
        swa_page_table=table([0, 3, 0]),  # SWA pool: 16 / 4 = 4 pages
        cache_seqlens_int32=torch.tensor([10], dtype=torch.int32),
        swa_out_cache_loc=torch.tensor([5, 17]),
    )
    return types.SimpleNamespace(
        forward_metadata=metadata,
        _swa_kv_pool=FakeSWAPool(swa_layers={0, 1}),
        page_size=PAGE,
        token_to_kv_pool=pool,
    )


@pytest.fixture
def trap(monkeypatch):
    import gemma4_kernels

    monkeypatch.setenv("SGLANG_TRTLLM_MHA_DEBUG", "1")
    gemma4_kernels.install()
    from sglang.srt.layers.attention.trtllm_mha_backend import TRTLLMHAAttnBackend

    return TRTLLMHAAttnBackend


def layer(layer_id):
    return types.SimpleNamespace(layer_id=layer_id)


def test_hook_checks_the_table_sglang_returns(trap):
    backend = fake_backend()
    batch = types.SimpleNamespace(out_cache_loc=torch.tensor([3, 4]))
    # SGLang picks the SWA table for layer 0 and the full table for layer 2: both in range
    assert (
        trap._get_layer_page_table(backend, layer(0), batch)
        is backend.forward_metadata.swa_page_table
    )
    assert (
        trap._get_layer_page_table(backend, layer(2), batch) is backend.forward_metadata.page_table
    )
    # page 7 is fine for the full pool (8 pages) but not for the SWA pool (4 pages)
    backend.forward_metadata.swa_page_table = table([0, 1, 7])
    with pytest.raises(PageTableOutOfBounds, match="swa page table of layer 1: row 0, page 2"):
        trap._get_layer_page_table(backend, layer(1), batch)
    trap._get_layer_page_table(backend, layer(3), batch)


def test_hook_checks_swa_write_locations(trap):
    backend = fake_backend()
    # full layer: SGLang returns out_cache_loc (in range of the 32-slot full pool)
    full = types.SimpleNamespace(out_cache_loc=torch.tensor([3, 20]))
    assert torch.equal(trap._get_layer_cache_loc(backend, layer(2), full), full.out_cache_loc)
    # SWA layer: SGLang returns the translated locations, slot 17 >= 16
    with pytest.raises(PageTableOutOfBounds, match="swa KV write location of layer 0"):
        trap._get_layer_cache_loc(backend, layer(0), full)


def test_nothing_is_checked_inside_a_cuda_graph_capture(trap, monkeypatch):
    from sglang_patches import trtllm_bounds_trap

    monkeypatch.setattr(trtllm_bounds_trap, "_capturing", lambda: True)
    backend = fake_backend()
    backend.forward_metadata.page_table = table([0, 1, 99])
    batch = types.SimpleNamespace(out_cache_loc=torch.tensor([3]))
    assert (
        trap._get_layer_page_table(backend, layer(2), batch) is backend.forward_metadata.page_table
    )

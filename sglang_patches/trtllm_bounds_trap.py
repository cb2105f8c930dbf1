"""trtllm_bounds_trap — opt-in (``SGLANG_TRTLLM_MHA_DEBUG=1``): check every page table
and SWA write location the trtllm_mha backend hands its kernels against the pool.

Seed 002 PR #3: on trtllm_mha with MTP and near-full SWA pools, out-of-range page
indices reached the attention kernel and crashed the GPU with an *asynchronous*
illegal-address error — no Python stack, no culprit. With the switch on, each page
table the backend returns for a layer (``_get_layer_page_table``, map §9: read by
``forward_decode`` and ``forward_extend``) and each translated SWA write location
(``_get_layer_cache_loc``) is checked before the launch; a violation raises
:class:`PageTableOutOfBounds` naming layer, row, index and pool size, after writing a
dump (page table, sequence lengths, pool sizes) to the file the message names.

Only the live part of a row is checked: row ``r`` holds ``ceil(seq_len[r] / page_size)``
pages, the kernel reads no further (the rest of the static-width buffer is stale by
design). Inside a CUDA-graph capture nothing is checked (the check syncs). Off by
default; when off the patch is not applied at all, so it costs nothing.
"""

from __future__ import annotations

import itertools
import os
import tempfile
from typing import Any

from sglang_patches.base import CheckResult, EnvSwitch, Patch, Pin, UndoLog, verify_pins

BACKEND = "sglang.srt.layers.attention.trtllm_mha_backend.TRTLLMHAAttnBackend"
SWITCH = EnvSwitch("SGLANG_TRTLLM_MHA_DEBUG", "seed 002's opt-in page-table bounds check")
_dump_numbers = itertools.count()


class PageTableOutOfBounds(RuntimeError):
    """An index handed to trtllm_mha lies outside the KV pool it addresses."""


def first_violation(table: Any, limit: int, live_counts: Any | None = None) -> tuple | None:
    """``(row, column, value)`` of the first entry outside ``[0, limit)``, or None.

    ``table``: [rows, cols] (or [n] with ``live_counts`` None: every entry is live);
    ``live_counts``: per row, how many leading entries the kernel reads.
    """
    import torch

    if table.numel() == 0:
        return None
    grid = table if table.dim() == 2 else table.view(1, -1)
    bad = (grid < 0) | (grid >= limit)
    if live_counts is not None:
        columns = torch.arange(grid.shape[1], device=grid.device)
        bad &= columns.unsqueeze(0) < live_counts.to(grid.device).unsqueeze(1)
    if not bool(bad.any()):
        return None
    row, column = (int(i) for i in bad.nonzero()[0])
    if table.dim() == 1:
        return 0, column, int(grid[0, column])
    return row, column, int(grid[row, column])


def write_dump(**tensors: Any) -> str:
    """Save the evidence next to nothing else: a fresh file in the temp directory."""
    import torch

    path = os.path.join(
        tempfile.gettempdir(),
        f"gemma4_kernels_trtllm_oob_{os.getpid()}_{next(_dump_numbers)}.pt",
    )
    torch.save(
        {k: v.detach().cpu() if hasattr(v, "detach") else v for k, v in tensors.items()}, path
    )
    return path


def check_page_table(
    table, seq_lens, page_size: int, pool_pages: int, *, layer_id: int, kind: str
) -> None:
    """Raise :class:`PageTableOutOfBounds` (after a dump) if a live entry is out of range."""
    live = (seq_lens.to(table.device).long() + page_size - 1) // page_size
    hit = first_violation(table, pool_pages, live)
    if hit is None:
        return
    row, column, value = hit
    path = write_dump(
        page_table=table,
        seq_lens=seq_lens,
        page_size=page_size,
        pool_pages=pool_pages,
        layer_id=layer_id,
        kind=kind,
    )
    raise PageTableOutOfBounds(
        f"trtllm_mha {kind} page table of layer {layer_id}: row {row}, page {column} holds "
        f"index {value}, outside the pool's {pool_pages} pages (page_size {page_size}); "
        f"dump written to {path}"
    )


def check_cache_loc(loc, pool_tokens: int, *, layer_id: int, kind: str) -> None:
    """Raise :class:`PageTableOutOfBounds` (after a dump) if a write slot is out of range."""
    hit = first_violation(loc, pool_tokens)
    if hit is None:
        return
    _, index, value = hit
    path = write_dump(cache_loc=loc, pool_tokens=pool_tokens, layer_id=layer_id, kind=kind)
    raise PageTableOutOfBounds(
        f"trtllm_mha {kind} KV write location of layer {layer_id}: row {index} holds slot "
        f"{value}, outside the pool's {pool_tokens} slots; dump written to {path}"
    )


def _capturing() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


class TrtllmBoundsTrap(Patch):
    name = "trtllm_bounds_trap"
    purpose = (
        "opt-in (SGLANG_TRTLLM_MHA_DEBUG=1): trtllm_mha page tables and SWA write slots "
        "checked against the pool before launch; a Python error + dump instead of an "
        "illegal address"
    )
    targets = (f"{BACKEND}._get_layer_page_table", f"{BACKEND}._get_layer_cache_loc")
    default_on = False
    switch = SWITCH

    pins = (
        Pin(f"{BACKEND}._get_layer_page_table", "4dbd10928d9851c3"),
        Pin(f"{BACKEND}._get_layer_cache_loc", "ae2b2ccf300a7234"),
    )

    def check(self) -> CheckResult:
        return verify_pins(self.pins)

    @staticmethod
    def layer_kind(backend: Any, layer: Any) -> str:
        pool = backend._swa_kv_pool
        if pool is not None and pool.layers_mapping[layer.layer_id][1]:
            return "swa"
        return "full"

    @staticmethod
    def pool_tokens(backend: Any, layer: Any) -> int:
        """Slots of the KV buffer the kernel addresses for ``layer``."""
        k_cache, _ = backend.token_to_kv_pool.get_kv_buffer(layer.layer_id)
        return int(k_cache.shape[0])

    def _apply(self, undo: UndoLog) -> None:
        import functools

        from sglang.srt.layers.attention.trtllm_mha_backend import TRTLLMHAAttnBackend

        patch = self
        original_table = TRTLLMHAAttnBackend.__dict__["_get_layer_page_table"]
        original_loc = TRTLLMHAAttnBackend.__dict__["_get_layer_cache_loc"]

        @functools.wraps(original_table)
        def _get_layer_page_table(backend, layer, forward_batch):
            table = original_table(backend, layer, forward_batch)
            if not _capturing():
                check_page_table(
                    table,
                    backend.forward_metadata.cache_seqlens_int32,
                    backend.page_size,
                    patch.pool_tokens(backend, layer) // backend.page_size,
                    layer_id=layer.layer_id,
                    kind=patch.layer_kind(backend, layer),
                )
            return table

        @functools.wraps(original_loc)
        def _get_layer_cache_loc(backend, layer, forward_batch):
            loc = original_loc(backend, layer, forward_batch)
            if not _capturing():
                check_cache_loc(
                    loc,
                    patch.pool_tokens(backend, layer),
                    layer_id=layer.layer_id,
                    kind=patch.layer_kind(backend, layer),
                )
            return loc

        undo.set_attr(TRTLLMHAAttnBackend, "_get_layer_page_table", _get_layer_page_table)
        undo.set_attr(TRTLLMHAAttnBackend, "_get_layer_cache_loc", _get_layer_cache_loc)


PATCH = TrtllmBoundsTrap()

"""triton_swa_decode_window through SGLang's real Gemma 4 forward on CPU vs HF.

Stock 0.5.23 is exact until a request's KV length reaches the window (8), then off by
~1-7 logits; the patch restores parity, on the eager path and on the CUDA-graph buffer
path (decode metadata from the graph buffers, run eagerly: no capture on CPU).
"""

from __future__ import annotations

import inspect

import pytest

from gemma4_kernels.harness.parity import PARITY_ATOL
from sglang_patches import triton_swa_decode_window

WINDOW = 8
PATCH = ("triton_swa_decode_window",)
PATHS = ["eager", "cuda_graph_buffers"]


def inside_window(kv_len: int) -> bool:
    return kv_len < WINDOW


def past_window(kv_len: int) -> bool:
    return kv_len >= WINDOW


@pytest.mark.parametrize("path", PATHS)
def test_stock_decode_drops_a_key_past_the_window(tiny_families, path):
    report = tiny_families.run("dense", decode_metadata=path).report
    assert report.prefill_max_abs <= PARITY_ATOL
    assert report.decode_max_abs_where(inside_window) <= PARITY_ATOL
    assert report.decode_max_abs_where(past_window) > 0.5, report.step_max_abs


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("family", ["dense", "e2b"])
def test_patched_decode_matches_hf_well_past_the_window(tiny_families, family, path):
    run = tiny_families.run(family, PATCH, decode_metadata=path)
    assert run.patch_states["triton_swa_decode_window"] == "applied"
    assert max(max(kv) for kv in run.report.kv_lens) >= WINDOW + 8
    assert run.report.ok(), run.report.step_max_abs


def test_cuda_graph_window_buffer_holds_the_full_window(tiny_families, install_only):
    """init_cuda_graph_state sizes the window-index buffer for `window` keys per token."""
    model = tiny_families.run("dense", fresh=True).model  # a backend of its own to resize
    backend = model.runner.attn_backend
    radius = backend.sliding_window_size
    assert radius == WINDOW - 1  # SGLang stores the window as a radius
    backend.init_cuda_graph_state(4, 4)
    assert backend.cuda_graph_window_kv_indices.numel() == 4 * radius  # stock: one short
    install_only(*PATCH)
    backend.init_cuda_graph_state(4, 4)
    assert backend.cuda_graph_window_kv_indices.numel() == 4 * WINDOW
    assert backend.sliding_window_size == radius  # widening is scoped to the call


def test_widening_is_scoped_and_reentrant():
    class Backend:
        sliding_window_size = 7

    backend = Backend()
    with triton_swa_decode_window.widened_window(backend):
        assert backend.sliding_window_size == 8
        with triton_swa_decode_window.widened_window(backend):
            assert backend.sliding_window_size == 8
        assert backend.sliding_window_size == 8
    assert backend.sliding_window_size == 7
    backend.sliding_window_size = None  # full-attention-only models: nothing to widen
    with triton_swa_decode_window.widened_window(backend):
        assert backend.sliding_window_size is None


def test_an_upstream_fix_is_reported_as_upstream(monkeypatch):
    from sglang.srt.layers.attention import triton_backend

    original = triton_backend.update_sliding_window_buffer

    def fixed(*args, include_current_token=False, **kwargs):
        return original(*args, **kwargs)

    assert "include_current_token" not in inspect.signature(original).parameters
    monkeypatch.setattr(triton_backend, "update_sliding_window_buffer", fixed)
    result = triton_swa_decode_window.PATCH.check()
    assert result.upstream and "include_current_token" in result.reason

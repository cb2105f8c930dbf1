"""triton_swa_decode_window — the Triton backend's decode attends to the full window.

SGLang stores a sliding window as a radius (``sliding_window_size = window - 1``; a
query at position p sees keys [p - radius, p], i.e. ``window`` keys, as HF and the
FlashInfer/FA backends do). The Triton backend's decode path gathers
``min(seq_len, radius)`` keys — one short — and its decode kernel applies no
per-query mask, so past the window every decode step drops the oldest in-window
key while prefill (whose extend kernel masks per query) is right. On the tiny
Gemma 4 models the first decode step past the window was off by up to ~7 in the
logits. An upstream fix (sgl-project/sglang#32087) was closed unmerged. Affects
every sliding-window model on the Triton backend, on GPU too (same Python).

Fix: while the backend builds *decode* metadata — the eager path
(``init_forward_metadata`` in decode mode) and the CUDA-graph capture/replay path
(``_update_decode_kv_buffers``) — the window is widened by one key; the CUDA-graph
window-index buffer is sized for that extra key (``init_cuda_graph_state``).
Extend, verify and draft paths are untouched (they read the prefix window, where
the radius is the right count). SGLang's SWA eviction already keeps the W-th key
(``free_swa_out_of_window_slots`` frees below ``pre_len - radius``).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sglang_patches.base import CheckResult, Patch, Pin, UndoLog, verify_pins

BACKEND = "sglang.srt.layers.attention.triton_backend"
_WIDENED = "_gemma4_kernels_window_widened"


@contextmanager
def widened_window(backend: Any) -> Iterator[None]:
    """``backend.sliding_window_size + 1`` for the duration; re-entrant, restored exactly."""
    size = backend.sliding_window_size
    if getattr(backend, _WIDENED, False) or size is None or size <= 0:
        yield
        return
    backend.sliding_window_size = size + 1
    setattr(backend, _WIDENED, True)
    try:
        yield
    finally:
        backend.sliding_window_size = size
        setattr(backend, _WIDENED, False)


class TritonSwaDecodeWindow(Patch):
    name = "triton_swa_decode_window"
    purpose = "Triton backend decode attends to all `window` keys of a sliding window, not window-1"
    targets = (f"{BACKEND}.TritonAttnBackend",)

    pins = (
        Pin(f"{BACKEND}.TritonAttnBackend.init_forward_metadata", "cb1dd35087bc0d9f"),
        Pin(f"{BACKEND}.TritonAttnBackend._update_decode_kv_buffers", "887a12a87533f03f"),
        Pin(f"{BACKEND}.TritonAttnBackend.init_cuda_graph_state", "f1ac026603c0c5ee"),
        Pin(f"{BACKEND}.update_sliding_window_buffer", "4e495713bb1e36a8"),
        # The eviction rule that must keep the extra key alive.
        Pin("sglang.srt.mem_cache.common.free_swa_out_of_window_slots", "438b20d2778d5aed"),
    )

    def check(self) -> CheckResult:
        try:
            from sglang.srt.layers.attention import triton_backend
        except ImportError as exc:
            return CheckResult.skip(f"{BACKEND} does not import ({exc})")
        params = inspect.signature(triton_backend.update_sliding_window_buffer).parameters
        if "include_current_token" in params:  # the shape of the fix proposed in #32087
            return CheckResult.fixed_upstream(
                "update_sliding_window_buffer takes include_current_token (decode window fixed)"
            )
        result = verify_pins(self.pins)
        if not result.ok:
            return CheckResult.skip(
                result.reason + "; check whether SGLang fixed the decode window (see #32087)"
            )
        return result

    def _apply(self, undo: UndoLog) -> None:
        from sglang.srt.layers.attention.triton_backend import TritonAttnBackend

        def decode_only(original: Callable) -> Callable:
            @functools.wraps(original)
            def init_forward_metadata(backend: Any, forward_batch: Any) -> Any:
                if not forward_batch.forward_mode.is_decode_or_idle():
                    return original(backend, forward_batch)
                with widened_window(backend):
                    return original(backend, forward_batch)

            return init_forward_metadata

        def always(original: Callable) -> Callable:
            @functools.wraps(original)
            def wrapper(backend: Any, *args: Any, **kwargs: Any) -> Any:
                with widened_window(backend):
                    return original(backend, *args, **kwargs)

            return wrapper

        namespace = TritonAttnBackend.__dict__
        undo.set_attr(
            TritonAttnBackend,
            "init_forward_metadata",
            decode_only(namespace["init_forward_metadata"]),
        )
        for name in ("_update_decode_kv_buffers", "init_cuda_graph_state"):
            undo.set_attr(TritonAttnBackend, name, always(namespace[name]))


PATCH = TritonSwaDecodeWindow()

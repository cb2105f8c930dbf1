"""yoco_fast_prefill — E2B/E4B prefill runs the KV-shared layers on each request's last row.

Gemma 4 E2B (35 layers) and E4B (42) end in 20 / 18 layers that reuse KV written by
earlier layers: in a prefill they write no KV, and the only rows of theirs that reach
anything are each request's last token (the logits processor takes ``cumsum(
extend_seq_lens) - 1``). SGLang 0.5.23 still runs every prompt token through them (map
§10). Seed 002 (vLLM #22628, #38879: "YOCO fast prefill") measured 1.51x prefill
throughput on E2B and 1.30x on E4B by truncating.

How, without replacing SGLang's layer loop:

* ``Gemma4TextModel.forward`` (wrapped) decides eligibility once per forward and opens a
  scope. ``Gemma4DecoderLayer.forward`` (wrapped) does the work at the first KV-shared
  layer: keep rows ``idx = cumsum(extend_seq_lens) - 1``, rewrite the ForwardBatch to a
  "one new token per request, prefix = seq_len - 1" view (extend lengths/prefix lengths
  and their CPU copies, start locations, token counts, ``input_ids``, ``positions``,
  ``out_cache_loc``, and ``kv_loc_cols = idx`` so the sliding layers' SWA write slots
  are the kept rows'), rebuild the attention metadata for it, and re-register the short
  stream with the residual stream (``set_written``). Every shared layer gets its rows
  of ``positions`` and per-layer input. After the last layer the rows are scattered back
  into the full stream (other rows keep the stream from before the shared layers; no
  one reads them), every ForwardBatch field and the backend's metadata (including the
  indptr buffers it rewrites in place) are restored, and the full stream is
  re-registered.
* Falls back to the full path (counted in ``fallbacks``; logged at debug level):
  no KV-shared layers; not a plain EXTEND batch (decode, mixed, verify, draft, idle);
  speculative info; input-token logprobs; hidden-state capture (full or aux layers);
  scoring/pooling batches; pipeline parallel > 1; DP attention / two-batch overlap /
  context parallel; every request extending by one token; prefill CUDA-graph capture or
  ``torch.compile`` tracing; a backend other than Triton's (its metadata rebuild is the
  one read and tested).

Switches: the patch switch, and the seed's ``SGLANG_GEMMA4_YOCO=0``.
"""

from __future__ import annotations

import contextvars
import functools
import logging
from collections import Counter
from typing import Any

from sglang_patches.base import (
    CheckResult,
    EnvSwitch,
    Parallelism,
    Patch,
    Pin,
    UndoLog,
    verify_pins,
)

logger = logging.getLogger("gemma4_kernels")

MODEL = "sglang.srt.models.gemma4_causal"
BACKEND = "sglang.srt.layers.attention.triton_backend"

# ForwardBatch fields the short view replaces (by new objects; restored by reference).
VIEW_FIELDS = (
    "input_ids",
    "positions",
    "out_cache_loc",
    "out_cache_loc_virtual",
    "kv_loc_cols",
    "extend_num_tokens",
    "extend_seq_lens",
    "extend_seq_lens_cpu",
    "extend_prefix_lens",
    "extend_prefix_lens_cpu",
    "extend_start_loc",
    "extend_logprob_start_lens_cpu",
    "global_num_token_non_padded_cpu",
    "num_token_non_padded",
)
# Backend buffers init_forward_metadata rewrites in place (the metadata holds views).
INDPTR_BUFFERS = ("kv_indptr", "qo_indptr", "window_kv_indptr")

_active: contextvars.ContextVar[_Yoco | None] = contextvars.ContextVar("yoco", default=None)


def first_shared_layer(config: Any) -> int | None:
    shared = getattr(config, "num_kv_shared_layers", 0) or 0
    return config.num_hidden_layers - shared if shared > 0 else None


class _Yoco:
    """One eligible forward: the short view, entered at the first shared layer."""

    def __init__(self, model: Any, fb: Any, backend: Any, first: int) -> None:
        self.model, self.fb, self.backend = model, fb, backend
        self.first, self.last = first, model.end_layer - 1
        self.idx = None
        self.full = None
        self.saved: dict[str, Any] = {}

    def enter(self, hidden_states: Any) -> Any:
        import torch
        from sglang.srt.layers.layer_boundary.residual import batch as residual_batch

        fb, backend = self.fb, self.backend
        bs = fb.batch_size
        self.idx = idx = torch.cumsum(fb.extend_seq_lens, dim=0) - 1
        self.full = hidden_states
        self.saved = {name: getattr(fb, name) for name in VIEW_FIELDS}
        self.saved_meta = backend.forward_metadata
        self.saved_buffers = {
            name: getattr(backend, name)[: bs + 1].clone()
            for name in INDPTR_BUFFERS
            if getattr(backend, name, None) is not None
        }
        self.saved_one_shot = getattr(backend, "_dense_one_shot_kv_indptr", None)
        # New prefix = old prefix + extend - 1 (seq_lens_cpu may be absent on GPU paths).
        prefix_cpu = [
            p + e - 1
            for p, e in zip(fb.extend_prefix_lens_cpu, fb.extend_seq_lens_cpu, strict=True)
        ]
        fb.input_ids = fb.input_ids[idx]
        fb.positions = fb.positions[idx]
        fb.out_cache_loc = fb.out_cache_loc[idx]
        if fb.out_cache_loc_virtual is not None:
            fb.out_cache_loc_virtual = fb.out_cache_loc_virtual[idx]
        fb.kv_loc_cols = idx  # columns of the batch's KV write plan: the kept rows' slots
        fb.extend_num_tokens = bs
        fb.extend_seq_lens = torch.ones_like(fb.extend_seq_lens)
        fb.extend_seq_lens_cpu = [1] * bs
        fb.extend_prefix_lens = self.saved["extend_prefix_lens"] + self.saved["extend_seq_lens"] - 1
        fb.extend_prefix_lens_cpu = prefix_cpu
        fb.extend_start_loc = torch.arange(bs, dtype=fb.extend_start_loc.dtype, device=idx.device)
        if fb.extend_logprob_start_lens_cpu is not None:
            fb.extend_logprob_start_lens_cpu = [1] * bs  # = the extend length: no logprobs
        if fb.global_num_token_non_padded_cpu is not None:
            fb.global_num_token_non_padded_cpu = bs
        if fb.num_token_non_padded is not None:
            fb.num_token_non_padded = torch.full_like(fb.num_token_non_padded, bs)
        backend.init_forward_metadata(fb)
        short = hidden_states[idx]
        fusion = _layer_boundary_fusion()
        if fusion is not None:
            fusion.reselect_rows(hidden_states, short, idx)
        residual_batch.set_written(short, fb)
        return short

    def restore(self) -> None:
        fb, backend = self.fb, self.backend
        for name, value in self.saved.items():
            setattr(fb, name, value)
        for name, value in self.saved_buffers.items():
            getattr(backend, name)[: value.shape[0]].copy_(value)
        backend.forward_metadata = self.saved_meta
        if hasattr(backend, "_dense_one_shot_kv_indptr"):
            backend._dense_one_shot_kv_indptr = self.saved_one_shot
        self.saved = {}

    def leave(self, short: Any) -> Any:
        from sglang.srt.layers.layer_boundary.residual import batch as residual_batch

        out = self.full.index_copy(0, self.idx, short)
        self.restore()
        fusion = _layer_boundary_fusion()
        if fusion is not None:
            fusion.discard(short)  # the final norm reads the full stream: it runs itself
        residual_batch.set_written(out, self.fb)
        return out


def _layer_boundary_fusion() -> Any:
    from sglang_patches import layer_boundary_fusion

    patch = layer_boundary_fusion.PATCH
    return patch if patch.applied else None


class YocoFastPrefill(Patch):
    name = "yoco_fast_prefill"
    purpose = "E2B/E4B prefill: KV-shared layers run only each request's last row (YOCO)"
    targets = (f"{MODEL}.Gemma4TextModel.forward", f"{MODEL}.Gemma4DecoderLayer.forward")
    switch = EnvSwitch(
        "SGLANG_GEMMA4_YOCO", "the seed's kill switch: 0 turns YOCO fast prefill off"
    )
    parallel = Parallelism(pp=False)

    pins = (
        Pin(f"{MODEL}.Gemma4TextModel.forward", "3910877ea2a90526"),
        Pin(f"{MODEL}.Gemma4DecoderLayer.forward", "487361dcb6414aea"),
        Pin(f"{MODEL}.Gemma4Attention.__init__", "e521bdf0650169e9"),  # is_kv_shared_layer rule
        Pin(f"{BACKEND}.TritonAttnBackend.init_forward_metadata", "cb1dd35087bc0d9f"),
        Pin(
            "sglang.srt.layers.logits_processor.LogitsProcessor._get_pruned_states",
            "fd309cf7f24f94fe",
        ),
    )

    def __init__(self) -> None:
        super().__init__()
        self.stats: Counter[str] = Counter()

    def check(self) -> CheckResult:
        return verify_pins(self.pins)

    def ineligible(self, model: Any, fb: Any) -> str | None:
        """Why this forward takes the full path, or None."""
        import torch
        from sglang.srt.layers.attention.triton_backend import TritonAttnBackend
        from sglang.srt.model_executor.forward_batch_info import CaptureHiddenMode, ForwardMode
        from sglang.srt.model_executor.forward_context import get_attn_backend
        from sglang.srt.model_executor.runner_utils.prefill_graph import (
            is_in_prefill_graph_scope,
        )

        first = first_shared_layer(model.config)
        lens = fb.extend_seq_lens_cpu
        checks = (
            (first is not None, "no KV-shared layers"),
            (fb.forward_mode == ForwardMode.EXTEND, "not a plain EXTEND batch"),
            (getattr(fb, "spec_info", None) is None, "speculative batch"),
            (model.pp_group.world_size == 1, "pipeline parallel"),
            (first is None or model.start_layer <= first < model.end_layer, "layer range"),
            (not is_in_prefill_graph_scope(), "prefill CUDA-graph capture"),
            (not torch.compiler.is_compiling(), "torch.compile tracing"),
            (not fb.return_logprob, "input-token logprobs requested"),
            (
                fb.capture_hidden_mode in (None, CaptureHiddenMode.NULL)
                and not model.layers_to_capture,
                "hidden states captured",
            ),
            (
                getattr(fb, "token_indices_to_pool", None) is None
                and getattr(fb, "multi_item_delimiter_indices", None) is None,
                "scoring / pooling batch",
            ),
            (
                getattr(fb, "global_num_tokens_cpu", None) is None
                and getattr(fb, "tbo_split_seq_index", None) is None
                and getattr(fb, "attn_cp_metadata", None) is None,
                "DP attention / two-batch overlap / context parallel",
            ),
            (getattr(fb, "kv_loc_cols", None) is None, "KV write columns already set"),
            (lens is not None and max(lens, default=1) > 1, "every request extends by one"),
            (fb.extend_prefix_lens_cpu is not None, "no CPU prefix lengths"),
            (isinstance(get_attn_backend(), TritonAttnBackend), "attention backend not Triton"),
        )
        for ok, reason in checks:
            if not ok:
                return reason
        return None

    def _apply(self, undo: UndoLog) -> None:
        from sglang.srt.model_executor.forward_context import get_attn_backend
        from sglang.srt.models.gemma4_causal import Gemma4DecoderLayer, Gemma4TextModel

        self.stats.clear()
        model_forward = Gemma4TextModel.__dict__["forward"]
        layer_forward = Gemma4DecoderLayer.__dict__["forward"]
        patch = self

        @functools.wraps(model_forward)
        def forward(model, input_ids, positions, forward_batch, *args, **kwargs):
            first = first_shared_layer(model.config)
            if first is None:
                return model_forward(model, input_ids, positions, forward_batch, *args, **kwargs)
            reason = patch.ineligible(model, forward_batch)
            if reason is not None:
                patch.stats[f"fallback: {reason}"] += 1
                logger.debug("gemma4-kernels: yoco_fast_prefill full path: %s", reason)
                return model_forward(model, input_ids, positions, forward_batch, *args, **kwargs)
            state = _Yoco(model, forward_batch, get_attn_backend(), first)
            token = _active.set(state)
            try:
                out = model_forward(model, input_ids, positions, forward_batch, *args, **kwargs)
            finally:
                _active.reset(token)
                if state.saved:  # an exception inside the shared layers
                    state.restore()
            patch.stats["yoco prefills"] += 1
            patch.stats["rows entering shared layers"] += forward_batch.batch_size
            patch.stats["rows of the batch"] += int(forward_batch.extend_num_tokens)
            return out

        @functools.wraps(layer_forward)
        def layer(layer, positions, hidden_states, per_layer_input, forward_batch, *a, **kw):
            state = _active.get()
            if state is None or layer.layer_id < state.first or forward_batch is not state.fb:
                return layer_forward(layer, positions, hidden_states, per_layer_input,
                                     forward_batch, *a, **kw)  # fmt: skip
            if layer.layer_id == state.first:
                hidden_states = state.enter(hidden_states)
            idx = state.idx
            out = layer_forward(
                layer,
                positions[idx],
                hidden_states,
                per_layer_input[idx] if per_layer_input is not None else None,
                forward_batch,
                *a,
                **kw,
            )
            return state.leave(out) if layer.layer_id == state.last else out

        undo.set_attr(Gemma4TextModel, "forward", forward)
        undo.set_attr(Gemma4DecoderLayer, "forward", layer)


PATCH = YocoFastPrefill()

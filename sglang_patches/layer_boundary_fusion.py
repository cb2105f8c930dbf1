"""layer_boundary_fusion — a Gemma 4 layer's tail and the next layer's input norm in one launch.

SGLang 0.5.23 ends every dense (31B) layer with ``(post_ff_norm(mlp_out) + residual) *
layer_scalar`` (one fused Triton kernel on CUDA, ``gemma_rmsnorm_residual_scalar``) and
every E2B/E4B layer with the same step over the per-layer-embedding projection (our
``ple_tail`` runs it as ``rmsnorm_residual_scalar``). The result is written to the
residual stream at the FFN exit (``REPLACE_AT_EXIT``); the next layer's attention entry
then reads it back and runs ``input_layernorm`` on it (``NormReadout.read`` ->
``norm(residual)``), and after the last layer ``final_norm`` runs the model norm on it
(``final_norm_pair`` -> ``norm(hidden)``): a second launch over the same row.
``gemma4::layer_tail_next_norm`` produces both (TensorRT-LLM#13013 fuses this chain).

How it is wired without changing SGLang's stream contract:

* ``Gemma4TextModel.forward`` opens a scope listing, for each local layer, the norm that
  consumes its output (next layer's ``input_layernorm``; the final norm after the last
  layer of the last pipeline rank; none otherwise).
* The layer's tail (``Gemma4DecoderLayer._next_stream`` for dense layers; the
  ``gemma4_layers.layer_tail`` seam for ``ple_tail``) runs the fused op, returns the new
  stream unchanged in value and records ``(stream tensor, normed)`` for that norm.
* For the duration of the scope the consuming norm modules answer a call whose input
  **is** (identity) the recorded tensor with the recorded result; any other input —
  rows the boundary gathered, scattered or copied, a capture — runs the module as usual
  (counted as a miss). So the value every consumer sees is what SGLang computes, up to
  fp32 reduction order.

Not fused (SGLang's path, counted): MoE layers (their tail is the dual-norm kernel
``gemma_dual_rmsnorm_residual_scalar``), non-plain norms, unequal eps, non-2-D rows,
layers outside a Gemma 4 text-model forward (e.g. a drafter's own layers), and anything
traced by ``torch.compile`` (the scope swaps module attributes, which a trace must not see).
"""

from __future__ import annotations

import contextlib
import functools
import threading
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from sglang_patches import gemma4_layers
from sglang_patches.base import CheckResult, Patch, Pin, UndoLog, verify_pins
from sglang_patches.gemma4_layers import plain_rmsnorm, rows_2d

MODEL = "sglang.srt.models.gemma4_causal"
RESIDUAL = "sglang.srt.layers.layer_boundary.residual"


@dataclass
class _Scope:
    """One text-model forward: who consumes each layer's output, and what is ready for it."""

    consumer: dict[int, Any]  # id(layer) -> the norm module reading its output
    ready: dict[int, tuple[Any, Any]] = field(default_factory=dict)  # id(norm) -> (x, normed)


class LayerBoundaryFusion(Patch):
    name = "layer_boundary_fusion"
    purpose = (
        "dense and PLE Gemma 4 layers: the layer tail and the next layer's input norm "
        "(or the final norm) in one launch (2 -> 1 per layer)"
    )
    targets = (
        f"{MODEL}.Gemma4TextModel.forward",
        f"{MODEL}.Gemma4DecoderLayer._next_stream",
        "sglang_patches.gemma4_layers.layer_tail",
    )

    pins = (
        Pin(f"{MODEL}.Gemma4TextModel.forward", "3910877ea2a90526"),
        Pin(f"{MODEL}.Gemma4DecoderLayer.forward", "487361dcb6414aea"),
        Pin(f"{MODEL}.Gemma4DecoderLayer._next_stream", "67f3446b26420c33"),
        # The consumers' calls: ReplaceAtExit hands the written stream to the next
        # entry's read, which calls norm(stream); final_norm calls norm(hidden).
        Pin(f"{RESIDUAL}.add_norm.ReplaceAtExit.update", "9cde2d2ec01b6c2d"),
        Pin(f"{RESIDUAL}.add_norm.NormReadout.read", "1af0a387b90e639e"),
        Pin(f"{RESIDUAL}.access.final_norm_pair", "f25d03ac0a0ed83f"),
        Pin("sglang.srt.layers.layernorm.RMSNorm.forward_native", "44cb760bd8dca804"),
    )

    def __init__(self) -> None:
        super().__init__()
        self._local = threading.local()  # .scopes: stack of _Scope (nested forwards)
        self._consumers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self.served = 0  # fused results a consumer took (tests read these)
        self.missed = 0

    def check(self) -> CheckResult:
        return verify_pins(self.pins)

    # --- the scope of one text-model forward ---------------------------------------------
    def _scope(self) -> _Scope | None:
        scopes = getattr(self._local, "scopes", None)
        return scopes[-1] if scopes else None

    def consumers(self, model: Any) -> dict[int, Any]:
        """id(layer) -> the norm reading that layer's output, for ``model``'s local layers."""
        cached = self._consumers.get(model)
        if cached is not None:
            return cached
        layers = model.layers
        start, end = model.start_layer, model.end_layer
        consumer: dict[int, Any] = {}
        for index in range(start, end):
            if index + 1 < end:
                consumer[id(layers[index])] = layers[index + 1].input_layernorm
            elif model.pp_group.is_last_rank:
                consumer[id(layers[index])] = model.norm
        self._consumers[model] = consumer
        return consumer

    @contextlib.contextmanager
    def forward_scope(self, model: Any) -> Iterator[None]:
        scope = _Scope(self.consumers(model))
        norms = {id(n): n for n in scope.consumer.values()}
        stack = self._local.__dict__.setdefault("scopes", [])
        stack.append(scope)
        for norm in norms.values():
            norm.forward = self._serving_forward(norm, scope)  # instance attr, removed below
        try:
            yield
        finally:
            for norm in norms.values():
                del norm.forward
            stack.pop()
            scope.ready.clear()

    def _serving_forward(self, norm: Any, scope: _Scope) -> Any:
        bound = type(norm).forward.__get__(norm)
        patch = self

        def forward(x, *args, **kwargs):
            ready = scope.ready.pop(id(norm), None)
            if ready is not None:
                if ready[0] is x and not args and not kwargs:
                    patch.served += 1
                    return ready[1]
                patch.missed += 1
                patch.fallback("the next norm read another tensor than the layer wrote")
            return bound(x, *args, **kwargs)

        return forward

    def reselect_rows(self, old: Any, new: Any, rows: Any) -> None:
        """The stream ``old`` continues as ``new = old[rows]`` (yoco_fast_prefill): the
        norm waiting for ``old`` is served the same rows of its prepared result."""
        scope = self._scope()
        for key, (x, normed) in list(scope.ready.items()) if scope else ():
            if x is old:
                scope.ready[key] = (new, normed[rows])

    def discard(self, stream: Any) -> None:
        """Nothing is prepared for ``stream`` any more: its consumer runs itself, uncounted
        (yoco_fast_prefill scatters the rows back into a larger stream)."""
        scope = self._scope()
        for key, (x, _) in list(scope.ready.items()) if scope else ():
            if x is stream:
                del scope.ready[key]

    # --- the fused tail -------------------------------------------------------------------
    def consumer_norm(self, layer: Any, x: Any, residual: Any, eps: float) -> Any | None:
        """(weight, norm module) of the norm that will read this layer's output, if fusable."""
        scope = self._scope()
        if scope is None:
            return None
        norm = scope.consumer.get(id(layer))
        if norm is None:
            return None
        plain = plain_rmsnorm(norm)
        if plain is None or plain[1] != eps:
            self.fallback("the next norm is not a plain RMSNorm with the tail's eps")
            return None
        if not rows_2d(x, residual) or x.shape != residual.shape:
            self.fallback("layer tail inputs are not matching 2-D rows")
            return None
        return plain[0], norm

    def fused_tail(self, layer: Any, x: Any, weight: Any, residual: Any, eps: float) -> Any:
        from gemma4_kernels.ops.layer_tail_next_norm import layer_tail_next_norm

        target = self.consumer_norm(layer, x, residual, eps)
        if target is None:
            return self._plain_tail(layer, x, weight, residual, eps)
        w_next, norm = target
        new, normed = layer_tail_next_norm(x, weight, residual, layer.layer_scalar, w_next, eps)
        self._scope().ready[id(norm)] = (new, normed)
        return new

    def _apply(self, undo: UndoLog) -> None:
        from sglang.srt.layers.layer_boundary.layout import SumGroup
        from sglang.srt.models.gemma4_causal import Gemma4DecoderLayer, Gemma4TextModel

        patch = self
        self.served = self.missed = 0  # counts describe the current application only
        original_forward = Gemma4TextModel.__dict__["forward"]
        original_next = Gemma4DecoderLayer.__dict__["_next_stream"]
        self._plain_tail = gemma4_layers.layer_tail  # what ple_tail calls when not fused

        @functools.wraps(original_forward)
        def forward(model, *args, **kwargs):
            import torch

            if torch.compiler.is_compiling():
                return original_forward(model, *args, **kwargs)
            with patch.forward_scope(model):
                return original_forward(model, *args, **kwargs)

        @functools.wraps(original_next)
        def _next_stream(layer, hidden_states, residual, per_layer_input, forward_batch):
            # Dense layers only (MoE: dual-norm tail; PLE: ple_tail reaches the seam).
            if not layer.enable_moe_block and not layer.has_ple and patch._scope() is not None:
                post_ff = plain_rmsnorm(layer.post_feedforward_layernorm)
                # Decide before the MLP runs: stepping aside afterwards would run it twice.
                if post_ff is not None and rows_2d(residual):
                    mlp_out = layer.ffn_boundary.sum_part(
                        layer.mlp(hidden_states), forward_batch, SumGroup.TP
                    )
                    return patch.fused_tail(layer, mlp_out, post_ff[0], residual, post_ff[1])
            return original_next(layer, hidden_states, residual, per_layer_input, forward_batch)

        undo.set_attr(Gemma4TextModel, "forward", forward)
        undo.set_attr(Gemma4DecoderLayer, "_next_stream", _next_stream)
        undo.set_attr(gemma4_layers, "layer_tail", self.fused_tail)
        undo.on_rollback("forget consumer maps", self._consumers.clear)


PATCH = LayerBoundaryFusion()

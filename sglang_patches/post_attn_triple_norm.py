"""post_attn_triple_norm — MoE Gemma 4 layers (26B-A4B): the post-attention block in one launch.

Between the attention output and the MoE input SGLang 0.5.23 runs four norms (map §2):
``post_attention_layernorm`` (the attention's output transform), the fused residual
add + ``pre_feedforward_layernorm`` (the FFN boundary's read), the router's norm and
``pre_feedforward_layernorm_2`` — the last three over the same residual, i.e. the same
reduction. ``gemma4::triple_rmsnorm`` does all four from one pass over the row.

Where: the FFN boundary's read of an attention output that declared an output
transform (``_TransformedRead.update_and_read``) is where SGLang applies the
post-attention norm, the residual update and the pre-FFN norm. For a Gemma 4 MoE
layer whose read is the plain fused add + norm (``NormReadout``, plain add update, no
quantized read) the patch returns ``(pre_ff_out, residual_out)`` from the triple op —
the same contract — and hands the router input and ``pre_ff_2`` output to the layer's
``_next_stream``, where the router's norm and ``pre_feedforward_layernorm_2`` serve
them for that residual instead of recomputing. When the read is not eligible
(quantized read, another readout, non-plain norms, unequal eps, a hidden dimension
that is not whole rows), ``_next_stream`` still fuses the router norm and
``pre_ff_norm_2`` into one launch (``gemma4::rmsnorm_pair``, 2 -> 1).

Parallelism: the ops compute exactly what the modules compute on the tensors the
boundary hands them (whole rows are checked), so TP, PP, DP attention and EP are all
allowed; rows the boundary gathers or scatters arrive as they would for the modules.
"""

from __future__ import annotations

import contextlib
import functools
import weakref
from collections.abc import Iterator
from typing import Any

from sglang_patches.base import CheckResult, Patch, Pin, UndoLog, verify_pins
from sglang_patches.gemma4_layers import plain_rmsnorm, rows_2d

MODEL = "sglang.srt.models.gemma4_causal"
BOUNDARY = "sglang.srt.layers.layer_boundary"


@contextlib.contextmanager
def serving(module: Any, expected_input: Any, output: Any) -> Iterator[None]:
    """For the duration, ``module(expected_input)`` returns ``output`` (identity match)."""
    bound = module.forward

    def forward(x, *args, **kwargs):
        if x is expected_input and not args and not kwargs:
            return output
        return bound(x, *args, **kwargs)

    module.forward = forward  # instance attribute; nn.Module.__call__ looks it up
    try:
        yield
    finally:
        del module.forward


class PostAttnTripleNorm(Patch):
    name = "post_attn_triple_norm"
    purpose = (
        "MoE Gemma 4: post-attn norm, residual add, pre-FFN norm, router norm and "
        "pre_ff_norm_2 in one launch (4 -> 1)"
    )
    targets = (
        f"{MODEL}.Gemma4DecoderLayer",
        f"{BOUNDARY}.boundary._TransformedRead.update_and_read",
    )

    pins = (
        Pin(f"{MODEL}.Gemma4DecoderLayer.__init__", "9e9975c609184ad8"),
        Pin(f"{MODEL}.Gemma4DecoderLayer.forward", "487361dcb6414aea"),
        Pin(f"{MODEL}.Gemma4DecoderLayer._next_stream", "67f3446b26420c33"),
        Pin(f"{MODEL}.Gemma4Router.forward", "c9b809ff00a5f0aa"),
        Pin(f"{MODEL}.Gemma4Router.fuse_scale", "f7ae349286c2e79e"),
        Pin(f"{BOUNDARY}.boundary._TransformedRead.update_and_read", "cb7b5729a3f57bc4"),
        Pin(f"{BOUNDARY}.residual.add_norm.NormReadout.update_and_read", "66f4f84eac704fd7"),
        Pin("sglang.srt.layers.layernorm.RMSNorm.forward_native", "44cb760bd8dca804"),
    )

    def __init__(self) -> None:
        super().__init__()
        # post_attention_layernorm module -> its MoE layer (weak: models come and go)
        self._layers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        # layer -> (residual_out, router_in, pre_ff_2_out) from the triple op
        self._pending: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def check(self) -> CheckResult:
        return verify_pins(self.pins)

    # --- shared pieces ---------------------------------------------------------------
    @staticmethod
    def router_scale(layer: Any) -> tuple[Any, float]:
        router = layer.router
        if not router._scale_fused:
            router.fuse_scale()  # what the router's first forward would do
        return router.norm.weight, float(router.norm.eps)

    def norms(self, layer: Any) -> tuple[Any, ...] | None:
        """(w_post_attn, w_pre_ff, w_pre_ff_2, router_scale, eps), or None if not fusable."""
        parts = [
            plain_rmsnorm(layer.post_attention_layernorm),
            plain_rmsnorm(layer.pre_feedforward_layernorm),
            plain_rmsnorm(layer.pre_feedforward_layernorm_2),
        ]
        if any(p is None for p in parts):
            return None
        scale, router_eps = self.router_scale(layer)
        eps = {p[1] for p in parts} | {router_eps}
        if len(eps) != 1:
            return None
        return parts[0][0], parts[1][0], parts[2][0], scale, eps.pop()

    # --- the FFN boundary's read: 4 norms -> 1 launch ------------------------------------
    def fused_read(self, read, update, hidden_states, residual, norm, quant_format, extra):
        from sglang.srt.layers.layer_boundary.residual.add_norm import NormReadout

        from gemma4_kernels.ops.norms import triple_rmsnorm

        layer_ref = self._layers.get(read.transform.apply)
        layer = layer_ref() if layer_ref is not None else None
        if layer is None:
            return None
        if (
            type(read.inner) is not NormReadout
            or not update.is_plain_add
            or residual is None
            or quant_format
            or extra is not None
            or norm is not layer.pre_feedforward_layernorm
            or not rows_2d(hidden_states, residual)
            or hidden_states.shape != residual.shape
            or hidden_states.shape[1] != layer.hidden_size
        ):
            self.fallback("FFN read not eligible for the triple norm (router+pre_ff_2 pair used)")
            return None
        norms = self.norms(layer)
        if norms is None:
            self.fallback("post-attention norms not plain or eps differ (stock norms used)")
            return None
        residual_out, pre_ff, router_in, pre_ff_2 = triple_rmsnorm(hidden_states, residual, *norms)
        self._pending[layer] = (residual_out, router_in, pre_ff_2)
        return pre_ff, residual_out

    # --- the layer's FFN input: router norm + pre_ff_norm_2 ------------------------------
    def ffn_inputs(self, layer: Any, residual: Any) -> tuple[Any, Any] | None:
        from gemma4_kernels.ops.norms import rmsnorm_pair

        pending = self._pending.pop(layer, None)
        if pending is not None and pending[0] is residual:
            return pending[1], pending[2]
        pre2 = plain_rmsnorm(layer.pre_feedforward_layernorm_2)
        if pre2 is None or not rows_2d(residual):
            return None
        scale, eps = self.router_scale(layer)
        if eps != pre2[1]:
            return None
        return rmsnorm_pair(residual, scale, pre2[0], eps)

    def _apply(self, undo: UndoLog) -> None:
        from sglang.srt.layers.layer_boundary.boundary import _TransformedRead
        from sglang.srt.models.gemma4_causal import Gemma4DecoderLayer

        patch = self
        original_init = Gemma4DecoderLayer.__dict__["__init__"]
        original_next = Gemma4DecoderLayer.__dict__["_next_stream"]
        original_read = _TransformedRead.__dict__["update_and_read"]

        @functools.wraps(original_init)
        def __init__(layer, *args, **kwargs):
            original_init(layer, *args, **kwargs)
            if layer.enable_moe_block:
                patch._layers[layer.post_attention_layernorm] = weakref.ref(layer)

        @functools.wraps(original_read)
        def update_and_read(
            read,
            update,
            hidden_states,
            residual,
            norm,
            quant_format="",
            post_residual_addition=None,
        ):
            fused = patch.fused_read(
                read, update, hidden_states, residual, norm, quant_format, post_residual_addition
            )
            if fused is not None:
                return fused
            return original_read(
                read, update, hidden_states, residual, norm, quant_format, post_residual_addition
            )

        @functools.wraps(original_next)
        def _next_stream(layer, hidden_states, residual, per_layer_input, forward_batch):
            inputs = patch.ffn_inputs(layer, residual) if layer.enable_moe_block else None
            if inputs is None:
                return original_next(layer, hidden_states, residual, per_layer_input, forward_batch)
            router_in, pre_ff_2 = inputs
            with (
                serving(layer.router.norm, residual, router_in),
                serving(layer.pre_feedforward_layernorm_2, residual, pre_ff_2),
            ):
                return original_next(layer, hidden_states, residual, per_layer_input, forward_batch)

        undo.set_attr(Gemma4DecoderLayer, "__init__", __init__)
        undo.set_attr(_TransformedRead, "update_and_read", update_and_read)
        undo.set_attr(Gemma4DecoderLayer, "_next_stream", _next_stream)
        undo.on_rollback("forget registered layers", self._forget)

    def _forget(self) -> None:
        self._layers.clear()
        self._pending.clear()


PATCH = PostAttnTripleNorm()

"""ple_tail — the per-layer-embedding tail of E2B/E4B decoder layers in 3 fused ops.

SGLang 0.5.23 (``Gemma4DecoderLayer._next_stream``, whenever ``has_ple``) runs the
tail as 7 pointwise launches around two GEMMs: post-FFN norm, + residual, gate GEMM,
tanh GELU, x per-layer input, projection GEMM, post-PLE norm, +, x layer_scalar; its
fused CUDA kernels require ``not has_ple`` (map §3). Here:

    h = rmsnorm_add(mlp_out, w_post_ff, residual)              # gemma4::rmsnorm_add
    g = gelu_tanh_mul(per_layer_input_gate(h), per_layer_input)  # gemma4::gelu_tanh_mul
    out = rmsnorm_residual_scalar(per_layer_projection(g), w_post_ple, h, layer_scalar)

Same math as HF's decoder layer (tests compare both); the MLP and its tensor-parallel
sum are SGLang's own calls, unchanged. Layers without PLE, MoE layers, and anything
the ops cannot reproduce exactly (non-plain norms, mismatched shapes) take SGLang's
path; each such fallback is counted in ``status()``.
"""

from __future__ import annotations

import functools
from typing import Any

from sglang_patches import gemma4_layers
from sglang_patches.base import CheckResult, Patch, Pin, UndoLog, verify_pins
from sglang_patches.gemma4_layers import plain_rmsnorm, rows_2d

MODEL = "sglang.srt.models.gemma4_causal"


class PleTail(Patch):
    name = "ple_tail"
    purpose = "E2B/E4B per-layer-embedding tail: 7 pointwise launches -> 3 fused ops"
    targets = (f"{MODEL}.Gemma4DecoderLayer._next_stream",)

    pins = (
        Pin(f"{MODEL}.Gemma4DecoderLayer._next_stream", "67f3446b26420c33"),
        Pin(f"{MODEL}.Gemma4DecoderLayer.__init__", "9e9975c609184ad8"),
        Pin("sglang.srt.layers.layernorm.RMSNorm.forward_native", "44cb760bd8dca804"),
        Pin("sglang.srt.layers.layernorm.Gemma4RMSNorm.forward_native", "43447861698a9d00"),
    )

    def check(self) -> CheckResult:
        return verify_pins(self.pins)

    def tail(self, layer: Any, hidden_states: Any, residual: Any, per_layer_input: Any, fb: Any):
        """Our tail, or None when this call must take SGLang's path."""
        from sglang.srt.layers.layer_boundary.layout import SumGroup

        from gemma4_kernels.ops.gelu_tanh_mul import gelu_tanh_mul
        from gemma4_kernels.ops.norms import rmsnorm_add

        post_ff = plain_rmsnorm(layer.post_feedforward_layernorm)
        post_ple = plain_rmsnorm(layer.post_per_layer_input_norm)
        if post_ff is None or post_ple is None:
            self.fallback("a PLE-tail norm is not a plain RMSNorm")
            return None
        # Decide before any compute: a fallback after the MLP would run it twice.
        if not rows_2d(residual, per_layer_input):
            self.fallback("PLE tail inputs are not 2-D rows of one dtype")
            return None
        mlp_out = layer.ffn_boundary.sum_part(layer.mlp(hidden_states), fb, SumGroup.TP)
        h = rmsnorm_add(mlp_out, post_ff[0], residual, post_ff[1])
        gate, _ = layer.per_layer_input_gate(h)
        contribution, _ = layer.per_layer_projection(gelu_tanh_mul(gate, per_layer_input))
        # Through the module attribute: layer_boundary_fusion may fuse the next norm in.
        return gemma4_layers.layer_tail(layer, contribution, post_ple[0], h, post_ple[1])

    def _apply(self, undo: UndoLog) -> None:
        from sglang.srt.models.gemma4_causal import Gemma4DecoderLayer

        original = Gemma4DecoderLayer.__dict__["_next_stream"]
        patch = self

        @functools.wraps(original)
        def _next_stream(layer, hidden_states, residual, per_layer_input, forward_batch):
            if layer.has_ple and layer.moe is None and per_layer_input is not None:
                out = patch.tail(layer, hidden_states, residual, per_layer_input, forward_batch)
                if out is not None:
                    return out
            return original(layer, hidden_states, residual, per_layer_input, forward_batch)

        undo.set_attr(Gemma4DecoderLayer, "_next_stream", _next_stream)


PATCH = PleTail()

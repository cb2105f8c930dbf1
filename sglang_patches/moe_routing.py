"""moe_routing — Gemma4MoE routes with ``gemma4::moe_routing``.

SGLang 0.5.23 routes Gemma 4 with its own fused kernel on CUDA (same packed-sort
algorithm, vLLM #39083) and with torch.topk + a bf16 softmax elsewhere. Our op has
the same semantics where both are defined (tests compare them in the interpreter:
identical ids, weights within float rounding) and is also defined where upstream is
not: E > 1024 (upstream asserts), strided logits, NaN rows (valid ids, NaN weights
as in HF), ±0 ties; on CPU it computes the weights in fp32 like HF. It takes the
top ``next_pow2(K)`` with a truncated bitonic network instead of sorting all E.
GPU timing against upstream: not measured yet (no GPU run; see microbench).

Hook: AROUND ``Gemma4MoE.__init__``: after construction, the ``TopK`` module's
``custom_routing_function`` (read by ``select_experts`` on every call) becomes ours.
Models built before install keep SGLang's routing; install before the model is built
(the plugin does).
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from sglang_patches.base import CheckResult, Patch, Pin, UndoLog, verify_pins

MODEL = "sglang.srt.models.gemma4_causal"


def make_routing_function(per_expert_scale: torch.Tensor):
    """SGLang's custom-routing contract: (hidden, logits, topk, renormalize) -> (w, ids)."""

    def gemma4_routing(
        hidden_states: torch.Tensor,
        gating_output: torch.Tensor,
        topk: int,
        renormalize: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # Gemma 4 always renormalises over the chosen experts (softmax of the top-K).
        from gemma4_kernels.ops.routing import moe_routing

        return moe_routing(gating_output, per_expert_scale, topk)

    gemma4_routing.per_expert_scale = per_expert_scale
    return gemma4_routing


class MoERouting(Patch):
    name = "moe_routing"
    purpose = (
        "Gemma4MoE routes with gemma4::moe_routing (HF-exact, total over NaN/-inf/ties, "
        "E up to 16384, any strides)"
    )
    targets = (f"{MODEL}.Gemma4MoE.__init__",)

    pins = (
        Pin(f"{MODEL}.Gemma4MoE.__init__", "a838410016cc9573"),
        Pin("sglang.srt.layers.moe.topk.TopKConfig", "344a930edd6a1367"),
        # Calls custom_routing_function(hidden_states=, gating_output=, topk=, renormalize=).
        Pin("sglang.srt.layers.moe.topk.select_experts", "3344cfacd2e2c1af"),
    )

    def check(self) -> CheckResult:
        return verify_pins(self.pins)

    def _apply(self, undo: UndoLog) -> None:
        from sglang.srt.models.gemma4_causal import Gemma4MoE

        original = Gemma4MoE.__dict__["__init__"]

        @functools.wraps(original)
        def __init__(moe: Any, *args: Any, **kwargs: Any) -> None:
            original(moe, *args, **kwargs)
            moe.topk.topk_config.custom_routing_function = make_routing_function(
                moe.per_expert_scale
            )

        undo.set_attr(Gemma4MoE, "__init__", __init__)


PATCH = MoERouting()

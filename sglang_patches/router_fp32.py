"""router_fp32 — the MoE router's norm, scale and projection output stay in fp32.

SGLang 0.5.23 (``Gemma4Router``) folds ``scale x H^-0.5`` into the norm weight in the
model dtype, rounds the normed input to it, and the projection returns bf16 logits; only
then does routing go to fp32. Top-8 of 128 is a hard decision: on synthetic inputs at the
real size (H=2816, E=128, bf16 weights) ~4 % of tokens got a different expert set than
the fp32 HF router (see README). SGLang withdrew a router fusion for this kind of bf16
drift (#26588); #38695 recommends fp32 router output.

The patched forward computes, in fp32: ``rmsnorm(x) * (scale * H^-0.5)`` and the
projection against the (bf16) weight upcast to fp32, returning fp32 logits — what HF's
router computes when run in fp32. Cost: the [T, H] x [H, E] projection in fp32 (E=128)
plus a transient fp32 copy of the [E, H] weight; the routing op takes fp32 logits.
"""

from __future__ import annotations

import functools
from typing import Any

from sglang_patches.base import CheckResult, Patch, Pin, UndoLog, verify_pins

MODEL = "sglang.srt.models.gemma4_causal"


def fp32_router_logits(router: Any, x: Any) -> Any:
    """HF ``Gemma4TextRouter`` math before the softmax, in fp32."""
    import torch

    xf = x.float()
    normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + router.norm.eps)
    scaled = normed * (router.scale.float() * router.root_size.float())
    return torch.nn.functional.linear(scaled, router.proj.weight.float())


class RouterFp32(Patch):
    name = "router_fp32"
    purpose = "MoE router norm, scale and projection in fp32 (fp32 logits): no bf16 expert flips"
    targets = (f"{MODEL}.Gemma4Router.forward",)

    pins = (
        Pin(f"{MODEL}.Gemma4Router.__init__", "13bf946c5352cf50"),
        Pin(f"{MODEL}.Gemma4Router.forward", "c9b809ff00a5f0aa"),
    )

    def check(self) -> CheckResult:
        return verify_pins(self.pins)

    def _apply(self, undo: UndoLog) -> None:
        from sglang.srt.models.gemma4_causal import Gemma4Router

        original = Gemma4Router.__dict__["forward"]
        patch = self

        @functools.wraps(original)
        def forward(router: Any, x: Any) -> Any:
            if (
                getattr(router.proj, "quant_method", None) is not None
                and type(router.proj.quant_method).__name__ != "UnquantizedLinearMethod"
            ):
                patch.fallback("router projection is quantized; SGLang's router used")
                return original(router, x)
            return fp32_router_logits(router, x)

        undo.set_attr(Gemma4Router, "forward", forward)


PATCH = RouterFp32()

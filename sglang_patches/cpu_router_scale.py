"""cpu_router_scale — the MoE router applies its learned scale on the native path.

``Gemma4Router.fuse_scale`` folds ``scale × hidden^-0.5`` into ``router.norm.weight``,
but that norm was built with ``with_scale=False`` and ``Gemma4RMSNorm.forward_native``
(and the AMX CPU kernel) multiply by the weight only when ``with_scale`` is set. So
off CUDA the router scale is lost and wrong experts are picked (tiny MoE logits off
by ~2 at prefill). ``forward_cuda`` always multiplies by the weight, so on CUDA the
flag changes nothing.

Fix: after ``fuse_scale`` the norm has a meaningful weight, so mark it
``with_scale=True``. Detected as fixed upstream when, on an unpatched 8-wide router,
the native norm already reflects the folded scale.
"""

from __future__ import annotations

import functools
from typing import Any

from sglang_patches.base import CheckResult, Patch, Pin, UndoLog, verify_pins

MODEL = "sglang.srt.models.gemma4_causal"


def native_router_norm_applies_scale() -> bool:
    """Build an 8-wide Gemma4Router (CPU) and see whether the native norm uses its scale."""
    import types

    import torch
    from sglang.srt.models.gemma4_causal import Gemma4Router

    hidden = 8
    router = Gemma4Router(
        types.SimpleNamespace(hidden_size=hidden, rms_norm_eps=1e-6, num_experts=2)
    )
    with torch.no_grad():
        router.scale.copy_(torch.arange(1, hidden + 1, dtype=torch.float32))
    router.fuse_scale()
    x = torch.linspace(-1.0, 1.0, 2 * hidden).reshape(2, hidden)
    got = router.norm.forward_native(x)
    normed = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
    return torch.allclose(got, normed * router.scale * hidden**-0.5, rtol=1e-5, atol=1e-6)


class CpuRouterScale(Patch):
    name = "cpu_router_scale"
    purpose = "Gemma 4 MoE router keeps its learned scale on the native (CPU) norm path"
    targets = (f"{MODEL}.Gemma4Router.fuse_scale",)

    pins = (
        Pin(f"{MODEL}.Gemma4Router.__init__", "13bf946c5352cf50"),
        Pin(f"{MODEL}.Gemma4Router.fuse_scale", "f7ae349286c2e79e"),
        Pin(f"{MODEL}.Gemma4Router.forward", "c9b809ff00a5f0aa"),
        Pin("sglang.srt.layers.layernorm.Gemma4RMSNorm.forward_native", "43447861698a9d00"),
    )

    def check(self) -> CheckResult:
        result = verify_pins(self.pins)
        try:
            fixed = native_router_norm_applies_scale()
        except Exception as exc:  # the probe itself no longer fits this SGLang
            if not result.ok:
                return result
            return CheckResult.skip(f"could not probe Gemma4Router ({type(exc).__name__}: {exc})")
        if fixed:
            return CheckResult.fixed_upstream("the native router norm already applies the scale")
        return result

    def _apply(self, undo: UndoLog) -> None:
        from sglang.srt.models.gemma4_causal import Gemma4Router

        original = Gemma4Router.__dict__["fuse_scale"]

        @functools.wraps(original)
        def fuse_scale(router: Any) -> None:
            original(router)
            # The norm now carries scale * hidden^-0.5; make every path multiply by it.
            router.norm.with_scale = True

        undo.set_attr(Gemma4Router, "fuse_scale", fuse_scale)


PATCH = CpuRouterScale()

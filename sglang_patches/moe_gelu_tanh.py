"""moe_gelu_tanh — Gemma 4 experts use tanh GELU, as HF does.

HF's ``Gemma4TextExperts`` apply ``gelu_pytorch_tanh``; SGLang's ``Gemma4MoE`` passes
``activation="gelu"`` to the MoE runner. On CPU that is harmless (the native path maps
"gelu" to ``GeluAndMul(approximate="tanh")``), but SGLang's Triton MoE runner, the one
used on CUDA, maps "gelu" to ``gelu_and_mul`` — erf GELU (its torch branch:
``F.gelu(approximate="none")``). vLLM fixed the same bug in #41574.

After ``Gemma4MoE`` is built, the patch looks at the runner its experts actually got:

* Triton runner on CUDA/HIP: activation becomes ``"gelu_tanh"`` (the runner computes
  ``gelu_tanh_and_mul``; pinned below).
* CPU (native or AMX path): left at ``"gelu"``, which those paths already compute as
  tanh; ``"gelu_tanh"`` would be rejected there.
* Any other runner (FlashInfer TRT-LLM/CUTLASS, triton_kernels, ...): it has no tanh
  GELU for gated experts (FlashInfer maps "gelu" to erf Geglu, vLLM #56839), so the
  patch refuses loudly — a WARNING naming the runner, recorded in ``status()`` — and
  leaves SGLang's choice in place rather than crash the runner.
"""

from __future__ import annotations

import functools
from typing import Any

from sglang_patches.base import CheckResult, Patch, Pin, UndoLog, verify_pins

MODEL = "sglang.srt.models.gemma4_causal"
TANH = "gelu_tanh"


def activation_for(runner_backend: Any, on_gpu: bool) -> tuple[str | None, str | None]:
    """(activation to set, refusal) for a Gemma 4 experts layer.

    ``(None, None)``: leave SGLang's "gelu" (already tanh there); ``(None, reason)``:
    the runner cannot compute tanh GELU — refuse loudly.
    """
    if not on_gpu:
        return None, None  # CPU native/AMX paths compute "gelu" as tanh GELU
    if runner_backend is not None and runner_backend.is_triton():
        return TANH, None  # the Triton runner computes gelu_tanh_and_mul
    name = getattr(runner_backend, "value", str(runner_backend))
    return None, (
        f"MoE runner {name!r} has no tanh GELU for gated experts; Gemma 4 experts keep "
        "SGLang's erf GELU there (differs from HF). Use --moe-runner-backend triton"
    )


class MoEGeluTanh(Patch):
    name = "moe_gelu_tanh"
    purpose = (
        "Gemma 4 MoE experts use tanh GELU (HF's gelu_pytorch_tanh), not erf, on the Triton runner"
    )
    targets = (f"{MODEL}.Gemma4MoE.__init__",)

    pins = (
        Pin(f"{MODEL}.Gemma4MoE.__init__", "a838410016cc9573"),
        # The Triton runner's activation dispatch ("gelu" -> erf, "gelu_tanh" -> tanh).
        Pin(
            "sglang.srt.layers.moe.moe_runner.triton_utils.fused_moe._fused_moe_kernel_sequence",
            "1033ffaa70a23e3c",
        ),
        # The CPU path that maps "gelu" to GeluAndMul(approximate="tanh").
        Pin("sglang.srt.layers.moe.fused_moe_native.moe_forward_native", "53b7e13072dbf344"),
    )

    def check(self) -> CheckResult:
        return verify_pins(self.pins)

    def _apply(self, undo: UndoLog) -> None:
        from sglang.srt.models.gemma4_causal import Gemma4MoE
        from sglang.srt.utils import is_cuda, is_hip

        original = Gemma4MoE.__dict__["__init__"]
        patch = self

        @functools.wraps(original)
        def __init__(moe: Any, *args: Any, **kwargs: Any) -> None:
            original(moe, *args, **kwargs)
            config = moe.experts.moe_runner_config
            if config.activation != "gelu":  # someone chose explicitly; leave it
                return
            activation, refusal = activation_for(moe.experts.runner_backend, is_cuda() or is_hip())
            if refusal is not None:
                patch.fallback(refusal)
            if activation is None:
                return
            # The runner and the quant method read this same config object at run time.
            config.activation = activation

        undo.set_attr(Gemma4MoE, "__init__", __init__)


PATCH = MoEGeluTanh()

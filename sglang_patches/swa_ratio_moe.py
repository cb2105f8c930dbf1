"""swa_ratio_moe — MoE Gemma 4 (26B-A4B): ``swa_full_tokens_ratio`` 0.8 → 0.15.

Seed 002: Gemma 4 layers are 5:1 SWA:full, and for the MoE model the *full* pool
binds first under long concurrent requests (SGLang's 0.8 over-provisions the SWA
pool; re-prefills inflated TTFT by 16 %). Dense Gemma 4 keeps SGLang's default:
there 0.15 starved the SWA pool (31B throughput collapsed).

Hook: SGLang's ``register_model_override`` for the Gemma 4 architectures (map §5).
A value the user set (``--swa-full-tokens-ratio``) is never touched.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

from sglang_patches.base import CheckResult, Patch, Pin, UndoLog, verify_pins
from sglang_patches.gemma4_models import GEMMA4_ARCHS, is_moe

logger = logging.getLogger("gemma4_kernels")

MOE_SWA_FULL_TOKENS_RATIO = 0.15


class SwaRatioMoE(Patch):
    name = "swa_ratio_moe"
    purpose = "MoE Gemma 4: swa_full_tokens_ratio 0.8 -> 0.15 unless the user set it"
    targets = ("sglang.srt.arg_groups.model_override_base.register_model_override",)

    pins = (
        Pin(
            "sglang.srt.arg_groups.model_override_base.register_model_override", "ad8668755d8c7b34"
        ),
        Pin(
            "sglang.srt.arg_groups.overrides.collect_model_override_declarations",
            "31e06ac2a626ca85",
        ),
    )

    def check(self) -> CheckResult:
        result = verify_pins(self.pins)
        if not result.ok:
            return result
        from sglang.srt.arg_groups.arg_utils import resolvable_fields
        from sglang.srt.arg_groups.model_overrides import gemma4
        from sglang.srt.server_args import ServerArgs

        if "swa_full_tokens_ratio" in inspect.getsource(gemma4):
            return CheckResult.fixed_upstream(
                "SGLang's own Gemma 4 model override already sets swa_full_tokens_ratio"
            )
        if "swa_full_tokens_ratio" not in resolvable_fields(ServerArgs):
            return CheckResult.skip("swa_full_tokens_ratio is no longer a resolvable field")
        return CheckResult.ready()

    def provide(self, server_args: Any, hf_config: Any) -> dict:
        """Model-override provider: ``{field: value}`` for SGLang to declare."""
        from sglang.srt.arg_groups.arg_utils import fallbacks_of
        from sglang.srt.arg_groups.model_override_base import resolving_view

        if not is_moe(hf_config):
            return {}
        cfg = resolving_view(server_args)
        if cfg.swa_full_tokens_ratio is not None:
            logger.info(
                "gemma4-kernels: swa_ratio_moe keeps swa_full_tokens_ratio=%s (set by the user)",
                cfg.swa_full_tokens_ratio,
            )
            return {}
        before = fallbacks_of(type(server_args)).get("swa_full_tokens_ratio")
        logger.info(
            "gemma4-kernels: swa_full_tokens_ratio %s -> %s (MoE Gemma 4: the full-attention "
            "KV pool binds first)",
            before,
            MOE_SWA_FULL_TOKENS_RATIO,
        )
        return {"swa_full_tokens_ratio": MOE_SWA_FULL_TOKENS_RATIO}

    def _apply(self, undo: UndoLog) -> None:
        from sglang.srt.arg_groups import model_override_base as registry

        provider = self.provide  # one bound-method object, so revert finds it by identity
        for arch in GEMMA4_ARCHS:
            undo.register_in(
                registry._MODEL_OVERRIDE_FNS,
                arch,
                provider,
                lambda arch=arch: registry.register_model_override(arch)(provider),
            )


PATCH = SwaRatioMoE()

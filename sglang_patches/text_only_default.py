"""text_only_default — text-only Gemma 4 serving unless multimodal input is asked for.

Seed 002: serving text with Gemma4ForConditionalGeneration still loads the vision
(and on E-models audio) towers, memory the KV pool could use (31B: ~4 GiB per GPU,
KV pool +20 %). As SGLang already does for Gemma 3 and Llama 4, multimodal stays
available on request: ``--enable-multimodal`` (or any encoder-disaggregation or
multimodal-cache flag, or PD disaggregation, which language-model-only mode does not
support) keeps the towers.

Mechanism: declare ``language_model_only=True`` at the ``handle_multimodal`` step,
which runs before anything reads ``is_multimodal`` (memory heuristic, CUDA-graph
rules); SGLang's own language-model-only mode then does the rest (``mm_lm_only``
makes Gemma 4 honour it). It ships only with ``prefill_graph_gate``: the fork found
that turning multimodal off let the piecewise prefill graph capture Gemma 4 and the
dense 31B produced garbage.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from sglang_patches.base import CheckResult, Patch, Pin, UndoLog
from sglang_patches.gemma4_models import GEMMA4_MM_ARCH, architecture_of
from sglang_patches.resolution import check_resolution_step, declare, register_step_wrapper

logger = logging.getLogger("gemma4_kernels")

STEP = "handle_multimodal"


def multimodal_requested(cfg: Any) -> str | None:
    """The flag that asks for multimodal serving, or None when none does."""
    if cfg.enable_multimodal:
        return "--enable-multimodal"
    flags = (
        (cfg.encoder_only, "--encoder-only"),
        (cfg.language_only, "--language-only"),
        (cfg.enable_prefix_mm_cache, "--enable-prefix-mm-cache"),
        (cfg.enable_broadcast_mm_inputs_process, "--enable-broadcast-mm-inputs-process"),
        (cfg.mm_enable_dp_encoder, "--mm-enable-dp-encoder"),
    )
    for value, flag in flags:
        if value:
            return flag
    if cfg.disaggregation_mode != "null":
        return f"--disaggregation-mode {cfg.disaggregation_mode}"
    return None


class TextOnlyDefault(Patch):
    name = "text_only_default"
    purpose = (
        "text-only Gemma4ForConditionalGeneration: vision/audio towers not loaded unless "
        "--enable-multimodal"
    )
    targets = (f"sglang.srt.arg_groups.serving_hook.{STEP}",)
    requires = ("mm_lm_only", "prefill_graph_gate")

    pins = (
        Pin(f"sglang.srt.arg_groups.serving_hook.{STEP}", "913a50b3963759b0"),
        # Step order: handle_multimodal must run before the memory and CUDA-graph steps.
        Pin("sglang.srt.arg_groups.pipeline.run_resolution_pipeline", "be3a14a9aef19073"),
    )

    def check(self) -> CheckResult:
        return check_resolution_step(STEP, *self.pins)

    def step(self, server_args: Any, previous: Callable[[Any], None]) -> None:
        previous(server_args)

        from sglang.srt.arg_groups.overrides import model_config_of, resolving_view

        cfg = resolving_view(server_args)
        hf_config = model_config_of(server_args).hf_config
        if architecture_of(hf_config) != GEMMA4_MM_ARCH or cfg.language_model_only:
            return
        requested = multimodal_requested(cfg)
        if requested is not None:
            logger.info(
                "gemma4-kernels: text_only_default keeps the vision/audio towers (%s)", requested
            )
            return
        declare(server_args, self.name, language_model_only=True)
        # ModelConfig is memoized on the record and was built before this decision;
        # drop it so every later reader sees the language-model-only config.
        server_args._model_config = None
        logger.info(
            "gemma4-kernels: language_model_only False -> True (text-only Gemma 4: vision/audio "
            "towers not loaded; pass --enable-multimodal to serve images or audio)"
        )

    def _apply(self, undo: UndoLog) -> None:
        register_step_wrapper(undo, STEP, self.step)


PATCH = TextOnlyDefault()

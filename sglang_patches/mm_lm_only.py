"""mm_lm_only — Gemma4ForConditionalGeneration honours ``--language-model-only``.

SGLang 0.5.23 has a language-model-only mode (encoder never built, weights never
loaded, multimodal requests rejected by the tokenizer manager), but refuses it for
Gemma 4 (``ServerArgs.LANGUAGE_MODEL_ONLY_ARCHITECTURES``) and the Gemma 4 model
builds its vision and audio towers unconditionally (``gemma4_mm.py``). Seed 002:
skipping the towers frees ~4 GiB per GPU on 31B for the KV pool.

This patch adds Gemma 4 to the allow-list and, when ``config.language_model_only``
is set (SGLang sets it from the flag in ``ModelConfig``), builds the model with the
vision/audio towers and their embedders absent (``None``) and drops their weights
while loading. Without the flag the model is built exactly as before.

Why the constructor swap: the towers are created inside ``__init__`` from the
module-level names ``Gemma4VisionEncoder``, ``Gemma4AudioEncoder`` and
``Gemma4MultimodalEmbedder``. Rebinding those names for the duration of one
``__init__`` call (under a lock, restored in ``finally``) skips the allocation
without copying SGLang's constructor.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from sglang_patches.base import CheckResult, Patch, Pin, UndoLog, verify_pins
from sglang_patches.gemma4_models import GEMMA4_MM_ARCH

MM_MODULE = "sglang.srt.models.gemma4_mm"
TOWER_FACTORIES = ("Gemma4VisionEncoder", "Gemma4AudioEncoder", "Gemma4MultimodalEmbedder")
TOWER_ATTRS = ("vision_tower", "embed_vision", "audio_tower", "embed_audio")
TOWER_WEIGHT_PREFIXES = tuple(f"{attr}." for attr in TOWER_ATTRS)

_construct_lock = threading.Lock()


def _absent(*args: Any, **kwargs: Any) -> None:
    return None


@contextmanager
def _towers_absent(module: Any) -> Iterator[None]:
    with _construct_lock:
        saved = {name: getattr(module, name) for name in TOWER_FACTORIES}
        try:
            for name in TOWER_FACTORIES:
                setattr(module, name, _absent)
            yield
        finally:
            for name, value in saved.items():
                setattr(module, name, value)


def is_tower_weight(name: str) -> bool:
    """HF checkpoint names of the vision/audio towers and their embedders."""
    bare = name[len("model.") :] if name.startswith("model.") else name
    return bare.startswith(TOWER_WEIGHT_PREFIXES)


def _language_model_only(config: Any) -> bool:
    return bool(getattr(config, "language_model_only", False))


class MMLanguageModelOnly(Patch):
    name = "mm_lm_only"
    purpose = (
        "Gemma4ForConditionalGeneration honours --language-model-only: vision/audio towers "
        "neither built nor loaded"
    )
    targets = (
        f"{MM_MODULE}.Gemma4ForConditionalGeneration",
        "sglang.srt.server_args.ServerArgs.LANGUAGE_MODEL_ONLY_ARCHITECTURES",
    )

    pins = (
        Pin(f"{MM_MODULE}.Gemma4ForConditionalGeneration.__init__", "308673c80a964dd3"),
        Pin(f"{MM_MODULE}.Gemma4ForConditionalGeneration.load_weights", "83483cee730434db"),
        # The validation that reads the allow-list.
        Pin("sglang.srt.arg_groups.model_hook.handle_language_model_only", "b1900fe605352e48"),
    )

    def check(self) -> CheckResult:
        result = verify_pins(self.pins)
        if not result.ok:
            return result
        from sglang.srt.models import gemma4_mm
        from sglang.srt.server_args import ServerArgs

        archs = ServerArgs.__dict__.get("LANGUAGE_MODEL_ONLY_ARCHITECTURES")
        if not isinstance(archs, tuple):
            return CheckResult.skip(
                "ServerArgs.LANGUAGE_MODEL_ONLY_ARCHITECTURES is no longer a tuple on the class"
            )
        if GEMMA4_MM_ARCH in archs:
            return CheckResult.fixed_upstream(
                f"SGLang already allows --language-model-only for {GEMMA4_MM_ARCH}"
            )
        missing = [name for name in TOWER_FACTORIES if not hasattr(gemma4_mm, name)]
        if missing:
            return CheckResult.skip(f"{MM_MODULE} no longer defines {missing}")
        return result

    def _apply(self, undo: UndoLog) -> None:
        from sglang.srt.models import gemma4_mm
        from sglang.srt.server_args import ServerArgs

        cls = gemma4_mm.Gemma4ForConditionalGeneration
        original_init = cls.__dict__["__init__"]
        original_load = cls.__dict__["load_weights"]

        @functools.wraps(original_init)
        def __init__(model: Any, config: Any, *args: Any, **kwargs: Any) -> None:
            if not _language_model_only(config):
                original_init(model, config, *args, **kwargs)
                return
            with _towers_absent(gemma4_mm):
                original_init(model, config, *args, **kwargs)
            for attr in TOWER_ATTRS:  # PP non-first ranks leave placeholders; be uniform
                setattr(model, attr, None)

        @functools.wraps(original_load)
        def load_weights(model: Any, weights: Iterable[tuple[str, Any]]) -> Any:
            if not _language_model_only(model.config):
                return original_load(model, weights)
            return original_load(model, (w for w in weights if not is_tower_weight(w[0])))

        undo.set_attr(
            ServerArgs,
            "LANGUAGE_MODEL_ONLY_ARCHITECTURES",
            ServerArgs.__dict__["LANGUAGE_MODEL_ONLY_ARCHITECTURES"] + (GEMMA4_MM_ARCH,),
        )
        undo.set_attr(cls, "__init__", __init__)
        undo.set_attr(cls, "load_weights", load_weights)


PATCH = MMLanguageModelOnly()

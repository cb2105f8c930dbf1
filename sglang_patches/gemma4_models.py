"""What the server-argument patches need to know about a checkpoint: is it Gemma 4,
and is it the MoE (26B-A4B) or a dense one (31B, E4B, E2B)? Read from the HF config."""

from __future__ import annotations

from typing import Any

# Architectures the seed measured its tunes on. Gemma4Unified / DiffusionGemma are
# left alone: nothing was measured for them.
GEMMA4_ARCHS = ("Gemma4ForConditionalGeneration", "Gemma4ForCausalLM")
GEMMA4_MM_ARCH = "Gemma4ForConditionalGeneration"


def architecture_of(hf_config: Any) -> str | None:
    archs = getattr(hf_config, "architectures", None) or []
    return archs[0] if archs else None


def is_gemma4(hf_config: Any) -> bool:
    return architecture_of(hf_config) in GEMMA4_ARCHS


def text_config_of(hf_config: Any) -> Any:
    return getattr(hf_config, "text_config", None) or hf_config


def is_moe(hf_config: Any) -> bool:
    """MoE block enabled, as HF's Gemma4TextConfig declares it (26B-A4B)."""
    text = text_config_of(hf_config)
    return bool(getattr(text, "enable_moe_block", False)) or (
        (getattr(text, "num_experts", None) or 0) > 0
    )


def has_ple(hf_config: Any) -> bool:
    """Per-layer embeddings (E2B/E4B): ``hidden_size_per_layer_input`` > 0."""
    return (getattr(text_config_of(hf_config), "hidden_size_per_layer_input", None) or 0) > 0

"""Tiny Gemma 4 configs with the structure of the real models (DESIGN.md shape table).

Three families, small enough for the Triton interpreter:

* ``moe``   like 26B-A4B: SWA + full layers, MoE block (router, E experts, top-K) beside
  the dense MLP, ``attention_k_eq_v`` on full layers;
* ``dense`` like 31B: SWA + full layers;
* ``e2b``   like E2B: per-layer embeddings (PLE) and KV-shared layers.

``head_dim`` (sliding) and ``global_head_dim`` (full attention) differ on purpose, so a
mix-up of the two shapes shows. Configs are written as ``config.json`` only; no hub.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

FAMILIES = ("moe", "dense", "e2b")

MM_ARCH = "Gemma4ForConditionalGeneration"
TEXT_ARCH = "Gemma4ForCausalLM"

_SLIDING, _FULL = "sliding_attention", "full_attention"

# Layer patterns: SWA and full layers both present, the last layer full (HF forces it).
_LAYER_TYPES = {
    "moe": [_SLIDING, _FULL, _SLIDING, _FULL],
    "dense": [_SLIDING, _SLIDING, _SLIDING, _FULL],
    # Two KV-shared layers at the end (E2B: the last 20 of 35), one of each type.
    "e2b": [_SLIDING, _SLIDING, _FULL, _SLIDING, _SLIDING, _FULL],
}

# A large init range and (see harness.reference) perturbed norm weights make small
# numeric differences between SGLang and HF visible instead of averaging out.
INIT_RANGE = 0.2


def text_config_kwargs(family: str) -> dict[str, Any]:
    """Keyword arguments for ``transformers.Gemma4TextConfig`` of one tiny family."""
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    layer_types = list(_LAYER_TYPES[family])
    kwargs: dict[str, Any] = dict(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=len(layer_types),
        layer_types=layer_types,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        global_head_dim=64,
        sliding_window=8,
        max_position_embeddings=256,
        final_logit_softcapping=30.0,
        rms_norm_eps=1e-6,
        initializer_range=INIT_RANGE,
        tie_word_embeddings=True,
        hidden_size_per_layer_input=0,
        vocab_size_per_layer_input=512,
    )
    if family == "moe":
        kwargs.update(
            enable_moe_block=True,
            num_experts=8,
            top_k_experts=2,
            moe_intermediate_size=32,
            attention_k_eq_v=True,
            num_global_key_value_heads=1,
        )
    elif family == "e2b":
        kwargs.update(
            hidden_size_per_layer_input=16,
            num_kv_shared_layers=2,
            use_double_wide_mlp=True,
        )
    return kwargs


def vision_config_kwargs() -> dict[str, Any]:
    return dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=16,
        patch_size=4,
        pooling_kernel_size=2,
        position_embedding_size=64,
        initializer_range=INIT_RANGE,
    )


def hf_config(family: str, arch: str = MM_ARCH, *, vision: bool = True) -> Any:
    """A transformers config object for ``family`` served as ``arch``.

    ``Gemma4ForConditionalGeneration`` (how every released Gemma 4 checkpoint is
    declared) wraps the text config in a ``gemma4`` config with a vision tower;
    ``Gemma4ForCausalLM`` here is the same ``gemma4`` config without one.
    """
    from transformers import Gemma4Config

    if arch not in (MM_ARCH, TEXT_ARCH):
        raise ValueError(f"arch must be {MM_ARCH!r} or {TEXT_ARCH!r}, got {arch!r}")
    config = Gemma4Config(
        text_config=text_config_kwargs(family),
        vision_config=vision_config_kwargs() if vision else None,
        initializer_range=INIT_RANGE,
    )
    config.architectures = [arch]
    return config


def write_config(directory: str | Path, family: str, arch: str = MM_ARCH, **kwargs: Any) -> Path:
    """Write ``config.json`` for a tiny model into ``directory``; returns the directory."""
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    hf_config(family, arch, **kwargs).save_pretrained(path)
    # Sanity: what was written is what a loader will read back.
    json.loads((path / "config.json").read_text())
    return path

"""mm_lm_only on SGLang's real Gemma4ForConditionalGeneration, built on CPU."""

from __future__ import annotations

import pytest

from gemma4_kernels.harness.session import ALL
from sglang_patches.mm_lm_only import is_tower_weight

FIXES = ("triton_swa_decode_window", "cpu_router_scale")


@pytest.mark.parametrize(
    "name, tower",
    [
        ("model.vision_tower.encoder.layers.0.mlp.up_proj.weight", True),
        ("model.embed_vision.embedding_projection.weight", True),
        ("model.audio_tower.layers.0.attn.q_proj.weight", True),
        ("model.embed_audio.embedding_projection.weight", True),
        ("vision_tower.patch_embedder.weight", True),
        ("model.language_model.layers.0.self_attn.q_proj.weight", False),
        ("model.language_model.embed_tokens.weight", False),
    ],
)
def test_tower_weight_names(name, tower):
    assert is_tower_weight(name) is tower


def _vision_params(model) -> list[str]:
    return [n for n, _ in model.named_parameters() if "vision" in n or "audio" in n]


def test_stock_builds_the_towers(tiny_families):
    model = tiny_families.run("dense").model.model
    assert type(model.vision_tower).__name__ == "Gemma4VisionEncoder"
    assert _vision_params(model)


def test_language_model_only_builds_no_towers_and_keeps_parity(tiny_families):
    run = tiny_families.run("dense", ("mm_lm_only", *FIXES), language_model_only=True)
    assert run.patch_states["mm_lm_only"] == "applied"
    model = run.model.model
    for attr in ("vision_tower", "embed_vision", "audio_tower", "embed_audio"):
        assert getattr(model, attr) is None, attr
    assert _vision_params(model) == []
    assert not any(is_tower_weight(n) for n in run.model.loaded_weights)
    assert run.report.ok(), run.report.step_max_abs


def test_text_only_default_reaches_the_model(tiny_families):
    """All patches, no flags: resolution turns language-model-only on, the model obeys."""
    run = tiny_families.run("moe", ALL)
    assert run.model.model.vision_tower is None
    assert run.report.ok(), run.report.step_max_abs


def test_enable_multimodal_keeps_the_towers(tiny_families):
    run = tiny_families.run("dense", ALL, enable_multimodal=True)
    assert type(run.model.model.vision_tower).__name__ == "Gemma4VisionEncoder"
    assert run.report.ok(), run.report.step_max_abs

"""text_only_default (+ the two patches it requires) against real SGLang 0.5.23 resolution.

Stubs: SGLang's GPU-memory query and its CUDA default prefill graph backend (no GPU here).
"""

from __future__ import annotations

import pytest

from gemma4_kernels.harness.tiny_configs import FAMILIES, TEXT_ARCH
from tests.helpers import resolve

pytestmark = pytest.mark.usefixtures("gpu_memory", "cuda_prefill_graph_default")

TRIO = ("mm_lm_only", "prefill_graph_gate", "text_only_default")


def model_config(args):
    from sglang.srt.arg_groups.overrides import model_config_of

    return model_config_of(args)


@pytest.mark.parametrize("family", FAMILIES)
def test_text_only_by_default_with_graph_kept_off(install_only, tiny_checkpoint, family):
    model = tiny_checkpoint(family)
    stock_args, stock = resolve(model)
    assert stock.language_model_only is False and model_config(stock_args).is_multimodal

    rows = install_only(*TRIO)
    assert {rows[name]["state"] for name in TRIO} == {"applied"}
    args, view = resolve(model)
    assert view.language_model_only is True
    mc = model_config(args)
    assert mc.is_multimodal is False and mc.hf_config.language_model_only is True
    # Shipped together: turning multimodal off must not let the prefill graph capture Gemma 4.
    assert view.cuda_graph_config.prefill.backend == "disabled"


def test_default_equals_explicit_language_model_only(install_only, tiny_checkpoint):
    """Every resolved field matches `--language-model-only` given by hand."""
    model = tiny_checkpoint("dense")
    install_only(*TRIO)
    by_default, _ = resolve(model, random_seed=0)
    by_flag, _ = resolve(model, language_model_only=True, random_seed=0)
    assert by_default.resolved_dict() == by_flag.resolved_dict()


@pytest.mark.parametrize(
    "flags",
    [
        dict(enable_multimodal=True),
        dict(enable_broadcast_mm_inputs_process=True),
        dict(mm_enable_dp_encoder=True),
    ],
)
def test_multimodal_request_keeps_the_towers(install_only, tiny_checkpoint, flags, gemma4_logs):
    model = tiny_checkpoint("e2b")
    install_only(*TRIO)
    _, view = resolve(model, **flags)
    assert view.language_model_only is False
    assert any("keeps the vision/audio towers" in r.getMessage() for r in gemma4_logs.records)


def test_enable_multimodal_false_is_text_only(install_only, tiny_checkpoint):
    install_only(*TRIO)
    _, view = resolve(tiny_checkpoint("dense"), enable_multimodal=False)
    assert view.language_model_only is True


def test_causal_lm_architecture_is_untouched(install_only, tiny_checkpoint):
    model = tiny_checkpoint("dense", TEXT_ARCH)
    _, stock = resolve(model)
    install_only(*TRIO)
    _, view = resolve(model)
    assert view.language_model_only is stock.language_model_only is False


@pytest.mark.parametrize("missing", ["prefill_graph_gate", "mm_lm_only"])
def test_never_ships_without_its_requirements(install_only, tiny_checkpoint, missing):
    rows = install_only(*(name for name in TRIO if name != missing))
    assert rows["text_only_default"]["state"] == "skipped"
    assert f"requires {missing} is disabled" in rows["text_only_default"]["reason"]
    _, view = resolve(tiny_checkpoint("dense"))
    assert view.language_model_only is False


def test_stock_rejects_language_model_only_for_gemma4(tiny_checkpoint):
    with pytest.raises(ValueError, match="does not support"):
        resolve(tiny_checkpoint("dense"), language_model_only=True)


def test_mm_lm_only_allows_the_flag(install_only, tiny_checkpoint):
    install_only("mm_lm_only")
    args, view = resolve(tiny_checkpoint("moe"), language_model_only=True)
    assert view.language_model_only is True
    assert model_config(args).is_multimodal is False

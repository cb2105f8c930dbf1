"""swa_ratio_moe against the real SGLang 0.5.23 argument resolution on CPU."""

from __future__ import annotations

import pytest

import gemma4_kernels
from gemma4_kernels.harness.tiny_configs import MM_ARCH, TEXT_ARCH
from tests.helpers import resolve

ARCHS = (MM_ARCH, TEXT_ARCH)


def ratio(model_dir, **kwargs) -> float:
    args, _ = resolve(model_dir, **kwargs)
    return args.resolved_dict()["swa_full_tokens_ratio"]


@pytest.mark.parametrize("arch", ARCHS)
def test_moe_gets_015_and_stock_keeps_08(tiny_checkpoint, gpu_memory, arch, gemma4_logs):
    model = tiny_checkpoint("moe", arch)
    assert ratio(model) == pytest.approx(0.8)  # stock 0.5.23

    states = {row["name"]: row["state"] for row in gemma4_kernels.install()}
    assert states["swa_ratio_moe"] == "applied"
    assert ratio(model) == pytest.approx(0.15)
    assert any(
        "swa_full_tokens_ratio 0.8 -> 0.15" in r.getMessage() for r in gemma4_logs.records
    ), "the tune must log before -> after"


@pytest.mark.parametrize("family", ["dense", "e2b"])
def test_dense_models_keep_sglang_default(tiny_checkpoint, gpu_memory, family):
    model = tiny_checkpoint(family)
    gemma4_kernels.install()
    assert ratio(model) == pytest.approx(0.8)


@pytest.mark.parametrize("user_value", [0.5, 0.8, 0.15])
def test_user_value_is_never_touched(tiny_checkpoint, gpu_memory, user_value):
    model = tiny_checkpoint("moe")
    gemma4_kernels.install()
    assert ratio(model, swa_full_tokens_ratio=user_value) == pytest.approx(user_value)


def test_disabled_patch_leaves_stock(tiny_checkpoint, gpu_memory, monkeypatch):
    monkeypatch.setenv("GEMMA4_KERNELS_PATCHES", "-swa_ratio_moe")
    rows = {row["name"]: row for row in gemma4_kernels.install()}
    assert rows["swa_ratio_moe"]["state"] == "disabled"
    assert ratio(tiny_checkpoint("moe")) == pytest.approx(0.8)


def test_revert_removes_the_provider(tiny_checkpoint, gpu_memory):
    from sglang.srt.arg_groups import model_override_base as registry

    before = {k: list(v) for k, v in registry._MODEL_OVERRIDE_FNS.items()}
    gemma4_kernels.install()
    assert registry._MODEL_OVERRIDE_FNS[MM_ARCH][-1].__qualname__ == "SwaRatioMoE.provide"
    gemma4_kernels.revert()
    after = {k: list(v) for k, v in registry._MODEL_OVERRIDE_FNS.items()}
    assert after.keys() == before.keys()
    for key in before:
        assert all(a is b for a, b in zip(after[key], before[key], strict=True))
    assert ratio(tiny_checkpoint("moe")) == pytest.approx(0.8)

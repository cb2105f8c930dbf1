"""The prefix driver's extends (cached prefix, chunked, mixed) give the same last-token
logits as one full prefill through ``TinySGLangModel.generate`` (stock SGLang, fp32)."""

from __future__ import annotations

import pytest
import torch

from gemma4_kernels.harness.prefix_driver import PrefixDriver

PROMPTS = ((30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40), (5, 17, 300, 41, 9, 11, 2), (7, 8, 9))
ATOL = 1e-4  # fp32; the attention splits the same keys across different query tiles


@pytest.fixture(scope="module")
def model_and_full_prefill(tiny_families):
    from gemma4_kernels.harness.runtime import SGLangCpuRuntime
    from gemma4_kernels.harness.session import patches_installed

    path, _, weights = tiny_families.get("e2b")
    with patches_installed(()):
        model = SGLangCpuRuntime.get().load(path, weights)
    full = model.generate(PROMPTS, decode_steps=0, count_decode_step=None).logits[0]
    return model, full


def test_cached_prefix_and_mixed_one_token_extends_equal_a_full_prefill(model_and_full_prefill):
    model, full = model_and_full_prefill
    driver = PrefixDriver(model)
    a, b, c = (driver.add(p) for p in PROMPTS)
    driver.step([(a, len(PROMPTS[0]) - 1), (b, 4)])  # c not started yet
    got = driver.step([(a, len(PROMPTS[0])), (b, len(PROMPTS[1])), (c, len(PROMPTS[2]))])
    torch.testing.assert_close(got, full, atol=ATOL, rtol=0)


def test_chunked_prefill_equals_a_full_prefill(model_and_full_prefill):
    model, full = model_and_full_prefill
    torch.testing.assert_close(PrefixDriver(model).chunked(PROMPTS, 3), full, atol=ATOL, rtol=0)


def test_bad_plans_are_refused(model_and_full_prefill):
    model, _ = model_and_full_prefill
    driver = PrefixDriver(model)
    req = driver.add(PROMPTS[2])
    with pytest.raises(ValueError, match="at least one"):
        driver.step([])
    with pytest.raises(ValueError, match="cannot extend from 0 to 9"):
        driver.step([(req, 9)])
    with pytest.raises(ValueError, match="chunk must be >= 1"):
        driver.chunked(PROMPTS, 0)

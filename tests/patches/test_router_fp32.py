"""router_fp32: expert flips vs the fp32 HF router at the real size, and model parity."""

from __future__ import annotations

import pytest
import torch

from microbench.router_flips import measure

FIXES = ("triton_swa_decode_window", "cpu_router_scale")


def test_real_size_no_flips_patched_some_stock():
    result = measure(2816, 128, 8, tokens=1024)
    assert result["patched_logits_dtype"] == "float32"
    assert result["patched_flips"] == 0, result
    assert result["stock_flips"] > 0, result  # bf16 rounding moves experts in stock


def test_fp32_logits_equal_hf_router_math():
    from microbench.router_flips import build
    from sglang_patches.router_fp32 import fp32_router_logits

    reference, router = build(64, 8, 2)
    x = torch.randn(16, 64).to(torch.bfloat16)
    with torch.no_grad():
        expected = reference.proj(
            reference.norm(x.float()) * reference.scale * reference.scalar_root_size
        )
        torch.testing.assert_close(fp32_router_logits(router, x), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("with_triple", [False, True])
def test_moe_model_parity(tiny_families, with_triple):
    patches = ("router_fp32", *FIXES) + (("post_attn_triple_norm",) if with_triple else ())
    run = tiny_families.run("moe", patches)
    assert run.patch_states["router_fp32"] == "applied"
    assert run.report.ok(), run.report.step_max_abs

"""cpu_router_scale through SGLang's real Gemma 4 MoE forward on CPU vs HF."""

from __future__ import annotations

import torch

from gemma4_kernels.harness.parity import PARITY_ATOL
from sglang_patches import cpu_router_scale

WINDOW = 8


def test_stock_router_loses_its_scale_on_cpu(tiny_families):
    report = tiny_families.run("moe").report
    assert report.prefill_max_abs > 0.5, report.step_max_abs


def test_patched_router_matches_hf(tiny_families):
    run = tiny_families.run("moe", ("cpu_router_scale",))
    assert run.patch_states["cpu_router_scale"] == "applied"
    report = run.report
    assert report.prefill_max_abs <= PARITY_ATOL
    # Without the window fix, decode is exact until the window is crossed.
    assert report.decode_max_abs_where(lambda kv: kv < WINDOW) <= PARITY_ATOL


def test_probe_sees_the_defect_in_stock_sglang():
    assert cpu_router_scale.native_router_norm_applies_scale() is False


def test_an_upstream_fix_is_reported_as_upstream(monkeypatch):
    from sglang.srt.layers.layernorm import Gemma4RMSNorm

    def forward_native(self, x):  # an SGLang whose native norm always applies its weight
        normed = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)
        return (normed * (self.weight.float() + self.scale_shift)).type_as(x)

    monkeypatch.setattr(Gemma4RMSNorm, "forward_native", forward_native)
    result = cpu_router_scale.PATCH.check()
    assert result.upstream, result.reason


def test_patch_sets_with_scale_only_after_fusing(install_only):
    import types

    from sglang.srt.models.gemma4_causal import Gemma4Router

    install_only("cpu_router_scale")
    router = Gemma4Router(types.SimpleNamespace(hidden_size=8, rms_norm_eps=1e-6, num_experts=2))
    assert router.norm.with_scale is False
    router.fuse_scale()
    assert router.norm.with_scale is True

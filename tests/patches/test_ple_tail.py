"""ple_tail on SGLang's real E2B-like layers (CPU harness)."""

from __future__ import annotations

FIXES = ("triton_swa_decode_window", "cpu_router_scale")
TAIL_OPS = {
    "gemma4::rmsnorm_add": 1,
    "gemma4::gelu_tanh_mul": 1,
    "gemma4::rmsnorm_residual_scalar": 1,
}


def test_ple_layers_run_the_three_fused_ops_with_parity(tiny_families):
    stock = tiny_families.run("e2b", FIXES)
    patched = tiny_families.run("e2b", ("ple_tail", *FIXES))
    assert patched.patch_states["ple_tail"] == "applied"
    for index in range(len(patched.model.decoder_layers())):
        assert dict(patched.op_counts.layers[index].ours) == TAIL_OPS, index
        assert dict(stock.op_counts.layers[index].ours) == {}, index
    assert patched.report.ok(), patched.report.step_max_abs
    assert patched.generation.tokens == stock.generation.tokens


def test_layers_without_ple_are_untouched(tiny_families):
    for family in ("dense", "moe"):  # one counted decode step is enough to see no op
        run = tiny_families.run(family, ("ple_tail", *FIXES), decode_steps=1, count_decode_step=1)
        assert run.op_counts.per_layer("ours") == [0] * len(run.model.decoder_layers())
        assert run.report.ok(), (family, run.report.step_max_abs)

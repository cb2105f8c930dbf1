"""moe_gelu_tanh: where the erf GELU lives (SGLang's Triton MoE runner) and the decision
per runner; model-level parity through the CPU harness."""

from __future__ import annotations

import importlib

import pytest
import torch
import torch.nn.functional as F

from sglang_patches.moe_gelu_tanh import TANH, activation_for

FIXES = ("triton_swa_decode_window", "cpu_router_scale")


def backend(name: str):
    from sglang.srt.layers.moe.utils import MoeRunnerBackend

    return MoeRunnerBackend(name)


def test_triton_runner_on_gpu_gets_tanh():
    assert activation_for(backend("triton"), on_gpu=True) == (TANH, None)


def test_cpu_keeps_gelu_which_is_tanh_there():
    assert activation_for(backend("triton"), on_gpu=False) == (None, None)


@pytest.mark.parametrize("name", ["flashinfer_trtllm", "flashinfer_cutlass", "triton_kernel"])
def test_runners_without_tanh_are_refused_loudly(name):
    activation, refusal = activation_for(backend(name), on_gpu=True)
    assert activation is None and name in refusal and "erf" in refusal


@pytest.fixture
def triton_runner_on_cpu(tiny_families, monkeypatch):
    """SGLang's Triton MoE runner (fused_experts_impl) on CPU tensors, interpreted.

    Stubs, each only a platform query or a CUDA extension this machine lacks:
    the runtime's parallel groups come from a harness run; the expert-alignment step
    uses SGLang's own Triton align kernel (its CUDA small-batch path) instead of the
    sgl_kernel extension; the runner's torch branch must not see the harness's vllm
    import stub; the GEMM tile config is given (no tuned config for a CPU).
    """
    tiny_families.run("dense")  # parallel runtime up
    fused_moe = importlib.import_module("sglang.srt.layers.moe.moe_runner.triton_utils.fused_moe")
    align = importlib.import_module(
        "sglang.srt.layers.moe.moe_runner.triton_utils.moe_align_block_size"
    )
    small = importlib.import_module("sglang.kernels.ops.moe.moe_align_small_numel")
    monkeypatch.setattr(fused_moe, "_has_vllm_ops", False)
    monkeypatch.setattr(align, "_is_cuda", True)
    monkeypatch.setattr(align, "_CUDA_SMALL_BATCH_MAX_BUCKETS", 0)
    monkeypatch.setattr(align, "SMALL_NUMEL_LIMIT", small.SMALL_NUMEL_LIMIT, raising=False)
    monkeypatch.setattr(align, "moe_align_small_numel", small.moe_align_small_numel, raising=False)
    from sglang.srt.layers.moe.moe_runner.triton_utils import override_config

    tile = {"BLOCK_SIZE_M": 16, "BLOCK_SIZE_N": 32, "BLOCK_SIZE_K": 32, "GROUP_SIZE_M": 1}

    def run(hidden, w13, w2, weights, ids, activation):
        with override_config(tile):
            return fused_moe.fused_experts_impl(
                hidden, w13, w2, weights, ids, activation=activation, gate_up_interleaved=False
            )

    return run


@pytest.mark.parametrize("patched", [False, True], ids=["stock", "patched"])
def test_triton_runner_activation_step(triton_runner_on_cpu, monkeypatch, patched):
    experts, hidden, inter, tokens, top_k = 4, 32, 16, 5, 2
    g = torch.Generator().manual_seed(0)
    w13 = torch.randn(experts, 2 * inter, hidden, generator=g) * 0.3
    w2 = torch.randn(experts, hidden, inter, generator=g) * 0.3
    x = torch.randn(tokens, hidden, generator=g)
    probs = torch.softmax(torch.randn(tokens, experts, generator=g), -1)
    weights, ids = torch.topk(probs, top_k)
    weights = weights / weights.sum(-1, keepdim=True)

    seen = []
    real_gelu = F.gelu

    def spy(inp, approximate="none"):
        seen.append(approximate)
        return real_gelu(inp, approximate=approximate)

    monkeypatch.setattr(F, "gelu", spy)
    # What Gemma4MoE hands the Triton runner on CUDA: "gelu" stock, the patch's choice else.
    activation = activation_for(backend("triton"), on_gpu=True)[0] if patched else "gelu"
    out = triton_runner_on_cpu(x.clone(), w13, w2, weights, ids.to(torch.int32), activation)
    assert seen == (["tanh"] if patched else ["none"])  # erf GELU is the stock defect

    expected = torch.zeros(tokens, hidden)
    for t in range(tokens):
        for k in range(top_k):
            gate_up = w13[ids[t, k]] @ x[t]
            act = real_gelu(gate_up[:inter], approximate=seen[0]) * gate_up[inter:]
            expected[t] += weights[t, k] * (w2[ids[t, k]] @ act)
    # The interpreter emulates tf32 in tl.dot: ~1e-3 noise on these sums.
    torch.testing.assert_close(out, expected, rtol=1e-2, atol=5e-3)


def test_cpu_model_parity_unchanged(tiny_families):
    run = tiny_families.run("moe", ("moe_gelu_tanh", *FIXES))
    assert run.patch_states["moe_gelu_tanh"] == "applied"
    moe = next(m for m in run.model.model.modules() if type(m).__name__ == "Gemma4MoE")
    assert moe.experts.moe_runner_config.activation == "gelu"  # CPU: already tanh
    assert run.report.ok(), run.report.step_max_abs

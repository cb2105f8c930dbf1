"""Expert-choice drift of the MoE router: stock SGLang (bf16) vs router_fp32 vs the fp32 HF router.

    python -m microbench.router_flips [--tokens 8192]

A quality measurement, not a timing: for random bf16 hidden states and bf16 router
weights, the fraction of tokens whose selected top-K expert *set* differs from the HF
router run in fp32 (``Gemma4TextRouter`` with the same bf16 weights upcast). Stock is
SGLang 0.5.23's ``Gemma4Router`` with its CUDA-path math (the scale folded into the norm
weight in bf16, bf16 logits; on CPU ``cpu_router_scale`` makes the native path do the
same); patched is the same module under ``router_fp32``. Selection uses
``gemma4::moe_routing`` for all three (ties -> lower id). Rows where the fp32 reference
itself has an exact tie at the K-th place are counted separately.
"""

from __future__ import annotations

import argparse
import sys
import types

import torch

from microbench.common import report

SIZES = {"26B-A4B (H=2816, E=128, K=8)": (2816, 128, 8), "tiny MoE (H=64, E=8, K=2)": (64, 8, 2)}


def build(hidden: int, experts: int, top_k: int, seed: int = 0):
    from transformers import Gemma4TextConfig
    from transformers.models.gemma4.modeling_gemma4 import Gemma4TextRouter

    from gemma4_kernels.harness.cpu_shims import apply_cpu_shims

    apply_cpu_shims()
    from sglang.srt.models.gemma4_causal import Gemma4Router

    config = Gemma4TextConfig(
        hidden_size=hidden, num_experts=experts, top_k_experts=top_k, enable_moe_block=True
    )
    g = torch.Generator().manual_seed(seed)
    proj = (torch.randn(experts, hidden, generator=g) * 0.02).to(torch.bfloat16)
    scale = (torch.rand(hidden, generator=g) + 0.5).to(torch.bfloat16)
    reference = Gemma4TextRouter(config).float().eval()
    with torch.no_grad():
        reference.proj.weight.copy_(proj.float())
        reference.scale.copy_(scale.float())
    ns = types.SimpleNamespace(
        hidden_size=hidden, rms_norm_eps=config.rms_norm_eps, num_experts=experts
    )
    sglang_router = Gemma4Router(ns).to(torch.bfloat16).eval()
    with torch.no_grad():
        sglang_router.proj.weight.copy_(proj)
        sglang_router.scale.copy_(scale)
    return reference, sglang_router


def expert_sets(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    from gemma4_kernels.ops.routing import moe_routing_ref

    return moe_routing_ref(logits.float(), None, top_k)[1].sort(dim=-1).values


def measure(hidden: int, experts: int, top_k: int, tokens: int) -> dict:
    from gemma4_kernels.harness.session import patches_installed

    reference, router = build(hidden, experts, top_k)
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(tokens, hidden, generator=g) * 2).to(torch.bfloat16)
    with torch.no_grad():
        ref_logits = reference.proj(
            reference.norm(x.float()) * reference.scale * reference.scalar_root_size
        )
        with patches_installed(("cpu_router_scale",)):  # CPU runs the CUDA-path math
            router._scale_fused = False
            stock_logits = router(x)
        with patches_installed(("router_fp32",)) as states:
            assert states["router_fp32"] == "applied"
            patched_logits = router(x)
    top = torch.topk(ref_logits, top_k + 1, dim=-1).values
    tie = top[:, top_k - 1] == top[:, top_k]
    ref_sets = expert_sets(ref_logits, top_k)
    flips = {
        name: ((expert_sets(logits, top_k) != ref_sets).any(-1) & ~tie).sum().item()
        for name, logits in (("stock", stock_logits), ("patched", patched_logits))
    }
    return {
        "tokens": tokens,
        "reference_ties": int(tie.sum()),
        "stock_logits_dtype": str(stock_logits.dtype).replace("torch.", ""),
        "patched_logits_dtype": str(patched_logits.dtype).replace("torch.", ""),
        "stock_flips": flips["stock"],
        "stock_flip_rate": round(flips["stock"] / tokens, 5),
        "patched_flips": flips["patched"],
        "patched_flip_rate": round(flips["patched"] / tokens, 5),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--csv", default=None)
    args = parser.parse_args(argv)
    rows = [{"shape": name, **measure(*size, args.tokens)} for name, size in SIZES.items()]
    report(
        rows,
        "router-flips",
        "expert-set flips vs the fp32 HF router (quality, not timing)",
        args.csv,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Gemma 4 MoE routing: ours vs SGLang 0.5.23's kernels vs torch, one run (26B-A4B: E=128, K=8).

    python -m microbench.bench_routing [--tokens 1,2,4,...] [--csv PATH]

On a GPU: correctness first, then median µs per call (CUDA graphs for T <= 256, as
SGLang runs decode) for ours (gemma4::moe_routing), upstream's fused kernel
(gemma4_fused_routing), upstream's split path (torch.topk + gemma_routing_post_topk)
and HF's eager router math (``microbench.harness``); speedup of ours over each.

Without a GPU there are no timings. It reports, labelled as such: the launches per
call of each path on CUDA (a model read from the code) and static metrics of the
compiled sm_90a code (registers, spills, shared memory, SASS instructions) for ours
and upstream's fused kernel.
"""

from __future__ import annotations

import argparse
import sys

import torch

from microbench.common import report

DEFAULT_TOKENS = [2**i for i in range(14)]  # 1 .. 8192
EXPERTS, TOP_K = 128, 8

# Kernel launches per routing call on CUDA, read from the code (a model, not a count):
# torch.topk on CUDA = gatherTopK + bitonicSortKVInPlace (seed 002's profile).
LAUNCH_MODEL = {
    "ours (gemma4::moe_routing)": 1,
    "upstream fused (gemma4_fused_routing)": 1,
    "upstream split (torch.topk + gemma_routing_post_topk)": 3,
    "HF eager (softmax, topk, sum, div, index, mul)": 7,
}


def hf_eager(logits: torch.Tensor, scale: torch.Tensor, top_k: int):
    probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
    weights, ids = torch.topk(probs, top_k, dim=-1)
    weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights * scale[ids], ids


def gpu_rows(tokens: list[int]) -> list[dict]:
    """Ours vs SGLang's fused and split routing vs HF eager, same process and run."""
    from sglang.kernels.ops.moe.gemma4_routing import (
        gemma4_fused_routing,
        gemma_routing_post_topk,
    )

    from gemma4_kernels.ops.routing import moe_routing
    from microbench.harness import time_impls

    def upstream_split(logits, scale, top_k):
        values, ids = torch.topk(logits, k=top_k, dim=-1)
        return gemma_routing_post_topk(values, ids, scale)

    def same(ref, out):
        assert torch.equal(out[1].int(), ref[1].int())
        torch.testing.assert_close(out[0].float(), ref[0].float(), rtol=1e-5, atol=1e-6)

    rows = []
    scale = torch.rand(EXPERTS, device="cuda") + 0.5
    for t in tokens:
        logits = torch.randn(t, EXPERTS, device="cuda", dtype=torch.bfloat16)
        impls = {
            "ours": lambda x=logits: moe_routing(x, scale, TOP_K),
            "upstream_fused": lambda x=logits: gemma4_fused_routing(x, scale, TOP_K),
            "upstream_split": lambda x=logits: upstream_split(x, scale, TOP_K),
            "hf_eager": lambda x=logits: hf_eager(x, scale, TOP_K),
        }
        # bf16 logits and fp32 scale in; fp32 weights and int32 ids out.
        moved = t * EXPERTS * 2 + EXPERTS * 4 + 8 * t * TOP_K
        rows += time_impls(f"26B-A4B routing T={t}", t, impls, moved, check=same)
    return rows


def static_rows() -> list[dict]:
    from sglang.kernels.ops.moe.gemma4_routing import _gemma4_routing_kernel

    from gemma4_kernels.ops.routing import _moe_routing_kernel, _num_warps
    from microbench.static_metrics import compile_static

    ours_sig = {
        "logits_ptr": "*bf16",
        "scale_ptr": "*fp32",
        "weights_ptr": "*fp32",
        "ids_ptr": "*i32",
        "E": "i32",
        "K": "i32",
        "stride_t": "i32",
        "stride_e": "i32",
        "HAS_SCALE": "constexpr",
        "BLOCK_E": "constexpr",
        "BLOCK_K": "constexpr",
    }
    upstream_sig = {
        "gating_ptr": "*bf16",
        "per_expert_scale_ptr": "*fp32",
        "topk_weights_ptr": "*fp32",
        "topk_ids_ptr": "*i32",
        "stride_g_t": "i32",
        "E": "constexpr",
        "K": "constexpr",
        "BLOCK_E": "constexpr",
    }
    rows = []
    for experts in (EXPERTS, 1024, 4096):
        block_e = 1 << (experts - 1).bit_length()
        ours = compile_static(
            _moe_routing_kernel,
            ours_sig,
            {"HAS_SCALE": True, "BLOCK_E": block_e, "BLOCK_K": TOP_K},
            num_warps=_num_warps(block_e),
        )
        rows.append({"shape": f"routing E={experts} K={TOP_K}", "impl": "ours", **ours.as_dict()})
        if experts <= 1024:  # upstream asserts E <= 1024
            theirs = compile_static(
                _gemma4_routing_kernel,
                upstream_sig,
                {"E": experts, "K": TOP_K, "BLOCK_E": block_e},
                num_warps=1,
            )
            rows.append(
                {
                    "shape": f"routing E={experts} K={TOP_K}",
                    "impl": "upstream_fused",
                    **theirs.as_dict(),
                }
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", default=",".join(map(str, DEFAULT_TOKENS)))
    parser.add_argument("--csv", default=None, help="output path (default: microbench/results/)")
    args = parser.parse_args(argv)
    tokens = [int(t) for t in args.tokens.split(",") if t]

    if torch.cuda.is_available():
        rows = gpu_rows(tokens)
        kind = "GPU timings"
    else:
        print("no GPU: no timings. Reporting a launch model of the CUDA path and static metrics.")
        rows = [
            {"shape": "26B-A4B routing (any T)", "impl": name, "cuda_launches_model": n}
            for name, n in LAUNCH_MODEL.items()
        ]
        rows += static_rows()
        kind = "launch model + static sm_90a metrics (no timings)"
    report(rows, "routing", kind, args.csv)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Gemma 4 decoder-layer norm fusions: ours vs SGLang's op sequence vs torch eager.

    python -m microbench.bench_norms [--tokens 1,8,64,...] [--hidden 1536,2560,2816,5376]

On a GPU (not run yet in this repository): median µs per call for the MoE post-attention
block (``triple_rmsnorm`` vs SGLang's four norm modules vs eager) and the PLE tail's
pointwise part, GB/s from the bytes each must move and % of the device's peak HBM
bandwidth. Without a GPU: no timings; the launches per layer on CUDA (a model read from
the code, labelled) and static sm_90a metrics of our compiled kernels at each hidden
size (registers, spills, shared memory, SASS instructions).
"""

from __future__ import annotations

import argparse
import sys

import torch

from microbench.common import report

DEFAULT_TOKENS = [1, 8, 64, 256, 1024, 4096, 8192]
HIDDEN = {"E2B": 1536, "E4B": 2560, "26B-A4B": 2816, "31B": 5376}

# CUDA launches per decoder layer for each block, read from SGLang 0.5.23's code
# (targets map §2, §3) and from our patches: a model, not a measurement.
LAUNCH_MODEL = [
    {
        "block": "MoE post-attention norms (26B-A4B)",
        "stock": 4,
        "patched": 1,
        "ops": "post_attn norm, add+pre_ff norm, router norm, pre_ff_2 norm -> triple_rmsnorm",
    },
    {
        "block": "PLE tail pointwise (E2B/E4B)",
        "stock": 7,
        "patched": 3,
        "ops": "norm, add, gelu, mul, norm, add, scale -> rmsnorm_add, gelu_tanh_mul, "
        "rmsnorm_residual_scalar (2 GEMMs unchanged)",
    },
    {
        "block": "layer boundary, dense (31B)",
        "stock": 2,
        "patched": 1,
        "ops": "gemma_rmsnorm_residual_scalar, next input_layernorm -> layer_tail_next_norm",
    },
    {
        "block": "layer boundary, PLE (E2B/E4B, after ple_tail)",
        "stock": 2,
        "patched": 1,
        "ops": "rmsnorm_residual_scalar, next input_layernorm -> layer_tail_next_norm",
    },
    {
        "block": "layer boundary, MoE (26B-A4B)",
        "stock": 2,
        "patched": 2,
        "ops": "gemma_dual_rmsnorm_residual_scalar, next input_layernorm (not fused)",
    },
]


def gpu_rows(tokens: list[int], hidden_sizes: list[int]) -> list[dict]:
    """Ours vs SGLang's four norm modules vs eager, same process and run (harness)."""
    from sglang.srt.layers.layernorm import RMSNorm

    from gemma4_kernels.ops.norms import triple_rmsnorm, triple_rmsnorm_ref
    from microbench.harness import time_impls

    def same(ref, out):
        for r, o in zip(ref, out, strict=True):
            torch.testing.assert_close(o.float(), r.float(), rtol=2e-2, atol=2e-2)

    rows = []
    for hidden in hidden_sizes:
        norms = [RMSNorm(hidden).cuda().to(torch.bfloat16) for _ in range(4)]
        weights = [n.weight.data for n in norms]
        for t in tokens:
            a = torch.randn(t, hidden, device="cuda", dtype=torch.bfloat16)
            r = torch.randn_like(a)

            def stock(a=a, r=r, norms=norms):
                h = norms[0](a)
                pre, res = norms[1](h, r.clone())
                return res, pre, norms[2](res), norms[3](res)

            impls = {
                "ours": lambda a=a, r=r, w=weights: triple_rmsnorm(a, r, *w),
                "sglang_sequence": stock,
                "eager_reference": lambda a=a, r=r, w=weights: triple_rmsnorm_ref(a, r, *w, 1e-6),
            }
            # Bytes the fused block must move: read a, r; write four outputs; 4 weights.
            moved = 6 * t * hidden * 2 + 4 * hidden * 2
            rows += time_impls(f"H={hidden} triple T={t}", t, impls, moved, check=same)
    return rows


def static_rows(hidden_sizes: list[int]) -> list[dict]:
    # SGLang's own fused tail (what layer_tail_next_norm replaces together with the next
    # layer's input norm, a CUDA sgl_kernel RMSNorm that Triton cannot compile here).
    from sglang.kernels.ops.layernorm.gemma4_fused_ops import _gemma_rmsnorm_residual_kernel

    from gemma4_kernels.ops._common import row_block
    from gemma4_kernels.ops.gelu_tanh_mul import _gelu_tanh_mul_kernel
    from gemma4_kernels.ops.layer_tail_next_norm import _layer_tail_next_norm_kernel
    from gemma4_kernels.ops.norms import (
        _rmsnorm_add_kernel,
        _rmsnorm_pair_kernel,
        _triple_rmsnorm_kernel,
    )
    from microbench.static_metrics import compile_static, signature_of

    rows = []
    for hidden in hidden_sizes:
        block, warps = row_block(hidden)
        # SGLang launches it with its default num_warps (4) and BLOCK_SIZE = next pow2.
        metrics = compile_static(
            _gemma_rmsnorm_residual_kernel,
            signature_of(_gemma_rmsnorm_residual_kernel),
            {"HAS_SCALAR": True, "BLOCK_SIZE": block},
            num_warps=4,
        )
        rows.append({"shape": f"H={hidden}", "impl": "sglang", **metrics.as_dict()})
        unit = {"stride_ah": 1, "stride_rh": 1}
        cases = [
            (_triple_rmsnorm_kernel, {"BLOCK": block, **unit}, warps),
            (
                _rmsnorm_add_kernel,
                {"BLOCK": block, "HAS_SCALAR": True, "stride_xh": 1, "stride_rh": 1},
                warps,
            ),
            (_rmsnorm_pair_kernel, {"BLOCK": block, "stride_xh": 1}, warps),
            (
                _layer_tail_next_norm_kernel,
                {"BLOCK": block, "stride_xh": 1, "stride_rh": 1},
                warps,
            ),
        ]
        for fn, const, nw in cases:
            metrics = compile_static(fn, signature_of(fn), const, num_warps=nw)
            rows.append({"shape": f"H={hidden}", "impl": "ours", **metrics.as_dict()})
    metrics = compile_static(
        _gelu_tanh_mul_kernel,
        signature_of(_gelu_tanh_mul_kernel),
        {"COEF": 1.5957691216057308, "BLOCK": 256, "stride_gn": 1, "stride_un": 1},
        num_warps=4,
    )
    rows.append({"shape": "PLE gate N=256", "impl": "ours", **metrics.as_dict()})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", default=",".join(map(str, DEFAULT_TOKENS)))
    parser.add_argument("--hidden", default=",".join(str(h) for h in HIDDEN.values()))
    parser.add_argument("--csv", default=None)
    args = parser.parse_args(argv)
    tokens = [int(t) for t in args.tokens.split(",") if t]
    hidden_sizes = [int(h) for h in args.hidden.split(",") if h]
    if torch.cuda.is_available():
        rows, kind = gpu_rows(tokens, hidden_sizes), "GPU timings"
    else:
        print("no GPU: no timings. Reporting a launch model of the CUDA path and static metrics.")
        rows = [
            {
                "shape": m["block"],
                "impl": "model",
                "cuda_launches_stock": m["stock"],
                "cuda_launches_patched": m["patched"],
                "ops": m["ops"],
            }
            for m in LAUNCH_MODEL
        ]
        rows += static_rows(hidden_sizes)
        kind = "launch model + static sm_90a metrics (no timings)"
    report(rows, "norms", kind, args.csv)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Launches and HBM bytes of each fused op vs the CUDA kernels SGLang 0.5.23 runs instead.

The per-op view; ``layer_model.py`` models the whole decode step (every kernel of every
layer). A model, read from the code (sglang/srt/models/gemma4_causal.py on CUDA, targets
map §1-3, our patches), not a measurement: every kernel is listed with the tensors it must
read and write, and the roofline time is bytes / peak HBM bandwidth. GEMMs and attention
are not touched by these ops and are not in this view. Norms and routing run on whole rows on every
tensor-parallel rank, so the numbers are the same at TP 1 and 2.

Element counts per kernel (T tokens, H hidden, P per-layer-input width, E experts, K
top-k); activations bf16 (2 B), routing logits fp32 (``router_fp32``), weights H elements.
"""

from __future__ import annotations

from dataclasses import dataclass

from microbench.harness import roofline_seconds
from microbench.shapes import Case

ACT_BYTES = 2  # bf16 activations and norm weights


@dataclass(frozen=True)
class Kernel:
    name: str
    rows: float = 0.0  # T x H activation rows moved (reads + writes), bf16
    p_rows: float = 0.0  # T x P rows moved (PLE gate width), bf16
    weights: int = 0  # H-sized bf16 weight vectors read

    def bytes(self, case: Case) -> int:
        t, h, p = case.tokens, case.model.hidden, case.model.ple_dim
        return int((self.rows * t * h + self.p_rows * t * p + self.weights * h) * ACT_BYTES)


@dataclass(frozen=True)
class RoutingKernel(Kernel):
    """Top-K routing: fp32 logits [T, E] and scale [E] in; fp32 weights + int32 ids [T, K] out."""

    def bytes(self, case: Case) -> int:
        m = case.model
        return 4 * (case.tokens * m.experts + m.experts) + 8 * case.tokens * m.top_k


@dataclass(frozen=True)
class FusedOp:
    op: str  # our op(s)
    arch: str  # the layer structure that runs it
    stock: tuple[Kernel, ...]  # what SGLang 0.5.23 launches there on CUDA
    ours: tuple[Kernel, ...]
    note: str = ""


INPUT_NORM = Kernel("next input_layernorm", rows=2, weights=1)
ROUTING = FusedOp(
    "moe_routing",
    "moe",
    stock=(RoutingKernel("gemma4_fused_routing"),),
    ours=(RoutingKernel("moe_routing"),),
    note="same launches and bytes; ours is HF-exact for ties/NaN and E > 1024",
)
TRIPLE = FusedOp(
    "triple_rmsnorm",
    "moe",
    stock=(
        Kernel("post_attention_layernorm", rows=2, weights=1),
        Kernel("fused add + pre_feedforward_layernorm", rows=4, weights=1),
        Kernel("router norm", rows=2, weights=1),
        Kernel("pre_feedforward_layernorm_2", rows=2, weights=1),
    ),
    ours=(Kernel("triple_rmsnorm", rows=6, weights=4),),
    note="read attn_out, residual; write residual, pre_ff, router_in, pre_ff_2",
)
PLE_TAIL = FusedOp(
    "ple_tail: rmsnorm_add + gelu_tanh_mul + rmsnorm_residual_scalar",
    "ple",
    stock=(
        Kernel("post_feedforward_layernorm", rows=2, weights=1),
        Kernel("+ residual", rows=3),
        Kernel("gelu_tanh(gate)", p_rows=2),
        Kernel("x per_layer_input", p_rows=3),
        Kernel("post_per_layer_input_norm", rows=2, weights=1),
        Kernel("+ h", rows=3),
        Kernel("x layer_scalar", rows=2),
    ),
    ours=(
        Kernel("rmsnorm_add", rows=3, weights=1),
        Kernel("gelu_tanh_mul", p_rows=3),
        Kernel("rmsnorm_residual_scalar", rows=3, weights=1),
    ),
    note="pointwise part; the two GEMMs are unchanged",
)
DENSE_BOUNDARY = FusedOp(
    "layer_tail_next_norm",
    "dense",
    stock=(Kernel("gemma_rmsnorm_residual_scalar", rows=3, weights=1), INPUT_NORM),
    ours=(Kernel("layer_tail_next_norm", rows=4, weights=2),),
    note="layer_boundary_fusion; the last layer feeds the final norm",
)
PLE_BOUNDARY = FusedOp(
    "layer_tail_next_norm",
    "ple",
    stock=(Kernel("rmsnorm_residual_scalar", rows=3, weights=1), INPUT_NORM),
    ours=(Kernel("layer_tail_next_norm", rows=4, weights=2),),
    note="layer_boundary_fusion after ple_tail (baseline: ple_tail applied)",
)

OPS: tuple[FusedOp, ...] = (ROUTING, TRIPLE, PLE_TAIL, DENSE_BOUNDARY, PLE_BOUNDARY)


def rows(cases: list[Case], ops: list[str] | None = None) -> list[dict]:
    """One row per (case, fused op): launches, modelled bytes and roofline ns per layer."""
    wanted = set(ops or ())
    known = {o.op for o in OPS}
    if wanted - known:
        raise ValueError(f"unknown op(s) {sorted(wanted - known)}; choose from {sorted(known)}")
    out = []
    for case in cases:
        for op in OPS:
            if op.arch != case.model.arch or (wanted and op.op not in wanted):
                continue
            stock = sum(k.bytes(case) for k in op.stock)
            ours = sum(k.bytes(case) for k in op.ours)
            row = {
                "shape": case.label,
                "op": op.op,
                "what": "model (CUDA path, per layer)",
                "launches_stock": len(op.stock),
                "launches_ours": len(op.ours),
                "bytes_stock": stock,
                "bytes_ours": ours,
                "bytes_ratio": round(stock / ours, 3),
            }
            for device in ("H100", "H200"):
                row[f"roofline_ns_stock_{device}"] = round(roofline_seconds(stock, device) * 1e9, 2)
                row[f"roofline_ns_ours_{device}"] = round(roofline_seconds(ours, device) * 1e9, 2)
            out.append(row)
    return out

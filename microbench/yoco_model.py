"""What YOCO fast prefill saves per prefill on E2B / E4B: rows x layers and FLOPs.

**A model, not a measurement.** For a prefill of ``prompts`` requests of ``prompt_len``
tokens, stock SGLang runs every token through every layer; with ``yoco_fast_prefill``
the KV-shared layers run one row per request. Per avoided row of a shared layer the
model counts the matmul FLOPs that row would have cost (2 x MACs):

    q_proj 2*H*(nq*d) + o_proj 2*(nq*d)*H              (shared layers project no K/V)
    attention 2*2*nq*d*ctx        ctx = keys it attends: p+1, or min(p+1, window) sliding
    MLP 2*3*H*I  (I doubled on shared layers with use_double_wide_mlp)
    PLE gate + projection 2*2*H*P

``d`` is head_dim on sliding layers and global_head_dim on full ones. Norms and other
pointwise work are left out (memory-bound, small). Stock totals add the non-shared
layers' K/V projections; the LM head is the same on both paths (pruned to last rows).
Configs: ``layer_kernels/ple_e2b.json`` / ``ple_e4b.json`` (sources recorded there).

    python -m microbench.yoco_model [--prompts 30 --prompt-len 7000] [--csv out.csv]
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Any

from microbench.layer_model import load

MODELS = ("E2B", "E4B")  # configs from layer_model's data files


@dataclass(frozen=True)
class TextShape:
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    global_head_dim: int
    window: int
    ple: int
    layer_types: tuple[str, ...]
    shared: int
    double_wide: bool

    @property
    def first_shared(self) -> int:
        return len(self.layer_types) - self.shared


def default_layer_types(layers: int) -> tuple[str, ...]:
    """transformers' Gemma4TextConfig default: 5 sliding then 1 full, last layer full."""
    types = ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(layers)]
    types[-1] = "full_attention"
    return tuple(types)


def load_shape(model: str) -> TextShape:
    config = load(model)["config"]
    layers = config["num_hidden_layers"]
    return TextShape(
        hidden=config["hidden_size"],
        intermediate=config["intermediate_size"],
        heads=config["num_attention_heads"],
        kv_heads=config["num_key_value_heads"],
        head_dim=config["head_dim"],
        global_head_dim=config["global_head_dim"],
        window=config["sliding_window"],
        ple=config["hidden_size_per_layer_input"],
        layer_types=tuple(config.get("layer_types") or default_layer_types(layers)),
        shared=config["num_kv_shared_layers"],
        double_wide=bool(config.get("use_double_wide_mlp")),
    )


def attended_keys(prompt_len: int, window: int | None) -> int:
    """Sum over positions p < prompt_len of the keys row p attends."""
    if window is None or window >= prompt_len:
        return prompt_len * (prompt_len + 1) // 2
    ramp = window * (window + 1) // 2  # p < window: p + 1 keys
    return ramp + (prompt_len - window) * window


def layer_flops(s: TextShape, layer: int, rows: int, keys: int) -> int:
    """Matmul FLOPs of ``rows`` rows through ``layer`` (``keys``: attended keys summed)."""
    sliding = s.layer_types[layer] == "sliding_attention"
    d = s.head_dim if sliding else s.global_head_dim
    shared = layer >= s.first_shared
    inter = s.intermediate * (2 if shared and s.double_wide else 1)
    per_row = 2 * s.hidden * s.heads * d * 2 + 2 * 3 * s.hidden * inter + 2 * 2 * s.hidden * s.ple
    if not shared:
        per_row += 2 * s.hidden * s.kv_heads * d * 2  # K and V projections
    return rows * per_row + 2 * 2 * s.heads * d * keys


def prefill_model(s: TextShape, prompts: int, prompt_len: int) -> dict[str, Any]:
    stock = yoco = 0
    for layer, kind in enumerate(s.layer_types):
        window = s.window if kind == "sliding_attention" else None
        all_keys = attended_keys(prompt_len, window)
        full = layer_flops(s, layer, prompt_len, all_keys) * prompts
        stock += full
        if layer < s.first_shared:
            yoco += full
        else:  # the last row only: it attends min(prompt_len, window) keys
            last = prompt_len if window is None else min(prompt_len, window)
            yoco += layer_flops(s, layer, 1, last) * prompts
    return {
        "prompts": prompts,
        "prompt_len": prompt_len,
        "layers": len(s.layer_types),
        "kv_shared_layers": s.shared,
        "rows_x_layers_stock": prompts * prompt_len * len(s.layer_types),
        "rows_x_layers_avoided": prompts * (prompt_len - 1) * s.shared,
        "tflops_stock": round(stock / 1e12, 3),
        "tflops_yoco": round(yoco / 1e12, 3),
        "flops_avoided_pct": round(100 * (stock - yoco) / stock, 1),
        "model_bound_speedup": round(stock / yoco, 3),
    }


def main(argv: list[str] | None = None) -> int:
    from microbench.common import report

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=30)
    parser.add_argument("--prompt-len", type=int, default=7000)
    parser.add_argument("--csv", default=None)
    args = parser.parse_args(argv)
    if args.prompts < 1 or args.prompt_len < 1:
        parser.error("--prompts and --prompt-len must be >= 1")
    rows = [
        {"model": name, **prefill_model(load_shape(name), args.prompts, args.prompt_len)}
        for name in MODELS
    ]
    report(rows, "yoco-model", "YOCO fast prefill: FLOPs model (not a measurement)", args.csv)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Extend attention on Gemma 4 shapes: SGLang's stock tile vs the tile table, one run.

On a GPU every shape runs SGLang 0.5.23's real ``extend_attention_fwd`` twice (its own
tile; the table's tile through the ``extend_attention_tiles`` launcher), checks the two
outputs agree, and reports microseconds and the speedup (CSV). Without a GPU only
``--dry-run`` is accepted: it builds every shape, resolves the table (the file or
``$GEMMA4_KERNELS_EXTEND_TILES``) for the arch given by ``--arch`` and reports the tile
each shape would take; no timings.

    python -m microbench.bench_extend_attention [--shapes seed|models|all] [--csv out.csv]
    python -m microbench.bench_extend_attention --dry-run --arch sm_90
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, dataclass
from typing import Any

DENSE_MODELS = ("31B", "E4B", "E2B")  # configs from layer_model's data files


@dataclass(frozen=True)
class AttnShape:
    """One extend-attention call: a request batch on one layer of one TP shard."""

    name: str
    batch: int
    extend: int
    prefix: int
    window: int  # HF sliding window (SGLang's radius is window - 1); -1 = full attention
    q_heads: int
    kv_heads: int
    head_dim: int = 256

    @property
    def radius(self) -> int:
        return self.window - 1 if self.window > 0 else -1


def seed_shapes() -> list[AttnShape]:
    """Seed 002's six H100 call shapes (26B-A4B at TP 2: 8 q / 4 kv heads per shard)."""
    heads = dict(q_heads=8, kv_heads=4)
    return [
        AttnShape("26B-A4B TP2 prefill long", 1, 8192, 0, -1, **heads),
        AttnShape("26B-A4B TP2 prefill chat", 1, 1000, 0, -1, **heads),
        AttnShape("26B-A4B TP2 verify chat", 32, 4, 1000, 1024, **heads),
        AttnShape("26B-A4B TP2 verify summ", 32, 4, 8000, 1024, **heads),
        AttnShape("26B-A4B TP2 verify burst", 32, 4, 64, 1024, **heads),
        AttnShape("26B-A4B TP2 prefill multi", 4, 1000, 0, -1, **heads),
    ]


def model_shapes() -> list[AttnShape]:
    """31B / E4B / E2B sliding layers (head_dim 256) at TP 1 and 2: MTP verify at batch 32
    and 4 (4 draft tokens, 1000-token context) and a one-request chat prefill."""
    shapes = []
    from microbench.layer_model import load

    for model in DENSE_MODELS:
        config = load(model)["config"]
        for tp in (1, 2):
            heads = dict(
                q_heads=config["num_attention_heads"] // tp,
                kv_heads=max(1, config["num_key_value_heads"] // tp),  # replicated below TP
                head_dim=config["head_dim"],
            )
            window = config["sliding_window"]
            tag = f"{model} TP{tp}"
            shapes += [
                AttnShape(f"{tag} verify bs32", 32, 4, 1000, window, **heads),
                AttnShape(f"{tag} verify bs4", 4, 4, 1000, window, **heads),
                AttnShape(f"{tag} prefill chat", 1, 1000, 0, window, **heads),
            ]
    return shapes


SHAPE_SETS = {"seed": seed_shapes, "models": model_shapes}


def select_shapes(which: str) -> list[AttnShape]:
    if which == "all":
        return seed_shapes() + model_shapes()
    if which not in SHAPE_SETS:
        raise ValueError(f"--shapes must be one of {sorted(SHAPE_SETS) + ['all']}, got {which!r}")
    return SHAPE_SETS[which]()


def check_shape(shape: AttnShape) -> None:
    if min(shape.batch, shape.extend, shape.q_heads, shape.kv_heads) < 1 or shape.prefix < 0:
        raise ValueError(f"{shape.name}: sizes must be positive ({shape})")
    if shape.q_heads % shape.kv_heads:
        raise ValueError(
            f"{shape.name}: q heads {shape.q_heads} not a multiple of {shape.kv_heads}"
        )


def make_inputs(shape: AttnShape, device: str, dtype: Any = None) -> dict[str, Any]:
    """Tensors of one call; the prefix sits at scattered pool slots, as in a server."""
    import torch

    check_shape(shape)
    dtype = dtype or torch.bfloat16
    g = torch.Generator(device="cpu").manual_seed(0)
    tokens, slots = shape.batch * shape.extend, shape.batch * shape.prefix

    def rand(*size):
        return torch.randn(*size, generator=g).to(device=device, dtype=dtype)

    return dict(
        q_extend=rand(tokens, shape.q_heads, shape.head_dim),
        k_extend=rand(tokens, shape.kv_heads, shape.head_dim),
        v_extend=rand(tokens, shape.kv_heads, shape.head_dim),
        o_extend=torch.empty(tokens, shape.q_heads, shape.head_dim, device=device, dtype=dtype),
        k_buffer=rand(slots + 1, shape.kv_heads, shape.head_dim),
        v_buffer=rand(slots + 1, shape.kv_heads, shape.head_dim),
        qo_indptr=torch.arange(0, tokens + 1, shape.extend, dtype=torch.int32, device=device),
        kv_indptr=torch.arange(shape.batch + 1, dtype=torch.int32, device=device) * shape.prefix,
        kv_indices=torch.randperm(slots, generator=g).to(device),
        max_len_extend=shape.extend,
    )


def call(launcher: Any, x: dict[str, Any], shape: AttnShape) -> Any:
    """One extend-attention call of SGLang's launcher signature."""
    return launcher(
        x["q_extend"], x["k_extend"], x["v_extend"], x["o_extend"], x["k_buffer"],
        x["v_buffer"], x["qo_indptr"], x["kv_indptr"], x["kv_indices"], None, True, None,
        x["max_len_extend"], 1.0, 1.0, sm_scale=1.0, sliding_window_size=shape.radius,
    )  # fmt: skip


def table_tile(shape: AttnShape, arch: str | None) -> str:
    from gemma4_kernels.extend_tiles import active_table

    entry = active_table().lookup(arch, shape.head_dim, shape.batch, shape.extend, shape.radius > 0)
    return entry.tile.label() if entry else "sglang (no entry)"


def time_us(fn: Any) -> float:
    from triton.testing import do_bench

    return do_bench(fn, warmup=25, rep=200) * 1000.0


def gpu_rows(shapes: list[AttnShape]) -> list[dict[str, Any]]:
    import torch
    from sglang.kernels.ops.attention import extend_attention as ea

    from gemma4_kernels.extend_tiles import current_arch
    from sglang_patches.extend_attention_tiles import PATCH

    PATCH.apply()  # idempotent; outside a tiled launch SGLang's behaviour is unchanged
    tiled = PATCH.tiled("extend_attention_fwd", ea.extend_attention_fwd)
    arch, rows = current_arch(), []
    for shape in shapes:
        x = make_inputs(shape, "cuda")
        call(ea.extend_attention_fwd, x, shape)
        stock_out = x["o_extend"].clone()
        call(tiled, x, shape)
        torch.testing.assert_close(x["o_extend"], stock_out, atol=2e-2, rtol=2e-2)
        stock = time_us(lambda x=x, s=shape: call(ea.extend_attention_fwd, x, s))
        table = time_us(lambda x=x, s=shape: call(tiled, x, s))
        rows.append({**asdict(shape), "tile": table_tile(shape, arch), "stock_us": round(stock, 2),
                     "table_us": round(table, 2), "speedup": round(stock / table, 3)})  # fmt: skip
    return rows


def dry_rows(shapes: list[AttnShape], arch: str) -> list[dict[str, Any]]:
    rows = []
    for shape in shapes:
        x = make_inputs(shape, "cpu")
        assert x["q_extend"].shape[0] == shape.batch * shape.extend
        rows.append({**asdict(shape), "tile": table_tile(shape, arch), "stock_us": "",
                     "table_us": "", "speedup": ""})  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    import torch

    from microbench.common import report

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="all", help="seed | models | all")
    parser.add_argument("--dry-run", action="store_true", help="no timing: shapes + table only")
    parser.add_argument("--arch", default="sm_90", help="arch the dry run resolves tiles for")
    parser.add_argument("--csv", default=None)
    args = parser.parse_args(argv)
    shapes = select_shapes(args.shapes)
    if args.dry_run:
        rows = dry_rows(shapes, args.arch)
        report(
            rows, "extend-attention-dry", f"dry run, tiles for {args.arch} (no timings)", args.csv
        )
        return 0
    if not torch.cuda.is_available():
        print("bench_extend_attention: no GPU here; timings need CUDA (use --dry-run on CPU)",
              file=sys.stderr)  # fmt: skip
        return 2
    report(gpu_rows(shapes), "extend-attention", "GPU timings (us)", args.csv)
    return 0


if __name__ == "__main__":
    sys.exit(main())

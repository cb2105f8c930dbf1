"""Tune the extend-attention tile table on a GPU: sweep tiles over Gemma 4 shapes, check
each winner against SGLang's default tile, write a table file.

For every shape (``bench_extend_attention``'s seed + model shapes) each candidate
(BLOCK_M x BLOCK_N x warps x stages, pruned by the table's own load-time checks) runs
SGLang's real ``_fwd_kernel`` through the ``extend_attention_tiles`` launcher; shapes are
grouped by the table's regimes (batch < 8; batch >= 8 with extends <= 16; batch >= 8
with longer extends) and each regime takes the candidate with the best geometric-mean
time relative to the default tile. A winner whose output differs from the default
tile's beyond bf16 noise is discarded. The result is a table file for
``GEMMA4_KERNELS_EXTEND_TILES`` (the shipped table changes only by a reviewed commit).

    python -m microbench.tune_extend_attention --out tuned.json [--shapes seed]
    python -m microbench.tune_extend_attention --dry-run --out tuned.json   # CPU: I/O only

Without a GPU it refuses (exit 2) unless ``--dry-run``: then it validates the shapes and
every candidate, and writes the current table through the same writer, untimed.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from pathlib import Path
from typing import Any

from gemma4_kernels import extend_tiles
from microbench.bench_extend_attention import AttnShape, call, make_inputs, select_shapes

BLOCK_M = (16, 32, 64, 128)
BLOCK_N = (32, 64, 128)
WARPS = (4, 8)
STAGES = (1, 2, 3)
# The table's regimes: (name, batch range, max_extend range).
REGIMES = (
    ("prefill (batch < 8)", [1, 7], None),
    ("verify (batch >= 8, extend <= 16)", [8, None], [1, 16]),
    ("multi-prefill (batch >= 8, extend > 16)", [8, None], [17, None]),
)


def regime_of(shape: AttnShape) -> int:
    if shape.batch < 8:
        return 0
    return 1 if shape.extend <= 16 else 2


def candidates(arch: str, head_dim: int) -> list[extend_tiles.Tile]:
    """Every swept tile the table would accept for ``arch`` at ``head_dim``."""
    out = []
    for bm, bn, warps, stages in itertools.product(BLOCK_M, BLOCK_N, WARPS, STAGES):
        raw = dict(arch=arch, head_dim=[head_dim, head_dim], block_m=bm, block_n=bn,
                   num_warps=warps, num_stages=stages, source="candidate")  # fmt: skip
        try:
            extend_tiles.parse_table({"schema": 1, "entries": [raw]}, "candidate")
        except extend_tiles.TileTableError:
            continue
        out.append(extend_tiles.Tile(bm, bn, warps, stages))
    return out


def entries_from(winners: dict[int, tuple[extend_tiles.Tile, float, list[str]]], arch: str,
                 head_dims: list[int], device: str) -> list[dict[str, Any]]:  # fmt: skip
    entries = []
    for regime, (tile, gain, names) in sorted(winners.items()):
        name, batch, max_extend = REGIMES[regime]
        entry = dict(arch=arch, head_dim=[min(head_dims), max(head_dims)], batch=batch,
                     block_m=tile.block_m, block_n=tile.block_n, num_warps=tile.num_warps,
                     num_stages=tile.num_stages,
                     source=f"tune_extend_attention on {device}: {name}, geomean "
                            f"{gain:.3f}x of the default tile over {', '.join(names)}")  # fmt: skip
        if max_extend is not None:
            entry["max_extend"] = max_extend
        entries.append(entry)
    return entries


def tune(shapes: list[AttnShape]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    import torch
    from sglang.kernels.ops.attention import extend_attention as ea

    from microbench.bench_extend_attention import time_us
    from microbench.common import device_name
    from sglang_patches import extend_attention_tiles as eat

    arch = extend_tiles.current_arch()
    eat.PATCH.apply()  # the scope below sets SGLang's tile function and kernel stages
    rows, ratios = [], {}
    for shape in shapes:
        x = make_inputs(shape, "cuda")
        call(ea.extend_attention_fwd, x, shape)  # SGLang's default tile: the reference
        want = x["o_extend"].clone()
        base = time_us(lambda x=x, s=shape: call(ea.extend_attention_fwd, x, s))
        for tile in candidates(arch, shape.head_dim):
            entry = extend_tiles.TileEntry(arch, extend_tiles.ANY, extend_tiles.ANY,
                                           extend_tiles.ANY, "any", tile, "candidate")  # fmt: skip
            try:
                with eat._entry_scope(entry):
                    call(ea.extend_attention_fwd, x, shape)
                    ok = torch.allclose(x["o_extend"], want, atol=2e-2, rtol=2e-2)
                    us = time_us(lambda x=x, s=shape: call(ea.extend_attention_fwd, x, s))
            except Exception as exc:  # out of resources for this shape: not a candidate
                rows.append(dict(shape=shape.name, tile=tile.label(), error=str(exc)[:80]))
                continue
            rows.append(dict(shape=shape.name, tile=tile.label(), us=round(us, 2),
                             default_us=round(base, 2), matches_default=ok))  # fmt: skip
            if ok:
                ratios.setdefault(regime_of(shape), {}).setdefault(tile, {})[shape.name] = base / us
    winners = {}
    for regime, by_tile in ratios.items():
        names = sorted({n for r in by_tile.values() for n in r})
        complete = {t: r for t, r in by_tile.items() if len(r) == len(names)}
        tile, r = max(complete.items(), key=lambda kv: math.prod(kv[1].values()))
        winners[regime] = (tile, math.prod(r.values()) ** (1 / len(r)), names)
    head_dims = sorted({s.head_dim for s in shapes})
    return entries_from(winners, arch, head_dims, device_name()), rows


def write_table(entries: list[dict[str, Any]], out: str, description: str) -> Path:
    doc = extend_tiles.dump_table(entries, description)
    path = Path(out)
    path.write_text(json.dumps(doc, indent=2) + "\n")
    extend_tiles.load_table(path)  # what was written loads back
    return path


def main(argv: list[str] | None = None) -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="all", help="seed | models | all")
    parser.add_argument("--out", required=True, help="table file to write")
    parser.add_argument("--dry-run", action="store_true", help="validate shapes and I/O only")
    parser.add_argument("--arch", default="sm_90", help="arch the dry run validates for")
    args = parser.parse_args(argv)
    shapes = select_shapes(args.shapes)
    if args.dry_run:
        for shape in shapes:
            make_inputs(shape, "cpu")
        counts = {d: len(candidates(args.arch, d)) for d in sorted({s.head_dim for s in shapes})}
        current = json.loads(extend_tiles.DEFAULT_TABLE.read_text())["entries"]
        path = write_table(current, args.out, "dry run: the shipped table, rewritten untimed")
        print(f"dry run: {len(shapes)} shapes valid; candidates per head_dim {counts}; "
              f"regimes {[r[0] for r in REGIMES]}; no timings; wrote {path}")  # fmt: skip
        return 0
    if not torch.cuda.is_available():
        print("tune_extend_attention: needs a CUDA GPU to time tiles; on CPU use --dry-run",
              file=sys.stderr)  # fmt: skip
        return 2
    entries, rows = tune(shapes)
    from microbench.common import report

    report(rows, "extend-attention-tune", "tile sweep (us)", None)
    path = write_table(entries, args.out, f"tuned on {torch.cuda.get_device_name()}")
    print(f"wrote {path}: {len(entries)} entries")
    return 0


if __name__ == "__main__":
    sys.exit(main())

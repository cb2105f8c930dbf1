"""Static sm_90a metrics of every extend-attention tile the table ships, beside SGLang's.

No GPU needed: SGLang 0.5.23's real launcher (``extend_attention_fwd``) is called on CPU
tensors with its kernel replaced by a recorder, so the arguments, constants and launch
options are exactly what it would launch; ``static_metrics.compile_launch`` then builds
that launch for sm_90a and reads registers, spills, shared memory, SASS count, the MMA
kind and the ``cp.async`` count (the software pipeliner's loads). Our sliding-window
kernel (``gemma4::extend_attention_swa``) is compiled the same way through its launcher.

Shape: Gemma 4 26B-A4B at TP 2 (the seed's profile): 8 query / 4 KV heads per shard,
head_dim 256, bf16, page size 1; sliding layers use SGLang's radius 1023.

    python -m microbench.extend_attention_static            # print + write the data file
    python -m microbench.extend_attention_static --check    # recompile, compare with it

A table entry that spills more than the stock tile (same window) is flagged: it stays
out of the shipped table until a GPU timing justifies it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parent / "results" / "extend_attention_static_sm90.json"
HEADS, KV_HEADS, HEAD_DIM = 8, 4, 256
RADIUS = 1023
# SGLang 0.5.23's Hopper branch for 128 < Lq <= 256 (extend_attention.py l.112-119, 140;
# num_stages 1 at l.1076): the pin on _get_block_sizes_for_extend_attention guards it.
STOCK_HOPPER = (64, 64, 8, 1)
COMPARED = ("registers", "spill_store_bytes", "spill_load_bytes", "shared_bytes", "mma",
            "async_copies", "sass_instructions")  # fmt: skip


class _Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[tuple, dict]] = []

    def __getitem__(self, grid: Any):
        def record(*args: Any, **kwargs: Any) -> None:
            self.calls.append((args, kwargs))

        return record


@contextlib.contextmanager
def _swapped(module: Any, **values: Any) -> Iterator[None]:
    saved = {name: getattr(module, name) for name in values}
    for name, value in values.items():
        setattr(module, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(module, name, value)


def _inputs():
    import torch

    batch, ext, prefix = 8, 4, 64
    tokens = batch * ext
    bf16 = torch.bfloat16
    return dict(
        q=torch.zeros(tokens, HEADS, HEAD_DIM, dtype=bf16),
        k=torch.zeros(tokens, KV_HEADS, HEAD_DIM, dtype=bf16),
        v=torch.zeros(tokens, KV_HEADS, HEAD_DIM, dtype=bf16),
        o=torch.zeros(tokens, HEADS, HEAD_DIM, dtype=bf16),
        k_buffer=torch.zeros(batch * prefix + 16, KV_HEADS, HEAD_DIM, dtype=bf16),
        v_buffer=torch.zeros(batch * prefix + 16, KV_HEADS, HEAD_DIM, dtype=bf16),
        qo_indptr=torch.arange(0, tokens + 1, ext, dtype=torch.int32),
        kv_indptr=torch.arange(0, batch * prefix + 1, prefix, dtype=torch.int32),
        kv_indices=torch.arange(batch * prefix, dtype=torch.int64),
        max_len_extend=ext,
    )


def sglang_launch(tile: tuple[int, int, int, int], sliding: bool) -> tuple[Any, tuple, dict]:
    """(kernel, args, kwargs) SGLang's extend_attention_fwd launches with ``tile``."""
    from sglang.kernels.ops.attention import extend_attention as ea

    block_m, block_n, warps, stages = tile
    from sglang_patches.extend_attention_tiles import StagedKernel

    kernel = ea._fwd_kernel
    if isinstance(kernel, StagedKernel):  # our patch is installed: compile SGLang's kernel
        kernel = kernel.kernel
    recorder = _Recorder()

    def block_sizes(lq: int, lv: int) -> tuple:
        return HEAD_DIM, 0, HEAD_DIM, block_m, block_n, warps

    x = _inputs()
    with _swapped(ea, _fwd_kernel=recorder, _get_block_sizes_for_extend_attention=block_sizes):
        ea.extend_attention_fwd(
            x["q"], x["k"], x["v"], x["o"], x["k_buffer"], x["v_buffer"], x["qo_indptr"],
            x["kv_indptr"], x["kv_indices"], None, True, None, x["max_len_extend"], 1.0, 1.0,
            sm_scale=1.0, sliding_window_size=RADIUS if sliding else -1,
        )  # fmt: skip
    (args, kwargs) = recorder.calls[-1]
    return kernel, args, {**kwargs, "num_stages": stages}


def swa_launch(tile: tuple[int, int, int, int]) -> tuple[Any, tuple, dict]:
    """(kernel, args, kwargs) our sliding-window kernel launches with ``tile``."""
    from gemma4_kernels.ops import extend_attention_swa as ours

    block_m, block_n, warps, stages = tile
    kernel, recorder = ours._extend_swa_kernel, _Recorder()
    x = _inputs()
    with _swapped(ours, _extend_swa_kernel=recorder):
        ours._launch(
            x["q"], x["k"], x["v"], x["o"], x["k_buffer"], x["v_buffer"], x["qo_indptr"],
            x["kv_indptr"], x["kv_indices"], x["max_len_extend"], 1.0, RADIUS, 0.0, 1.0,
            block_m, block_n, warps, stages,
        )  # fmt: skip
    (args, kwargs) = recorder.calls[-1]
    return kernel, args, kwargs


def cases() -> list[dict[str, Any]]:
    """Every compiled configuration: stock, each shipped sm_90 entry, our SWA kernel."""
    from gemma4_kernels.extend_tiles import load_table

    tiles = {STOCK_HOPPER: "stock"}
    for entry in load_table().entries:
        if entry.arch == "sm_90" and HEAD_DIM in entry.head_dim and entry.tile.kernel == "sglang":
            t = entry.tile
            tiles.setdefault((t.block_m, t.block_n, t.num_warps, t.num_stages), "table")
    out = []
    for tile, source in tiles.items():
        for sliding in (False, True):
            out.append(dict(kernel="sglang", source=source, tile=tile, sliding=sliding))
    for tile, source in tiles.items():
        if source == "table":
            out.append(dict(kernel="swa_pipelined", source="variant", tile=tile, sliding=True))
    return out


def measure_case(case: dict[str, Any]) -> dict[str, Any]:
    from microbench.static_metrics import compile_launch

    if case["kernel"] == "sglang":
        kernel, args, kwargs = sglang_launch(case["tile"], case["sliding"])
    else:
        kernel, args, kwargs = swa_launch(case["tile"])
    metrics = compile_launch(kernel, args, kwargs).as_dict()
    block_m, block_n, warps, stages = case["tile"]
    return {
        "kernel": case["kernel"],
        "source": case["source"],
        "window": "sliding" if case["sliding"] else "full",
        "tile": f"({block_m},{block_n},w{warps},s{stages})",
        **{k: v for k, v in metrics.items() if k not in ("num_warps",)},
    }


def flag_spills(rows: list[dict[str, Any]]) -> None:
    stock = {r["window"]: r for r in rows if r["source"] == "stock"}
    for row in rows:
        spills = row["spill_store_bytes"] + row["spill_load_bytes"]
        base = stock[row["window"]]
        row["spills_more_than_stock"] = (
            spills > base["spill_store_bytes"] + base["spill_load_bytes"]
        )


def build() -> dict[str, Any]:
    rows = [measure_case(case) for case in cases()]
    flag_spills(rows)
    return {
        "what": "static sm_90a metrics of extend-attention launches (compiled, not timed)",
        "shape": f"26B-A4B TP2 shard: {HEADS} q / {KV_HEADS} kv heads, head_dim {HEAD_DIM}, "
        f"bf16, page 1, sliding radius {RADIUS}",
        "toolchain": _toolchain(),
        "rows": rows,
    }


def _toolchain() -> str:
    import sglang
    import triton

    return f"triton {triton.__version__}, sglang {sglang.__version__}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the data file")
    parser.add_argument("--out", default=str(DATA))
    args = parser.parse_args(argv)
    doc = build()
    for row in doc["rows"]:
        print(
            f"{row['kernel']:>13} {row['source']:>7} {row['window']:>7} {row['tile']:>15} "
            f"regs {row['registers']:>3} spill {row['spill_store_bytes']:>5}/"
            f"{row['spill_load_bytes']:<5} smem {row['shared_bytes']:>6} "
            f"{row['mma'] or '-':>8} cp.async {row['async_copies']:>3} "
            f"sass {row['sass_instructions']}"
            + ("  SPILLS > STOCK" if row["spills_more_than_stock"] else "")
        )
    if args.check:
        recorded = json.loads(Path(args.out).read_text())
        key = ("kernel", "source", "window", "tile")
        want = {tuple(r[k] for k in key): r for r in recorded["rows"]}
        got = {tuple(r[k] for k in key): r for r in doc["rows"]}
        if want.keys() != got.keys():
            print(f"configurations differ: file {sorted(want)} vs now {sorted(got)}")
            return 1
        diffs = [
            f"{k} {field}: file {want[k][field]} now {got[k][field]}"
            for k in got
            for field in (*COMPARED, "spills_more_than_stock")
            if want[k][field] != got[k][field]
        ]
        if diffs:
            print("static metrics changed:\n  " + "\n  ".join(diffs))
            return 1
        print(f"static metrics match {args.out}")
        return 0
    Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

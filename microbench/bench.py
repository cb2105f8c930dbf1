"""``gemma4-kernels bench``: every fused op and architecture in one run, CSV + JSON.

On CPU (no GPU here so far) it writes the launch and bytes model of the CUDA path
(``op_model.py``; labelled "model", not a measurement) for every op and Gemma 4 shape,
plus the per-layer region stock vs patched. On a GPU it also runs the timing benchmarks
(``bench_norms``, ``bench_routing``: stock SGLang vs ours vs eager in the same process,
``triton.testing.do_bench``, CUDA graphs for T <= 256) and adds their rows.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from microbench import op_model, shapes
from microbench.common import RESULTS, run_context, write_csv


def _split(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gemma4-kernels bench", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--op", help="comma-separated ops (default: all)")
    parser.add_argument(
        "--shapes", help=f"comma-separated models (default: {','.join(shapes.MODELS)})"
    )
    parser.add_argument("--phase", choices=("decode", "prefill", "all"), default="all")
    parser.add_argument("--tp", default="1", help="comma-separated TP sizes (default: 1)")
    parser.add_argument(
        "--out", help="CSV path (default: microbench/results/<date>-<device>-bench.csv)"
    )
    parser.add_argument("--markdown", action="store_true", help="also print the README table")
    return parser


def collect(args: argparse.Namespace) -> list[dict[str, Any]]:
    import torch

    phases = ("decode", "prefill") if args.phase == "all" else (args.phase,)
    try:
        tp_sizes = [int(t) for t in _split(args.tp)]
    except ValueError:
        raise ValueError(f"--tp must be comma-separated integers, got {args.tp!r}") from None
    cases = shapes.cases(_split(args.shapes), phases, tp_sizes)
    rows = op_model.rows(cases, _split(args.op)) + op_model.layer_rows(cases)
    if torch.cuda.is_available():  # timings, same process and run
        from microbench import bench_norms

        tokens = sorted({c.tokens for c in cases})
        hidden = sorted({c.model.hidden for c in cases})
        rows += [{"what": "GPU timing", **r} for r in bench_norms.gpu_rows(tokens, hidden)]
    return rows


def markdown(rows: list[dict[str, Any]], device: str, date: str) -> str:
    """The README table: per-layer region and all layers, decode T=1 and T=64, per model."""
    lines = [
        f"Modelled CUDA-path launches and HBM bytes of the region our ops touch "
        f"(routing, norms, layer tails, next input norm), stock SGLang 0.5.23 vs patched "
        f"(`gemma4-kernels bench`, {device}, {date}; a model, not a measurement):",
        "",
        "| shape | launches / layer | launches, all layers | bytes / layer | bytes, all layers |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        if not r["op"].startswith("layer region") or r["shape"].split("T=")[1] not in ("1", "64"):
            continue
        lines.append(
            f"| {r['shape']} | {r['launches_stock_per_layer']} → {r['launches_patched_per_layer']}"
            f" | {r['launches_stock_all_layers']} → {r['launches_patched_all_layers']}"
            f" | {r['bytes_stock_per_layer']:,} → {r['bytes_patched_per_layer']:,}"
            f" | {r['bytes_stock_all_layers']:,} → {r['bytes_patched_all_layers']:,} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        rows = collect(args)
    except ValueError as exc:
        print(f"gemma4-kernels bench: {exc}")
        return 2
    context = run_context()
    path = write_csv(rows, "bench", args.out)
    json_path = Path(path).with_suffix(".json")
    json_path.write_text(json.dumps({"context": context, "rows": rows}, indent=1))
    kinds = sorted({r["what"] for r in rows})
    print(f"{len(rows)} rows ({', '.join(kinds)}) on {context['device']}")
    print(f"wrote {path}\nwrote {json_path}")
    if args.markdown:
        print("\n" + markdown(rows, context["device"], context["date"]))
    return 0


__all__ = ["RESULTS", "main"]

if __name__ == "__main__":
    raise SystemExit(main())

"""``gemma4-kernels bench``: every fused op and architecture in one run, CSV + JSON.

Without a GPU it writes, labelled "model" (read from the code, not measured):

* per fused op and shape (``op_model.py``): the kernels SGLang 0.5.23 launches on CUDA
  where our op acts vs ours, their launches, HBM bytes and roofline time;
* per model and decode T (``layer_model.py``): one whole decode step stock vs patched
  (every layer, the embedding, final norm and LM head), and what each patch changes.

On a GPU it adds the timing rows of ``bench_norms`` and ``bench_routing`` (ours vs SGLang's
path vs eager in the same process, ``microbench.harness``: ``triton.testing.do_bench``,
CUDA graphs for T <= 256, GB/s and % of peak HBM bandwidth).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from microbench import layer_model, op_model, shapes
from microbench.common import RESULTS, run_context, write_csv


def _split(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gemma4-kernels bench", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--op", help="comma-separated fused ops (default: all)")
    parser.add_argument(
        "--shapes", help=f"comma-separated models (default: {','.join(shapes.MODELS)})"
    )
    parser.add_argument("--phase", choices=("decode", "prefill", "all"), default="all")
    parser.add_argument("--tp", default="1", help="comma-separated TP sizes (default: 1)")
    parser.add_argument(
        "--context",
        type=int,
        default=layer_model.DEFAULT_CONTEXT,
        help="tokens of context per request in the decode-step model "
        f"(default: {layer_model.DEFAULT_CONTEXT})",
    )
    parser.add_argument(
        "--out", help="CSV path (default: microbench/results/<date>-<device>-bench.csv)"
    )
    parser.add_argument("--markdown", action="store_true", help="also print the README section")
    return parser


def collect(args: argparse.Namespace) -> list[dict[str, Any]]:
    import torch

    phases = ("decode", "prefill") if args.phase == "all" else (args.phase,)
    try:
        tp_sizes = [int(t) for t in _split(args.tp)]
    except ValueError:
        raise ValueError(f"--tp must be comma-separated integers, got {args.tp!r}") from None
    if args.context < 1:
        raise ValueError(f"--context must be >= 1, got {args.context}")
    cases = shapes.cases(_split(args.shapes), phases, tp_sizes)
    rows = op_model.rows(cases, _split(args.op))
    # The whole-step model is TP 1 and decode only; --op filters the per-op rows alone.
    models = list(dict.fromkeys(c.model.name for c in cases))
    decode_tokens = sorted({c.tokens for c in cases if c.phase == "decode"})
    if decode_tokens:
        rows += layer_model.step_rows(models, decode_tokens, args.context)
        for t in decode_tokens:
            rows += layer_model.patch_rows(models, t, args.context)
    if torch.cuda.is_available():  # timings, same process and run
        from microbench import bench_norms, bench_routing

        tokens = sorted({c.tokens for c in cases})
        hidden = sorted({c.model.hidden for c in cases})
        rows += bench_norms.gpu_rows(tokens, hidden)
        if any(c.model.arch == "moe" for c in cases):
            rows += bench_routing.gpu_rows(tokens)
    return rows


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
        from microbench.readme_table import section

        print("\n" + section(path))
    return 0


__all__ = ["RESULTS", "main"]

if __name__ == "__main__":
    raise SystemExit(main())

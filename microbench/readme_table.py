"""The README's benchmark section, generated from the latest bench CSV of each device.

    python -m microbench.readme_table [--results DIR] [--tokens 1,64]

Reads ``<date>-<device>-bench.csv`` files (``gemma4-kernels bench``), keeps the newest
per device and prints, per device: what was run (date, git sha, versions), the modelled
decode step of every model stock vs patched, what each patch changes, and GPU timings
where the device had a GPU. Model rows say they are a model; nothing is invented for a
device that has no such rows.
"""

from __future__ import annotations

import argparse
import csv
import re
from pathlib import Path

from microbench.common import RESULTS

BENCH_CSV = re.compile(r"^(?P<date>\d{4}-\d{2}-\d{2})-(?P<device>.+)-bench\.csv$")
STEP_OP = "decode step (all layers, embedding, final norm, LM head)"


def latest_per_device(results: Path = RESULTS) -> dict[str, Path]:
    """device -> its newest bench CSV (ISO dates sort as strings)."""
    newest: dict[str, tuple[str, Path]] = {}
    for path in sorted(results.glob("*-bench.csv")):
        match = BENCH_CSV.match(path.name)
        if match and match["date"] >= newest.get(match["device"], ("", path))[0]:
            newest[match["device"]] = (match["date"], path)
    return {device: path for device, (_, path) in sorted(newest.items())}


def _gb(value: str) -> str:
    return f"{int(value) / 1e9:.3f}"


def _us(value: str) -> str:
    return f"{float(value):,.1f}"


def _tokens(shape: str) -> int:
    return int(shape.split("T=")[1].split()[0])


def section(csv_path: str | Path, tokens: tuple[int, ...] = (1, 64)) -> str:
    """Markdown for one bench CSV."""
    with Path(csv_path).open() as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{csv_path} has no rows")
    first = rows[0]
    lines = [
        f"#### {first['device']}, {first['date']} (git {first['git_sha']}; torch "
        f"{first['torch']}, triton {first['triton']}, SGLang {first['sglang']}; "
        f"`{Path(csv_path).name}`)",
        "",
    ]
    steps = [r for r in rows if r.get("op") == STEP_OP and _tokens(r["shape"]) in tokens]
    if steps:
        context = steps[0]["context"]
        lines += [
            f"One decode step, T requests with {context} tokens of context each: kernel "
            "launches and HBM bytes on SGLang 0.5.23's CUDA path, stock → with our default "
            "patches, and the time those bytes take at peak HBM bandwidth. **A model read "
            "from the code, not a measurement** (`microbench/layer_model.py`, "
            "`microbench/layer_kernels/`).",
            "",
            "| shape | launches | HBM GB | roofline µs H100 | roofline µs H200 |",
            "|---|---|---|---|---|",
        ]
        for r in steps:
            lines.append(
                f"| {r['shape']} | {r['launches_stock']} → {r['launches_patched']}"
                f" | {_gb(r['bytes_stock'])} → {_gb(r['bytes_patched'])}"
                f" | {_us(r['roofline_us_stock_H100'])} → {_us(r['roofline_us_patched_H100'])}"
                f" | {_us(r['roofline_us_stock_H200'])} → {_us(r['roofline_us_patched_H200'])} |"
            )
        lines.append("")
    patches = [r for r in rows if r.get("op", "").startswith("patch ")]
    if patches:
        t = min(_tokens(r["shape"]) for r in patches)
        lines += [
            f"What each patch changes in that decode step with the other default patches "
            f"applied (T={t}; model):",
            "",
            "| model | patch | launches | HBM bytes |",
            "|---|---|---|---|",
        ]
        for r in patches:
            if _tokens(r["shape"]) == t:
                lines.append(
                    f"| {r['shape'].split()[0]} | `{r['op'].removeprefix('patch ')}`"
                    f" | {int(r['launches_delta']):+d} | {int(r['bytes_delta']):+,} |"
                )
        lines.append("")
    timed = [r for r in rows if r.get("what") == "GPU timing"]
    if timed:
        lines += [
            "GPU timings (`triton.testing.do_bench`, CUDA graphs for T ≤ 256; median and "
            "20th–80th percentile):",
            "",
            "| shape | impl | median µs | p20–p80 µs | GB/s | % peak HBM | ours faster by |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in timed:
            lines.append(
                f"| {r['shape']} | {r['impl']} | {r['median_us']} | {r['p20_us']}–{r['p80_us']}"
                f" | {r.get('GB/s', '')} | {r.get('pct_peak_hbm', '')}"
                f" | {r.get('speedup_vs_ours', '')} |"
            )
        lines.append("")
    else:
        lines += [f"No GPU timings on {first['device']}.", ""]
    return "\n".join(lines)


def render(results: Path = RESULTS, tokens: tuple[int, ...] = (1, 64)) -> str:
    found = latest_per_device(results)
    if not found:
        raise ValueError(f"no <date>-<device>-bench.csv in {results}")
    return "\n".join(section(path, tokens) for path in found.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--tokens", default="1,64", help="decode T values to show")
    args = parser.parse_args(argv)
    tokens = tuple(int(t) for t in args.tokens.split(",") if t)
    print(render(args.results, tokens))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

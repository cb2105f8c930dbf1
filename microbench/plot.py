"""PNG per op from a ``gemma4-kernels bench`` CSV, against the token count T.

    python -m microbench.plot results/<date>-<device>-bench.csv [--out DIR]

GPU timing rows: per op, ours' speedup over each other implementation and each one's %
of peak HBM bandwidth (one line per implementation). Model rows (``what`` starts with
"model"): the modelled bytes ratio stock / ours, one line per model, titled as a model.
Headless (Agg backend); needs matplotlib (the project's ``test`` extra installs it).
"""

from __future__ import annotations

import argparse
import csv
import re
from collections import defaultdict
from pathlib import Path

SHAPE = re.compile(r"^(?P<model>\S+) (?P<phase>decode|prefill) T=(?P<tokens>\d+)")
TOKENS = re.compile(r"\s*T=(?P<tokens>\d+)")

Series = dict[str, dict[str, list[tuple[int, float]]]]


def series(rows: list[dict], metric: str) -> Series:
    """Model rows: op -> "<model> <phase>" -> [(T, value)] for rows that carry ``metric``."""
    out: Series = defaultdict(lambda: defaultdict(list))
    for row in rows:
        match = SHAPE.match(row.get("shape", ""))
        if not match or not row.get(metric) or row.get("what") == "GPU timing":
            continue
        key = f"{match['model']} {match['phase']}"
        out[row["op"]][key].append((int(match["tokens"]), float(row[metric])))
    return out


def timing_series(rows: list[dict], metric: str) -> Series:
    """GPU timing rows: op (the shape without T) -> impl -> [(T, value)]."""
    out: Series = defaultdict(lambda: defaultdict(list))
    for row in rows:
        match = TOKENS.search(row.get("shape", ""))
        if row.get("what") != "GPU timing" or not match or row.get(metric) in (None, ""):
            continue
        op = TOKENS.sub("", row["shape"]).strip()
        out[op][row["impl"]].append((int(match["tokens"]), float(row[metric])))
    return out


def _file_name(op: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", op).strip("_") + ".png"


def _draw(ax, lines: dict[str, list[tuple[int, float]]], ylabel: str) -> None:
    for name, points in sorted(lines.items()):
        points.sort()
        ax.plot([t for t, _ in points], [v for _, v in points], marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("tokens T")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)


def plot(csv_path: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    try:
        import matplotlib
    except ImportError:
        raise RuntimeError(
            "microbench.plot needs matplotlib: pip install matplotlib (or the 'test' extra)"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    csv_path = Path(csv_path)
    out_dir = Path(out_dir) if out_dir else csv_path.parent / f"{csv_path.stem}-plots"
    out_dir.mkdir(parents=True, exist_ok=True)
    with csv_path.open() as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{csv_path} has no rows")
    device = rows[0].get("device", "?")
    written = []
    speedup = timing_series(rows, "speedup_vs_ours")
    peak = timing_series(rows, "pct_peak_hbm")
    for op in sorted(set(speedup) | set(peak)):
        fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
        _draw(left, speedup.get(op, {}), "ours faster by (x)")
        _draw(right, peak.get(op, {}), "% of peak HBM bandwidth")
        fig.suptitle(f"{op}\n{device}: GPU timing", fontsize=9)
        fig.tight_layout()
        path = out_dir / _file_name(f"gpu {op}")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    for op, lines in series(rows, "bytes_ratio").items():
        fig, ax = plt.subplots(figsize=(6, 4))
        _draw(ax, lines, "bytes stock / ours (model)")
        ax.set_title(f"{op}\n{device}: model of the CUDA path, not a measurement", fontsize=9)
        fig.tight_layout()
        path = out_dir / _file_name(op)
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    for path in plot(args.csv, args.out):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

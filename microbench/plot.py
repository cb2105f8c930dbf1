"""PNG per op from a ``gemma4-kernels bench`` CSV: a metric against T, one line per model.

    python -m microbench.plot results/<date>-<device>-bench.csv [--out DIR]

Rows of the model (``what`` starts with "model") plot the modelled bytes ratio stock/ours
and say so in the title; GPU timing rows (``speedup_vs_ours`` / ``pct_peak_hbm``) plot
speedup. Headless (Agg backend).
"""

from __future__ import annotations

import argparse
import csv
import re
from collections import defaultdict
from pathlib import Path

SHAPE = re.compile(r"^(?P<model>\S+) (?P<phase>decode|prefill) T=(?P<tokens>\d+)")


def series(rows: list[dict], metric: str) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """op -> "<model> <phase>" -> [(T, value)] for rows that carry ``metric``."""
    out: dict[str, dict[str, list[tuple[int, float]]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        match = SHAPE.match(row.get("shape", ""))
        if not match or not row.get(metric):
            continue
        key = f"{match['model']} {match['phase']}"
        out[row["op"]][key].append((int(match["tokens"]), float(row[metric])))
    return out


def plot(csv_path: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    csv_path = Path(csv_path)
    out_dir = Path(out_dir) if out_dir else csv_path.parent / f"{csv_path.stem}-plots"
    out_dir.mkdir(parents=True, exist_ok=True)
    with csv_path.open() as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{csv_path} has no rows")
    timed = any(r.get("what") == "GPU timing" for r in rows)
    metric, label = (
        ("speedup_vs_ours", "speedup") if timed else ("bytes_ratio", "bytes stock / ours (model)")
    )
    device = rows[0].get("device", "?")
    written = []
    for op, lines in series(rows, metric).items():
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, points in sorted(lines.items()):
            points.sort()
            ax.plot([t for t, _ in points], [v for _, v in points], marker="o", label=name)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("tokens T")
        ax.set_ylabel(label)
        kind = "GPU timing" if timed else "model of the CUDA path, not a measurement"
        ax.set_title(f"{op}\n{device}: {kind}", fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out_dir / (re.sub(r"[^A-Za-z0-9]+", "_", op).strip("_") + ".png")
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

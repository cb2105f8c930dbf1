"""What every microbenchmark records next to its numbers: device, versions, commit, date."""

from __future__ import annotations

import csv
import datetime
import subprocess
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name().replace(" ", "-")
    return "cpu-no-gpu"


def run_context() -> dict[str, Any]:
    import torch
    import triton

    from gemma4_kernels.env_report import package_version

    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
        ).stdout.strip()
    except OSError:
        sha = ""
    return {
        "date": datetime.date.today().isoformat(),
        "device": device_name(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "sglang": package_version("sglang"),
        "git_sha": sha or "unknown",
    }


def write_csv(rows: list[dict[str, Any]], name: str, path: str | Path | None = None) -> Path:
    """Write rows (each merged with the run context) to ``results/<date>-<device>-<name>.csv``."""
    context = run_context()
    rows = [{**context, **row} for row in rows]
    if path is None:
        RESULTS.mkdir(parents=True, exist_ok=True)
        path = RESULTS / f"{context['date']}-{context['device']}-{name}.csv"
    path = Path(path)
    fields: list[str] = []
    for row in rows:
        fields += [k for k in row if k not in fields]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return path


def report(rows: list[dict[str, Any]], name: str, kind: str, path: str | Path | None) -> Path:
    """Write the CSV and print the rows as a table under a line saying what they are."""
    from gemma4_kernels.cli import format_table

    written = write_csv(rows, name, path)
    columns = list(dict.fromkeys(k for row in rows for k in row))
    print(f"\n{kind}:\n")
    print(format_table(rows, columns))
    print(f"\nwrote {written}")
    return written

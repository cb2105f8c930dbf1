"""Versions and device facts for bug reports: ``python -m gemma4_kernels.env_report``."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys

# (label, distribution name) — read from metadata, so nothing heavy is imported.
PACKAGES = (
    ("gemma4-kernels", "gemma4-kernels"),
    ("sglang", "sglang"),
    ("torch", "torch"),
    ("triton", "triton"),
    ("transformers", "transformers"),
    ("flashinfer", "flashinfer-python"),
    ("sglang-kernel", "sglang-kernel"),
)


def package_version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def gpu_description() -> str:
    """GPU name and compute capability, or why there is none."""
    try:
        import torch
    except ImportError:
        return "no GPU (torch not installed)"
    if not torch.cuda.is_available():
        return "no GPU (torch.cuda.is_available() is False)"
    index = torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(index)
    count = torch.cuda.device_count()
    return f"{torch.cuda.get_device_name(index)} (sm_{major}{minor}), {count} visible"


def collect() -> dict[str, str]:
    report = {
        "python": f"{platform.python_version()} ({sys.executable})",
        "platform": platform.platform(),
    }
    for label, dist in PACKAGES:
        report[label] = package_version(dist)
    report["gpu"] = gpu_description()
    report["TRITON_INTERPRET"] = os.environ.get("TRITON_INTERPRET", "(unset)")
    for var in ("GEMMA4_KERNELS_DISABLE", "GEMMA4_KERNELS_PATCHES", "GEMMA4_KERNELS_STRICT"):
        report[var] = os.environ.get(var, "(unset)")
    return report


def format_report(report: dict[str, str]) -> str:
    width = max(len(key) for key in report)
    return "\n".join(f"{key:<{width}}  {value}" for key, value in report.items())


if __name__ == "__main__":
    print(format_report(collect()))

"""The timing harness every ``bench_*`` script uses on a GPU, and its pure arithmetic.

``time_impls`` times several implementations of one op (ours, SGLang's stock path, torch
eager) in the same process and run: each is checked against the first before any timing,
warmed up, then timed with ``triton.testing.do_bench_cudagraph`` for T <= 256 (decode
runs inside CUDA graphs in SGLang, so launch overhead counts the way it does there) and
``triton.testing.do_bench`` above. Rows carry the median and the 20th/80th percentiles
in µs, achieved GB/s from the bytes the op must move, % of the device's peak HBM
bandwidth (known devices only) and the speedup of ours over each implementation.

Without a GPU nothing here is timed: the bench scripts report launch counts and modelled
bytes (``op_model``, ``layer_model``) and static metrics of the compiled code instead,
labelled as such. Interpreter timings are never reported.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

# Peak HBM bandwidth, TB/s, of the SXM parts (vendor datasheets). PCIe and NVL variants
# of the H100 have other memory systems, so they stay unknown rather than get a wrong %.
PEAK_HBM_TBPS = {"H100": 3.35, "H200": 4.8, "B200": 8.0}
_OTHER_VARIANTS = ("PCIE", "NVL")
CUDA_GRAPH_MAX_TOKENS = 256  # SGLang's default decode CUDA-graph batch sizes reach 256


def roofline_seconds(nbytes: float, device: str) -> float:
    """Time ``nbytes`` take at ``device``'s (a PEAK_HBM_TBPS key) peak HBM bandwidth: a
    lower bound, what the launch/bytes models quote."""
    return nbytes / (PEAK_HBM_TBPS[device] * 1e12)


def peak_tbps(device_name: str) -> float | None:
    """Peak HBM TB/s of a device as ``torch.cuda.get_device_name`` spells it, or None."""
    name = device_name.upper()
    for part, tbps in PEAK_HBM_TBPS.items():
        if part in name:
            if part == "H100" and any(v in name for v in _OTHER_VARIANTS):
                return None
            return tbps
    return None


def achieved_gbps(nbytes: float, milliseconds: float) -> float:
    """GB/s when ``nbytes`` move in ``milliseconds``."""
    if milliseconds <= 0:
        raise ValueError(f"milliseconds must be > 0, got {milliseconds}")
    return nbytes / (milliseconds * 1e-3) / 1e9


def pct_of_peak(gbps: float, device_name: str) -> float | None:
    """Achieved GB/s as % of the device's peak HBM bandwidth (None: unknown device)."""
    peak = peak_tbps(device_name)
    return None if peak is None else 100 * gbps / (peak * 1e3)


def uses_cuda_graph(tokens: int) -> bool:
    return tokens <= CUDA_GRAPH_MAX_TOKENS


def timing_row(
    shape: str,
    impl: str,
    quantiles_ms: tuple[float, float, float],
    nbytes: float | None,
    device_name: str,
    ours_ms: float | None,
) -> dict[str, Any]:
    """One CSV row from (median, p20, p80) in ms; speedup = this impl's median / ours."""
    p50, p20, p80 = quantiles_ms
    row: dict[str, Any] = {
        "shape": shape,
        "impl": impl,
        "what": "GPU timing",
        "median_us": round(p50 * 1e3, 2),
        "p20_us": round(p20 * 1e3, 2),
        "p80_us": round(p80 * 1e3, 2),
    }
    if nbytes is not None:
        gbps = achieved_gbps(nbytes, p50)
        pct = pct_of_peak(gbps, device_name)
        row["GB/s"] = round(gbps, 1)
        row["pct_peak_hbm"] = "" if pct is None else round(pct, 1)
    row["speedup_vs_ours"] = "" if ours_ms is None else round(p50 / ours_ms, 3)
    return row


def time_impls(
    shape: str,
    tokens: int,
    impls: Mapping[str, Callable[[], Any]],
    nbytes: float | None,
    check: Callable[[Any, Any], None] | None = None,
    ours: str = "ours",
    warmup: int = 3,
) -> list[dict[str, Any]]:
    """Time every implementation of one op at one shape on the current GPU.

    ``impls`` are zero-argument callables over tensors already on the GPU; ``check(ref,
    out)`` compares each output with the first implementation's before anything is timed.
    """
    import torch
    import triton.testing

    if not torch.cuda.is_available():
        raise RuntimeError("time_impls needs a GPU; without one report modelled bytes instead")
    if ours not in impls:
        raise ValueError(f"impls must include {ours!r}, got {sorted(impls)}")
    device_name = torch.cuda.get_device_name()
    reference = None
    for fn in impls.values():
        out = fn()
        if reference is None:
            reference = out
        elif check is not None:
            check(reference, out)
    for _ in range(warmup):
        for fn in impls.values():
            fn()
    torch.cuda.synchronize()
    graphed = uses_cuda_graph(tokens)
    bench = triton.testing.do_bench_cudagraph if graphed else triton.testing.do_bench
    measured = {name: tuple(bench(fn, quantiles=[0.5, 0.2, 0.8])) for name, fn in impls.items()}
    ours_ms = measured[ours][0]
    return [
        timing_row(shape, name, q, nbytes, device_name, ours_ms) for name, q in measured.items()
    ]

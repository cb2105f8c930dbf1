"""``python -m gemma4_kernels demo``: the main job on tiny Gemma 4 models.

1. doctor: versions, device, every patch's state;
2. server arguments: SGLang 0.5.23's real resolution of tiny 26B-A4B-, 31B- and
   E2B-like checkpoints, stock vs patched, in one process;
3. model: SGLang's real Gemma 4 forward (prefill, then decode past the sliding
   window) on the same tiny models, stock vs patched, against HF transformers (fp32),
   with our fused-op calls and Triton launches per decoder layer.

Without a GPU, two platform queries are answered as an 80 GiB CUDA device would
(GPU memory, and the default prefill CUDA-graph backend); the output says so.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gemma4_kernels.cli import format_table

FAMILY_LABELS = {"moe": "26B-A4B-like (MoE)", "dense": "31B-like (dense)", "e2b": "E2B-like (PLE)"}
SIMULATED_GPU_GIB = 80


@contextlib.contextmanager
def simulated_cuda_device(gib: int = SIMULATED_GPU_GIB) -> Iterator[str]:
    """Answer SGLang's GPU-memory and prefill-graph-default queries as a CUDA GPU would."""
    import torch

    if torch.cuda.is_available():
        yield f"real device: {torch.cuda.get_device_name()}"
        return
    from sglang.srt.arg_groups import memory_hook
    from sglang.srt.model_executor import cuda_graph_config

    saved = (memory_hook.get_device_memory_capacity, cuda_graph_config.default_prefill_backend)
    memory_hook.get_device_memory_capacity = lambda device=None: gib * 1024
    cuda_graph_config.default_prefill_backend = lambda: cuda_graph_config.Backend.BREAKABLE
    try:
        yield (
            f"no GPU: SGLang's GPU-memory query answers {gib} GiB and its prefill CUDA-graph "
            "default is CUDA's (breakable) -- simulated, labelled as such"
        )
    finally:
        memory_hook.get_device_memory_capacity, cuda_graph_config.default_prefill_backend = saved


def resolved_fields(model_dir: Path) -> dict[str, Any]:
    """The server arguments our patches tune, as SGLang resolves them."""
    from sglang.srt.arg_groups.overrides import model_config_of
    from sglang.srt.server_args import ServerArgs

    args = ServerArgs(model_path=str(model_dir), device="cuda")
    args.resolve_once()
    resolved = args.resolved_dict()
    return {
        "swa_full_tokens_ratio": resolved["swa_full_tokens_ratio"],
        "chunked_prefill_size": resolved["chunked_prefill_size"],
        "mem_fraction_static": resolved["mem_fraction_static"],
        "vision/audio towers": "skipped" if resolved["language_model_only"] else "loaded",
        "multimodal": model_config_of(args).is_multimodal,
        "prefill CUDA graph": resolved["cuda_graph_config"]["prefill"]["backend"],
    }


def server_args_rows(workdir: Path) -> list[dict]:
    import gemma4_kernels
    from gemma4_kernels.harness.tiny_configs import FAMILIES, write_config

    models = {family: write_config(workdir / family, family) for family in FAMILIES}
    gemma4_kernels.revert()
    stock = {family: resolved_fields(path) for family, path in models.items()}
    gemma4_kernels.install()
    try:
        patched = {family: resolved_fields(path) for family, path in models.items()}
    finally:
        gemma4_kernels.revert()
    rows = []
    for family in FAMILIES:
        for field, before in stock[family].items():
            after = patched[family][field]
            if isinstance(before, float) or isinstance(after, float):
                before, after = _short(before), _short(after)
            rows.append(
                {
                    "model": FAMILY_LABELS[family],
                    "server argument": field,
                    "stock": before,
                    "gemma4-kernels": after,
                    "": "changed" if after != before else "",
                }
            )
    return rows


def _short(value: Any) -> Any:
    return f"{value:.4g}" if isinstance(value, float) else value


def _sci(value: float) -> str:
    return f"{value:.1e}"


def model_rows(workdir: Path) -> list[dict]:
    """Stock vs all patches on each tiny family: parity vs HF and per-layer op counts."""
    from gemma4_kernels.harness.parity import PARITY_ATOL
    from gemma4_kernels.harness.session import ALL, STOCK, TinyFamilies
    from gemma4_kernels.harness.tiny_configs import FAMILIES

    families = TinyFamilies(workdir)
    rows = []
    for family in FAMILIES:
        for label, patches in (("stock", STOCK), ("patched", ALL)):
            run = families.run(family, patches)
            report, counts = run.report, run.op_counts
            applied = sum(state == "applied" for state in run.patch_states.values())
            ours, launches = counts.per_layer("ours"), counts.per_layer("triton")
            rows.append(
                {
                    "model": FAMILY_LABELS[family],
                    "SGLang": label,
                    "patches": f"{applied}/{len(run.patch_states)}",
                    "prefill max|dlogit|": _sci(report.prefill_max_abs),
                    "decode max|dlogit|": _sci(report.decode_max_abs),
                    "greedy = HF": "yes" if report.all_greedy_agree else "no",
                    "parity": "ok" if report.ok(PARITY_ATOL) else "FAIL",
                    "gemma4 ops/layer": _range(ours),
                    "Triton launches/layer": _range(launches),
                }
            )
    return rows


def _range(values: list[int]) -> str:
    low, high = min(values), max(values)
    return str(low) if low == high else f"{low}-{high}"


def run_demo(args: argparse.Namespace) -> int:
    from gemma4_kernels.cli import cmd_doctor

    cmd_doctor(argparse.Namespace(json=False))
    for name in ("sglang", "transformers"):
        logging.getLogger(name).setLevel(logging.ERROR)
    print("\nserver arguments: SGLang 0.5.23 resolution of tiny Gemma 4 checkpoints\n")
    with tempfile.TemporaryDirectory() as tmp, simulated_cuda_device() as device_note:
        print(device_note + "\n")
        rows = server_args_rows(Path(tmp))
    print(format_table(rows, ("model", "server argument", "stock", "gemma4-kernels", "")))

    import torch

    from gemma4_kernels.harness.parity import DEFAULT_PROMPTS, PARITY_ATOL
    from gemma4_kernels.harness.session import DECODE_STEPS
    from gemma4_kernels.ops._common import interpreter_active

    if not torch.cuda.is_available() and not interpreter_active():
        print(
            "\nmodel section skipped: without a GPU it needs TRITON_INTERPRET=1 (scripts/demo.sh)"
        )
        return 0
    where = "GPU" if torch.cuda.is_available() else "CPU, Triton interpreter"
    print(
        f"\nmodel: SGLang's real Gemma 4 forward ({where}, fp32) vs HF transformers (fp32); "
        f"{len(DEFAULT_PROMPTS)} prompts of lengths {[len(p) for p in DEFAULT_PROMPTS]}, "
        f"prefill + {DECODE_STEPS} decode steps past the sliding window (8); parity = every "
        f"step within {PARITY_ATOL:g} and the same greedy tokens. Op counts are of one decode "
        "step, per decoder layer (CPU path; not GPU launch counts).\n"
    )
    with tempfile.TemporaryDirectory() as tmp:
        rows = model_rows(Path(tmp))
    print(format_table(rows, tuple(rows[0])))
    return 0

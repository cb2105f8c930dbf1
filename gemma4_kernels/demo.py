"""``python -m gemma4_kernels demo``: the main job on tiny Gemma 4 models.

1. doctor: versions, device, every patch's state;
2. server arguments: SGLang 0.5.23's real resolution of tiny 26B-A4B-, 31B- and
   E2B-like checkpoints, stock vs patched, in one process.

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
    return 0

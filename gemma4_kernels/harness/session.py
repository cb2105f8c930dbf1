"""One call per experiment: a tiny family, a patch set, SGLang vs HF.

``run_family("moe", patches="all")`` writes the tiny checkpoint config, builds the HF
oracle with seeded random weights (cached per family), installs exactly the asked
patches, builds SGLang's model with the same weights, generates greedily past the
sliding window, and compares every step with HF.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gemma4_kernels.harness.op_counter import OpCounts
from gemma4_kernels.harness.parity import DEFAULT_PROMPTS, ParityReport, compare
from gemma4_kernels.harness.reference import checkpoint_weights, random_hf_model
from gemma4_kernels.harness.runtime import Generation, SGLangCpuRuntime, TinySGLangModel
from gemma4_kernels.harness.tiny_configs import hf_config

STOCK: tuple[str, ...] = ()
ALL = "all"

# Enough decode steps for every default prompt to cross the window (8) by a few keys.
DECODE_STEPS = 8
# The decode step whose ops are counted per layer (a warm one).
COUNTED_STEP = 2


@contextlib.contextmanager
def patches_installed(patches: str | Iterable[str]) -> Iterator[dict[str, str]]:
    """Exactly ``patches`` installed (``"all"``, or names; empty = stock SGLang)."""
    import gemma4_kernels

    names = patches if isinstance(patches, str) else ",".join(patches)
    saved = {k: os.environ.get(k) for k in ("GEMMA4_KERNELS_PATCHES", "GEMMA4_KERNELS_DISABLE")}
    gemma4_kernels.revert()
    try:
        os.environ.pop("GEMMA4_KERNELS_PATCHES", None)
        os.environ.pop("GEMMA4_KERNELS_DISABLE", None)
        if names:
            os.environ["GEMMA4_KERNELS_PATCHES"] = names
            rows = gemma4_kernels.install()
        else:
            rows = gemma4_kernels.status()
        yield {row["name"]: row["state"] for row in rows}
    finally:
        gemma4_kernels.revert()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@dataclass
class FamilyRun:
    family: str
    patch_states: dict[str, str]
    report: ParityReport
    generation: Generation
    model: TinySGLangModel

    @property
    def op_counts(self) -> OpCounts | None:
        return self.generation.op_counts


class TinyFamilies:
    """Config directories and HF oracles, built once per family.

    Runs are deterministic (seeded weights, greedy decoding), so :meth:`run` returns
    the cached result for arguments it has already run; ``fresh=True`` rebuilds.
    """

    def __init__(self, workdir: str | Path | None = None) -> None:
        self._tmp = None
        if workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="gemma4-harness-")
            workdir = self._tmp.name
        self.workdir = Path(workdir)
        self._cache: dict[str, tuple[Path, torch.nn.Module, list]] = {}
        self._runs: dict[tuple, FamilyRun] = {}

    def get(self, family: str) -> tuple[Path, torch.nn.Module, list]:
        if family not in self._cache:
            config = hf_config(family)
            path = self.workdir / family
            path.mkdir(parents=True, exist_ok=True)
            config.save_pretrained(path)
            hf_model = random_hf_model(config)
            self._cache[family] = (path, hf_model, checkpoint_weights(hf_model))
        return self._cache[family]

    def run(
        self,
        family: str,
        patches: str | Iterable[str] = STOCK,
        *,
        decode_steps: int = DECODE_STEPS,
        decode_metadata: str = "eager",
        count_decode_step: int | None = COUNTED_STEP,
        prompts: tuple[tuple[int, ...], ...] = DEFAULT_PROMPTS,
        fresh: bool = False,
        **server_args: Any,
    ) -> FamilyRun:
        patch_key = patches if isinstance(patches, str) else tuple(sorted(patches))
        key = (
            family,
            patch_key,
            decode_steps,
            decode_metadata,
            count_decode_step,
            prompts,
            tuple(sorted(server_args.items())),
        )
        if not fresh and key in self._runs:
            return self._runs[key]
        path, hf_model, weights = self.get(family)
        with patches_installed(patches) as states:
            model = SGLangCpuRuntime.get().load(path, weights, **server_args)
            generation = model.generate(
                prompts,
                decode_steps,
                decode_metadata=decode_metadata,
                count_decode_step=count_decode_step,
            )
        run = FamilyRun(family, states, compare(hf_model, prompts, generation), generation, model)
        self._runs[key] = run
        return run

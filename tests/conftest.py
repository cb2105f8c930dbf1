"""Shared fixtures: patch-state isolation, tiny Gemma 4 checkpoints, ServerArgs resolution.

Every test leaves SGLang unpatched: the autouse fixture reverts whatever a test
installed and forgets the recorded states.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.helpers import GIB

# Without a GPU, Triton kernels run in the interpreter. It must be chosen before triton
# is imported; scripts/test.sh sets it too, this makes a bare `pytest` behave the same.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Resolution reads these; a developer's shell must not change test outcomes.
for _var in (
    "GEMMA4_KERNELS_DISABLE",
    "GEMMA4_KERNELS_PATCHES",
    "GEMMA4_KERNELS_STRICT",
    "SGLANG_ENABLE_PIECEWISE_CUDA_GRAPH_FOR_MM",
    "SGLANG_PLUGINS",
):
    os.environ.pop(_var, None)


@pytest.fixture(autouse=True)
def _isolated_patch_state(monkeypatch):
    from sglang_patches import manager

    monkeypatch.setattr(manager, "_records", {})
    yield
    manager.revert()


@pytest.fixture
def install_only(monkeypatch):
    """``install_only("a", "b")``: install just those patches (allow-list), return status."""

    def install(*names: str) -> dict[str, dict]:
        import gemma4_kernels

        monkeypatch.setenv("GEMMA4_KERNELS_PATCHES", ",".join(names))
        return {row["name"]: row for row in gemma4_kernels.install()}

    return install


@pytest.fixture
def tiny_checkpoint(tmp_path):
    """``tiny_checkpoint(family, arch=..., vision=...)`` -> directory with config.json."""
    from gemma4_kernels.harness.tiny_configs import MM_ARCH, write_config

    def make(family: str, arch: str = MM_ARCH, **kwargs: Any) -> Path:
        return write_config(tmp_path / f"{family}-{arch}", family, arch, **kwargs)

    return make


@pytest.fixture
def gpu_memory(monkeypatch):
    """Stub only SGLang's GPU-memory query (this machine has no GPU).

    ``gpu_memory(80)`` makes ``handle_gpu_memory_settings`` see an 80 GiB device.
    """
    from sglang.srt.arg_groups import memory_hook

    def set_gib(gib: float | None) -> None:
        mib = None if gib is None else gib * GIB
        monkeypatch.setattr(memory_hook, "get_device_memory_capacity", lambda device=None: mib)

    set_gib(80)
    return set_gib


@pytest.fixture
def cuda_prefill_graph_default(monkeypatch):
    """Stub only the platform query behind SGLang's default prefill CUDA-graph backend.

    On a CUDA machine 0.5.23 defaults prefill to the breakable graph; this CPU
    machine would default it to disabled, which would hide what the gate does.
    """
    from sglang.srt.model_executor import cuda_graph_config

    monkeypatch.setattr(
        cuda_graph_config, "default_prefill_backend", lambda: cuda_graph_config.Backend.BREAKABLE
    )


@pytest.fixture(scope="session")
def tiny_families(tmp_path_factory):
    """Tiny checkpoints + HF oracles, built once per test session (harness.session)."""
    from gemma4_kernels.ops._common import interpreter_active

    if not interpreter_active():
        pytest.skip("SGLang's CPU forward needs TRITON_INTERPRET=1 (scripts/test.sh sets it)")
    from gemma4_kernels.harness.session import TinyFamilies

    return TinyFamilies(tmp_path_factory.mktemp("families"))


@pytest.fixture
def gemma4_logs(caplog):
    """Capture INFO+ records of our logger."""
    caplog.set_level(logging.INFO, logger="gemma4_kernels")
    return caplog

"""Gemma 4 shapes the microbenchmarks run at, named so a result reads "26B-A4B decode T=64".

The dimensions the per-op model (``op_model.py``) needs: hidden size, layer count, MoE
experts/top-k, the per-layer-embedding width and the KV-shared layer count (DESIGN.md's
model table). The whole-step model (``layer_model.py``) reads each model's full config,
with its sources, from ``layer_kernels/<model>.json``; a test keeps the two in agreement.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

DECODE_TOKENS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
PREFILL_TOKENS = (512, 1024, 2048, 4096, 8192)
TP_SIZES = (1, 2)


@dataclass(frozen=True)
class ModelShape:
    name: str
    arch: str  # "moe" | "dense" | "ple": which layer structure (and which of our ops) applies
    hidden: int
    layers: int
    experts: int = 0
    top_k: int = 0
    ple_dim: int = 0
    kv_shared_layers: int = 0


MODELS: dict[str, ModelShape] = {
    m.name: m
    for m in (
        ModelShape("26B-A4B", "moe", hidden=2816, layers=30, experts=128, top_k=8),
        ModelShape("31B", "dense", hidden=5376, layers=60),
        ModelShape("E4B", "ple", hidden=2560, layers=42, ple_dim=256, kv_shared_layers=18),
        ModelShape("E2B", "ple", hidden=1536, layers=35, ple_dim=256, kv_shared_layers=20),
    )
}


@dataclass(frozen=True)
class Case:
    model: ModelShape
    phase: str  # "decode" | "prefill"
    tokens: int
    tp: int = 1

    @property
    def label(self) -> str:
        tp = f" TP={self.tp}" if self.tp != 1 else ""
        return f"{self.model.name} {self.phase} T={self.tokens}{tp}"


def select_models(names: Iterable[str] | None = None) -> list[ModelShape]:
    """The named models (all when ``names`` is empty); unknown names are an error."""
    names = [n for n in (names or ()) if n]
    unknown = sorted(set(names) - set(MODELS))
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}; choose from {sorted(MODELS)}")
    return [MODELS[n] for n in names] if names else list(MODELS.values())


def cases(
    models: Iterable[str] | None = None,
    phases: Iterable[str] = ("decode", "prefill"),
    tp_sizes: Iterable[int] = (1,),
) -> list[Case]:
    """Every (model, phase, T, TP) case, decode T = 1..256 and prefill up to 8192."""
    tokens = {"decode": DECODE_TOKENS, "prefill": PREFILL_TOKENS}
    phases = list(phases)
    bad = sorted(set(phases) - set(tokens))
    if bad:
        raise ValueError(f"unknown phase(s) {bad}; choose from {sorted(tokens)}")
    return [
        Case(model, phase, t, tp)
        for model in select_models(models)
        for phase in phases
        for t in tokens[phase]
        for tp in tp_sizes
    ]

"""Launches and HBM bytes of a whole Gemma 4 decode step on SGLang 0.5.23's CUDA path.

A model, read from the code, not a measurement. ``layer_kernels/<arch>.json`` lists, per
model, every kernel SGLang launches on CUDA in the embedding step, in one decoder layer
and after the last layer, each with the HBM bytes it must move as an expression, the
code it comes from, and when it runs (sliding/full attention, KV-shared layers, ...).
Each of our patches is one entry there: the stock kernels it replaces and what runs
instead (``next:<id>`` names a kernel of the following layer; after the last layer, the
patch's ``last_layer_next`` kernel of the exit step).

Per-layer attention shapes come from SGLang's own config step
(``_gemma4_attention_shapes``) applied to transformers' ``Gemma4TextConfig`` built from
the data's config, so sliding and full layers get the head_dim and KV heads SGLang
builds them with. Bytes are a lower bound at the roofline: each tensor read or written
once, bf16 activations and weights; attention reads K and V over each request's span
(``context`` tokens, capped at the sliding window); MoE weights are those of the expected
number of distinct experts T tokens route to under uniform routing. TP 1, decode only.
"""

from __future__ import annotations

import ast
import functools
import json
import operator
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from microbench.harness import roofline_seconds
from microbench.shapes import MODELS

DATA = Path(__file__).resolve().parent / "layer_kernels"
DATA_FILES = {"26B-A4B": "moe_26b_a4b", "31B": "dense_31b", "E4B": "ple_e4b", "E2B": "ple_e2b"}
DEFAULT_CONTEXT = 2048  # tokens already in each request's KV cache at the decode step
WHAT = "model (CUDA path, whole decode step)"

# --- expressions in the data: arithmetic and boolean conditions over named values ------
_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Pow: operator.pow,
}
_FUNCTIONS = {"min": min, "max": max}


@functools.cache
def _parse(expression: str) -> ast.Expression:
    return ast.parse(expression, mode="eval")


def evaluate(expression: str, names: Mapping[str, Any]) -> Any:
    """Value of a data expression: + - * / **, and/or/not, min/max, names, numbers only
    (the data files stay plain data; nothing else is evaluated)."""

    def walk(node: ast.AST) -> Any:
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return node.value
        if isinstance(node, ast.Name):
            if node.id not in names:
                raise ValueError(f"unknown name {node.id!r} in {expression!r}")
            return names[node.id]
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            return _BINARY[type(node.op)](walk(node.left), walk(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            return not walk(node.operand)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -walk(node.operand)
        if isinstance(node, ast.BoolOp):
            values = [walk(v) for v in node.values]
            return all(values) if isinstance(node.op, ast.And) else any(values)
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in _FUNCTIONS
            and not node.keywords
        ):
            return _FUNCTIONS[node.func.id](*(walk(a) for a in node.args))
        raise ValueError(f"unsupported expression {expression!r} ({type(node).__name__})")

    return walk(_parse(expression))


# --- the model's layers, as SGLang builds them -------------------------------------------
@dataclass(frozen=True)
class Layer:
    index: int
    full: bool  # full attention (else sliding window)
    kv_shared: bool  # reads an earlier layer's KV cache (E2B/E4B's last layers)
    head_dim: int
    heads: int
    kv_heads: int
    intermediate: int  # dense MLP width (doubled on KV-shared layers with use_double_wide_mlp)
    k_eq_v: bool  # attention_k_eq_v applies (full, own KV)
    moe: bool
    ple: bool


def layers_of(config: Mapping[str, Any]) -> list[Layer]:
    """Every decoder layer of ``config`` (``Gemma4TextConfig`` keyword arguments)."""
    from sglang.srt.utils.hf_transformers.config import _gemma4_attention_shapes
    from transformers import Gemma4TextConfig

    hf = Gemma4TextConfig(**config)
    shapes = _gemma4_attention_shapes(hf)  # SGLang: layer type -> (head_dim, kv heads)
    first_shared = hf.num_hidden_layers - (hf.num_kv_shared_layers or 0)
    out = []
    for index, layer_type in enumerate(hf.layer_types):
        full = layer_type == "full_attention"
        head_dim, kv_heads = shapes[layer_type]
        kv_shared = bool(hf.num_kv_shared_layers) and index >= first_shared
        wide = bool(hf.use_double_wide_mlp) and kv_shared
        out.append(
            Layer(
                index=index,
                full=full,
                kv_shared=kv_shared,
                head_dim=head_dim,
                heads=hf.num_attention_heads,
                kv_heads=kv_heads,
                intermediate=hf.intermediate_size * (2 if wide else 1),
                k_eq_v=bool(hf.attention_k_eq_v) and full and not kv_shared,
                moe=bool(hf.enable_moe_block),
                ple=bool(hf.hidden_size_per_layer_input),
            )
        )
    return out


def expected_experts(experts: int, top_k: int, tokens: int) -> float:
    """Distinct experts T tokens touch when each picks top_k of experts uniformly."""
    return experts * (1 - (1 - top_k / experts) ** tokens)


def _names(config: Mapping[str, Any], tokens: int, context: int, layer: Layer | None) -> dict:
    hf_layers = config["num_hidden_layers"]
    experts = config.get("num_experts") or 0
    top_k = config.get("top_k_experts") or 0
    names: dict[str, Any] = {
        "T": tokens,
        "A": 2,  # bf16
        "F4": 4,  # fp32
        "H": config["hidden_size"],
        "V": config["vocab_size"],
        "L": hf_layers,
        "P": config.get("hidden_size_per_layer_input") or 0,
        "E": experts,
        "K": top_k,
        "MI": config.get("moe_intermediate_size") or 0,
        "EH": expected_experts(experts, top_k, tokens) if experts else 0,
    }
    if layer is not None:
        window = config.get("sliding_window", 512)
        names |= {
            "hd": layer.head_dim,
            "qh": layer.heads,
            "kvh": layer.kv_heads,
            "q": layer.heads * layer.head_dim,
            "kv": layer.kv_heads * layer.head_dim,
            "I": layer.intermediate,
            "S": context if layer.full else min(context, window),
            "full": layer.full,
            "sliding": not layer.full,
            "kv_shared": layer.kv_shared,
            "k_eq_v": layer.k_eq_v,
            "moe": layer.moe,
            "ple": layer.ple,
        }
    return names


# --- one decode step ------------------------------------------------------------------
@dataclass
class Launch:
    where: str  # "entry", "layer <i>", "exit"
    id: str
    kernel: str
    bytes: int
    launches: int = 1
    ours: bool = False
    patch: str = ""  # the patch that put it there ("" = stock SGLang)


@dataclass
class Step:
    model: str
    tokens: int
    context: int
    patched: bool
    launches: list[Launch] = field(default_factory=list)

    @property
    def launch_count(self) -> int:
        return sum(k.launches for k in self.launches)

    @property
    def total_bytes(self) -> int:
        return sum(k.bytes for k in self.launches)

    def where(self, where: str) -> list[Launch]:
        return [k for k in self.launches if k.where == where]

    def our_ops(self, where: str) -> Counter:
        """``gemma4::<op>`` -> calls at ``where`` (what the CPU harness counts per layer)."""
        return Counter(f"gemma4::{k.id}" for k in self.where(where) if k.ours)


@functools.cache
def load(model: str) -> dict[str, Any]:
    if model not in DATA_FILES:
        raise ValueError(f"unknown model {model!r}; choose from {sorted(DATA_FILES)}")
    return json.loads((DATA / f"{DATA_FILES[model]}.json").read_text())


def _launch(entry: Mapping[str, Any], where: str, names: Mapping[str, Any], patch: str = ""):
    return Launch(
        where=where,
        id=entry["id"],
        kernel=entry["kernel"],
        bytes=round(evaluate(entry["bytes"], names)),
        launches=entry.get("launches", 1),
        ours=entry.get("ours", False),
        patch=patch,
    )


def _runs(entry: Mapping[str, Any], names: Mapping[str, Any]) -> bool:
    return "when" not in entry or bool(evaluate(entry["when"], names))


def decode_step(
    model: str,
    tokens: int,
    context: int = DEFAULT_CONTEXT,
    patched: bool = True,
    data: Mapping[str, Any] | None = None,
    patches: Iterable[str] | None = None,
) -> Step:
    """Every kernel of one decode step of ``tokens`` requests, stock or patched.

    ``data`` replaces the model's data file (same format; e.g. a tiny test config);
    ``patches`` limits the patched step to those patches (default: all in the data).
    """
    if tokens < 1 or context < 1:
        raise ValueError(f"tokens and context must be >= 1, got {tokens}, {context}")
    data = data if data is not None else load(model)
    config = data["config"]
    layers = layers_of(config)
    step = Step(model, tokens, context, patched)
    global_names = _names(config, tokens, context, None)
    sections: list[tuple[str, list[Launch], dict]] = []
    entry = [_launch(e, "entry", global_names) for e in data["entry"] if _runs(e, global_names)]
    sections.append(("entry", entry, global_names))
    for layer in layers:
        names = _names(config, tokens, context, layer)
        where = f"layer {layer.index}"
        kernels = [_launch(e, where, names) for e in data["layer"] if _runs(e, names)]
        sections.append((where, kernels, names))
    exit_kernels = [_launch(e, "exit", global_names) for e in data["exit"]]
    sections.append(("exit", exit_kernels, global_names))

    if patched:
        wanted = None if patches is None else set(patches)
        known = {p["patch"] for p in data["patches"]}
        if wanted is not None and wanted - known:
            unknown = sorted(wanted - known)
            raise ValueError(f"unknown patch(es) {unknown}; the data has {sorted(known)}")
        for patch in data["patches"]:
            if wanted is None or patch["patch"] in wanted:
                _apply(patch, sections)
    for _, kernels, _ in sections:
        step.launches += kernels
    return step


def _apply(patch: Mapping[str, Any], sections: list[tuple[str, list[Launch], dict]]) -> None:
    """Replace, in every layer where the patch applies, its stock kernels by its own."""
    here = [r for r in patch["replaces"] if not r.startswith("next:")]
    following = [r.removeprefix("next:") for r in patch["replaces"] if r.startswith("next:")]
    for position, (where, kernels, names) in enumerate(sections):
        if not where.startswith("layer") or not _runs(patch, names):
            continue
        ids = [k.id for k in kernels]
        if not all(r in ids for r in here):
            continue  # e.g. a layer type the replaced kernels do not run on
        first = min(ids.index(r) for r in here)
        kept = [k for k in kernels if k.id not in here]
        new = [_launch(b, where, names, patch["patch"]) for b in patch["by"]]
        kept[first:first] = new
        kernels[:] = kept
        if following:
            next_where, next_kernels, _ = sections[position + 1]
            targets = following if next_where.startswith("layer") else [patch["last_layer_next"]]
            missing = [t for t in targets if t not in {k.id for k in next_kernels}]
            if missing:
                raise ValueError(f"{patch['patch']}: {missing} not in {next_where}")
            next_kernels[:] = [k for k in next_kernels if k.id not in targets]


# --- rows for the bench CSV and the README -----------------------------------------------
def step_rows(models: Iterable[str], tokens: Iterable[int], context: int) -> list[dict]:
    """Per (model, T): launches and bytes of one decode step, stock vs patched."""
    rows = []
    for model in models:
        for t in tokens:
            stock = decode_step(model, t, context, patched=False)
            ours = decode_step(model, t, context, patched=True)
            row = {
                "shape": f"{model} decode T={t}",
                "op": "decode step (all layers, embedding, final norm, LM head)",
                "what": WHAT,
                "context": context,
                "layers": MODELS[model].layers,
                "launches_stock": stock.launch_count,
                "launches_patched": ours.launch_count,
                "bytes_stock": stock.total_bytes,
                "bytes_patched": ours.total_bytes,
                "bytes_ratio": round(stock.total_bytes / ours.total_bytes, 4),
            }
            for device in ("H100", "H200"):
                for label, step in (("stock", stock), ("patched", ours)):
                    us = roofline_seconds(step.total_bytes, device) * 1e6
                    row[f"roofline_us_{label}_{device}"] = round(us, 2)
            rows.append(row)
    return rows


def patch_rows(models: Iterable[str], tokens: int, context: int) -> list[dict]:
    """Per (model, patch): what that patch changes in a decode step with every other
    default patch applied (all patches vs all but this one), so a patch that builds on
    another (layer_boundary_fusion after ple_tail on E2B/E4B) shows its own effect."""
    rows = []
    for model in models:
        names = [p["patch"] for p in load(model)["patches"]]
        every = decode_step(model, tokens, context, patches=names)
        for name in names:
            without = decode_step(model, tokens, context, patches=[n for n in names if n != name])
            rows.append(
                {
                    "shape": f"{model} decode T={tokens}",
                    "op": f"patch {name}",
                    "what": WHAT,
                    "context": context,
                    "launches_delta": every.launch_count - without.launch_count,
                    "bytes_delta": every.total_bytes - without.total_bytes,
                }
            )
    return rows

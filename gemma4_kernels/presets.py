"""Per-model launch presets for ``gemma4-kernels serve``: the data file, its validation,
and which preset a checkpoint gets.

The presets live in ``presets.json`` beside this module, one entry per Gemma 4 model
with a source note per value. Detection reads the checkpoint's ``config.json``: the
family comes from the structure (MoE block -> 26B-A4B family, per-layer embeddings ->
E-series, otherwise dense 31B), the model from the exact text dimensions; a Gemma 4
checkpoint of another size gets its family's preset and says so.

Imports neither sglang nor torch: the launcher validates argument names against
SGLang's own parser separately (``gemma4_kernels.serve``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sglang_patches.gemma4_models import GEMMA4_ARCHS

PRESETS_FILE = Path(__file__).with_name("presets.json")
FAMILIES = ("moe", "dense", "ple")
FAMILY_LABEL = {
    "moe": "MoE (26B-A4B family)",
    "dense": "dense (31B family)",
    "ple": "per-layer embeddings (E4B/E2B family)",
}
_MODEL_KEYS = {
    "family",
    "hidden_size",
    "num_hidden_layers",
    "args",
    "with_draft_model",
    "decided_at_startup",
}
_TOP_KEYS = {"schema", "about", "family_fallback", "models"}


@dataclass(frozen=True)
class Setting:
    key: str  # a ServerArgs field name
    value: Any
    source: str


@dataclass(frozen=True)
class Deferred:
    """A value the preset leaves to the server: ``by`` is ``sglang`` or ``patch:<name>``."""

    key: str
    by: str
    source: str


@dataclass(frozen=True)
class Preset:
    name: str
    family: str
    hidden_size: int
    num_hidden_layers: int
    args: tuple[Setting, ...]
    with_draft_model: tuple[Setting, ...]
    decided_at_startup: tuple[Deferred, ...]


@dataclass(frozen=True)
class PresetTable:
    models: dict[str, Preset]
    family_fallback: dict[str, str]


@dataclass(frozen=True)
class Detection:
    preset: Preset | None
    message: str


class PresetError(ValueError):
    """The preset file is malformed; the message names the file and the entry."""


def _entries(where: str, raw: Any, field: str) -> list[tuple[str, Any, str]]:
    """``(key, spec[field], source)`` of an object of ``{field: ..., "source": ...}``."""
    if not isinstance(raw, dict):
        raise PresetError(f"{where}: expected an object, got {type(raw).__name__}")
    out = []
    for key, spec in raw.items():
        if not isinstance(spec, dict) or set(spec) != {field, "source"}:
            raise PresetError(f"{where}.{key}: expected {{'{field}': ..., 'source': '...'}}")
        if not isinstance(spec["source"], str) or not spec["source"].strip():
            raise PresetError(f"{where}.{key}: every value needs a non-empty source note")
        out.append((key, spec[field], spec["source"]))
    return out


def _settings(where: str, raw: Any) -> tuple[Setting, ...]:
    entries = _entries(where, raw, "value")
    for key, value, _ in entries:
        if isinstance(value, (dict, list)) or value is None:
            raise PresetError(f"{where}.{key}: value must be a string, number or true")
    return tuple(Setting(*entry) for entry in entries)


def _deferred(where: str, raw: Any) -> tuple[Deferred, ...]:
    entries = _entries(where, raw, "by")
    for key, by, _ in entries:
        if by != "sglang" and not (isinstance(by, str) and by.startswith("patch:")):
            raise PresetError(f"{where}.{key}: 'by' must be 'sglang' or 'patch:<name>', got {by!r}")
    return tuple(Deferred(*entry) for entry in entries)


def load_presets(path: str | Path = PRESETS_FILE) -> PresetTable:
    """Parse and validate the preset file; any defect raises :class:`PresetError`."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise PresetError(f"{path}: cannot read presets: {exc}") from exc
    if not isinstance(data, dict) or set(data) - _TOP_KEYS or data.get("schema") != 1:
        raise PresetError(f"{path}: expected schema 1 with keys {sorted(_TOP_KEYS)}")
    models: dict[str, Preset] = {}
    for name, raw in (data.get("models") or {}).items():
        where = f"{path.name}:models.{name}"
        if not isinstance(raw, dict) or set(raw) != _MODEL_KEYS:
            raise PresetError(f"{where}: expected exactly the keys {sorted(_MODEL_KEYS)}")
        if raw["family"] not in FAMILIES:
            raise PresetError(f"{where}.family: {raw['family']!r} is not one of {FAMILIES}")
        for dim in ("hidden_size", "num_hidden_layers"):
            if not isinstance(raw[dim], int) or raw[dim] <= 0:
                raise PresetError(f"{where}.{dim}: expected a positive integer")
        args = _settings(f"{where}.args", raw["args"])
        draft = _settings(f"{where}.with_draft_model", raw["with_draft_model"])
        deferred = _deferred(f"{where}.decided_at_startup", raw["decided_at_startup"])
        overlap = {s.key for s in args + draft} & {d.key for d in deferred}
        if overlap:
            raise PresetError(f"{where}: {sorted(overlap)} both set and left to the server")
        models[name] = Preset(
            name, raw["family"], raw["hidden_size"], raw["num_hidden_layers"], args, draft, deferred
        )
    fallback = data.get("family_fallback") or {}
    for family in FAMILIES:
        target = fallback.get(family)
        if target not in models or models[target].family != family:
            raise PresetError(
                f"{path.name}:family_fallback.{family}: must name a {family} model, got {target!r}"
            )
    return PresetTable(models, dict(fallback))


def _text_config(config: dict) -> dict:
    text = config.get("text_config")
    return text if isinstance(text, dict) else config


def gemma4_family(config: dict) -> str | None:
    """``moe`` | ``dense`` | ``ple`` for a Gemma 4 checkpoint config, None otherwise."""
    archs = config.get("architectures") or []
    if not archs or archs[0] not in GEMMA4_ARCHS:
        return None
    text = _text_config(config)
    if text.get("enable_moe_block") or (text.get("num_experts") or 0) > 0:
        return "moe"
    if (text.get("hidden_size_per_layer_input") or 0) > 0:
        return "ple"
    return "dense"


def detect(config: dict | None, table: PresetTable) -> Detection:
    """The preset for a checkpoint config (None with a reason when there is none)."""
    if config is None:
        return Detection(None, "could not read the model's config.json: no preset")
    family = gemma4_family(config)
    if family is None:
        archs = config.get("architectures") or ["(none)"]
        return Detection(
            None,
            f"architecture {archs[0]} is not a Gemma 4 text/multimodal model "
            f"({', '.join(GEMMA4_ARCHS)}): no preset",
        )
    text = _text_config(config)
    dims = (text.get("hidden_size"), text.get("num_hidden_layers"))
    for preset in table.models.values():
        if preset.family == family and (preset.hidden_size, preset.num_hidden_layers) == dims:
            return Detection(
                preset,
                f"Gemma 4 {preset.name}: {FAMILY_LABEL[family]}, hidden {dims[0]}, "
                f"{dims[1]} layers",
            )
    preset = table.models[table.family_fallback[family]]
    return Detection(
        preset,
        f"Gemma 4 {FAMILY_LABEL[family]} of an unlisted size (hidden {dims[0]}, {dims[1]} "
        f"layers): using the {preset.name} preset of that family",
    )


def read_model_config(model_path: str) -> dict | None:
    """``config.json`` of a local checkpoint directory, or of a hub repo through the
    local Hugging Face cache / hub client. None when it cannot be read."""
    local = Path(model_path).expanduser()
    if local.is_dir():
        candidate = local / "config.json"
        return json.loads(candidate.read_text()) if candidate.is_file() else None
    try:
        from huggingface_hub import hf_hub_download

        return json.loads(Path(hf_hub_download(model_path, "config.json")).read_text())
    except Exception:  # no hub client, no network, gated repo: no preset
        return None

"""Extend-attention tile table: (GPU arch, head dim, batch regime, extend length, window)
-> (BLOCK_M, BLOCK_N, num_warps, num_stages, kernel).

SGLang 0.5.23 picks the extend-attention tile from the head dimension alone
(``_get_block_sizes_for_extend_attention``) and launches with ``num_stages=1``. On H100
one tile for every batch shape is far from the best for Gemma 4's head_dim 256: seed
002 measured -28 % to -82 % per call by choosing by batch regime. The choice is data:
``extend_tiles.json`` ships beside this module, ``GEMMA4_KERNELS_EXTEND_TILES=/path.json``
replaces it. A call that matches no entry keeps SGLang's own choice, so an arch with no
entries behaves exactly as stock.

Everything a launch could trip on is checked when the table loads (unknown keys,
non-power-of-two blocks, warps/stages out of range, overlapping entries, a tile whose
K/V staging cannot fit the arch's shared memory), so a bad table fails at startup with
the file and entry named, never as a launch failure mid-serving.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ENV_TABLE = "GEMMA4_KERNELS_EXTEND_TILES"
DEFAULT_TABLE = Path(__file__).with_name("extend_tiles.json")
SCHEMA = 1

KERNELS = ("sglang", "swa_pipelined")
WINDOWS = ("any", "sliding", "full")
WARPS = (1, 2, 4, 8, 16)
MAX_STAGES = 5

# Opt-in shared memory per block (bytes) by arch, from the CUDA programming guide's
# compute-capability table. The load-time check needs a limit for every arch it accepts.
SHARED_MEMORY_BYTES = {
    "sm_80": 163 * 1024,
    "sm_86": 99 * 1024,
    "sm_87": 163 * 1024,
    "sm_89": 99 * 1024,
    "sm_90": 227 * 1024,
    "sm_100": 227 * 1024,
    "sm_103": 227 * 1024,
    "sm_120": 99 * 1024,
}

_ENTRY_KEYS = {
    "arch",
    "head_dim",
    "batch",
    "max_extend",
    "window",
    "block_m",
    "block_n",
    "num_warps",
    "num_stages",
    "kernel",
    "source",
    "gpu_timing",
}
_REQUIRED = {"arch", "head_dim", "block_m", "block_n", "num_warps", "num_stages", "source"}
_TOP_KEYS = {"schema", "description", "entries"}


class TileTableError(ValueError):
    """The tile table is malformed or unsafe; the message names the file and entry."""


@dataclass(frozen=True)
class Range:
    """Inclusive integer range; ``hi=None`` is unbounded."""

    lo: int
    hi: int | None

    def __contains__(self, value: int) -> bool:
        return self.lo <= value and (self.hi is None or value <= self.hi)

    def overlaps(self, other: Range) -> bool:
        return (self.hi is None or other.lo <= self.hi) and (
            other.hi is None or self.lo <= other.hi
        )

    def describe(self) -> str:
        return f"{self.lo}..{'inf' if self.hi is None else self.hi}"


ANY = Range(1, None)


@dataclass(frozen=True)
class Tile:
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int
    kernel: str = "sglang"

    def label(self) -> str:
        suffix = "" if self.kernel == "sglang" else f" {self.kernel}"
        return f"({self.block_m},{self.block_n},w{self.num_warps},s{self.num_stages}){suffix}"


@dataclass(frozen=True)
class TileEntry:
    arch: str
    head_dim: Range
    batch: Range
    max_extend: Range
    window: str
    tile: Tile
    source: str
    gpu_timing: str | None = None

    def matches(self, arch: str, head_dim: int, batch: int, max_extend: int, sliding: bool) -> bool:
        if self.window == "sliding" and not sliding or self.window == "full" and sliding:
            return False
        return (
            arch == self.arch
            and head_dim in self.head_dim
            and batch in self.batch
            and max_extend in self.max_extend
        )

    def overlaps(self, other: TileEntry) -> bool:
        windows_meet = "any" in (self.window, other.window) or self.window == other.window
        return (
            self.arch == other.arch
            and windows_meet
            and self.head_dim.overlaps(other.head_dim)
            and self.batch.overlaps(other.batch)
            and self.max_extend.overlaps(other.max_extend)
        )


def staging_bytes(tile: Tile, head_dim: int, elem_bytes: int = 2) -> int:
    """Lower bound of the shared memory a pipelined K/V loop stages: one K and one V tile
    of ``BLOCK_N x head_dim`` per stage (Triton's own layout may add the Q tile).
    Used only to refuse impossible tables at load; the compiled metrics are the truth."""
    return max(1, tile.num_stages) * tile.block_n * 2 * head_dim * elem_bytes


@dataclass(frozen=True)
class TileTable:
    entries: tuple[TileEntry, ...]
    origin: str

    def lookup(
        self, arch: str | None, head_dim: int, batch: int, max_extend: int, sliding: bool
    ) -> TileEntry | None:
        """The entry for one launch, or None (SGLang's own choice applies)."""
        if arch is None:
            return None
        for entry in self.entries:
            if entry.matches(arch, head_dim, batch, max_extend, sliding):
                return entry
        return None


def _power_of_two(value: Any) -> bool:
    return isinstance(value, int) and value > 0 and value & (value - 1) == 0


def _range(value: Any, where: str, key: str) -> Range:
    if value is None:
        return ANY
    ok = (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], int)
        and (value[1] is None or isinstance(value[1], int))
    )
    if not ok:
        raise TileTableError(f"{where}: {key} must be [lo, hi] (hi may be null), got {value!r}")
    lo, hi = value
    if lo < 1 or (hi is not None and hi < lo):
        raise TileTableError(f"{where}: {key} range {value!r} is empty or below 1")
    return Range(lo, hi)


def _entry(raw: Any, where: str) -> TileEntry:
    if not isinstance(raw, Mapping):
        raise TileTableError(f"{where}: an entry must be an object, got {type(raw).__name__}")
    unknown = sorted(set(raw) - _ENTRY_KEYS)
    if unknown:
        raise TileTableError(f"{where}: unknown key(s) {unknown}; allowed {sorted(_ENTRY_KEYS)}")
    missing = sorted(_REQUIRED - set(raw))
    if missing:
        raise TileTableError(f"{where}: missing key(s) {missing}")
    arch = raw["arch"]
    if arch not in SHARED_MEMORY_BYTES:
        raise TileTableError(f"{where}: arch {arch!r} is not one of {sorted(SHARED_MEMORY_BYTES)}")
    # BLOCK_N <= 128: SGLang's unified (deterministic) path pads window KV to multiples
    # of 128 on the promise that 128 is a multiple of every BLOCK_N.
    for key, top in (("block_m", 256), ("block_n", 128)):
        value = raw[key]
        if not _power_of_two(value) or not 16 <= value <= top:
            raise TileTableError(
                f"{where}: {key} must be a power of two in 16..{top}, got {value!r}"
            )
    if raw["num_warps"] not in WARPS:
        raise TileTableError(f"{where}: num_warps must be one of {WARPS}, got {raw['num_warps']!r}")
    stages = raw["num_stages"]
    if not isinstance(stages, int) or not 1 <= stages <= MAX_STAGES:
        raise TileTableError(f"{where}: num_stages must be in 1..{MAX_STAGES}, got {stages!r}")
    kernel = raw.get("kernel", "sglang")
    if kernel not in KERNELS:
        raise TileTableError(f"{where}: kernel must be one of {KERNELS}, got {kernel!r}")
    window = raw.get("window", "any")
    if window not in WINDOWS:
        raise TileTableError(f"{where}: window must be one of {WINDOWS}, got {window!r}")
    if kernel == "swa_pipelined" and window != "sliding":
        raise TileTableError(f"{where}: kernel swa_pipelined serves only window 'sliding'")
    if kernel == "swa_pipelined" and not raw.get("gpu_timing"):
        raise TileTableError(
            f"{where}: kernel swa_pipelined is chosen only with a gpu_timing that justifies it"
        )
    if not isinstance(raw["source"], str) or not raw["source"].strip():
        raise TileTableError(f"{where}: source must say where the entry comes from")
    head_dim = _range(raw["head_dim"], where, "head_dim")
    if head_dim.hi is None:
        raise TileTableError(f"{where}: head_dim needs an upper bound (shared memory check)")
    tile = Tile(raw["block_m"], raw["block_n"], raw["num_warps"], stages, kernel)
    need, limit = staging_bytes(tile, head_dim.hi), SHARED_MEMORY_BYTES[arch]
    if need > limit:
        raise TileTableError(
            f"{where}: tile {tile.label()} stages at least {need} bytes of shared memory at "
            f"head_dim {head_dim.hi}, over {arch}'s {limit}"
        )
    return TileEntry(
        arch=arch,
        head_dim=head_dim,
        batch=_range(raw.get("batch"), where, "batch"),
        max_extend=_range(raw.get("max_extend"), where, "max_extend"),
        window=window,
        tile=tile,
        source=raw["source"],
        gpu_timing=raw.get("gpu_timing"),
    )


def parse_table(data: Any, origin: str) -> TileTable:
    """Validate a decoded table; raises :class:`TileTableError` naming ``origin``."""
    if not isinstance(data, Mapping):
        raise TileTableError(f"{origin}: the table must be a JSON object")
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise TileTableError(f"{origin}: unknown top-level key(s) {unknown}")
    if data.get("schema") != SCHEMA:
        raise TileTableError(f"{origin}: schema must be {SCHEMA}, got {data.get('schema')!r}")
    raw_entries = data.get("entries")
    if not isinstance(raw_entries, list):
        raise TileTableError(f"{origin}: entries must be a list")
    entries = tuple(_entry(raw, f"{origin} entry {i}") for i, raw in enumerate(raw_entries))
    for i, a in enumerate(entries):
        for j in range(i):
            if a.overlaps(entries[j]):
                raise TileTableError(
                    f"{origin}: entries {j} and {i} overlap ({a.arch}, head_dim "
                    f"{a.head_dim.describe()}, batch {a.batch.describe()}): a launch would "
                    "match both"
                )
    return TileTable(entries, origin)


def load_table(path: str | os.PathLike | None = None) -> TileTable:
    """The table at ``path``, else ``$GEMMA4_KERNELS_EXTEND_TILES``, else the shipped one."""
    if path is None:
        path = os.environ.get(ENV_TABLE) or DEFAULT_TABLE
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise TileTableError(
            f"{path}: cannot read the extend-attention tile table ({exc})"
        ) from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TileTableError(f"{path}: not valid JSON ({exc})") from exc
    return parse_table(data, str(path))


@functools.lru_cache(maxsize=8)
def _cached(path: str, mtime_ns: int) -> TileTable:
    return load_table(path)


def active_table() -> TileTable:
    """The table launches use (re-read when the file or the variable changes)."""
    path = Path(os.environ.get(ENV_TABLE) or DEFAULT_TABLE)
    try:
        mtime = path.stat().st_mtime_ns
    except OSError:
        mtime = -1  # load_table raises the readable error
    return _cached(str(path), mtime)


def dump_table(entries: Iterable[Mapping[str, Any]], description: str) -> dict[str, Any]:
    """A table document (validated) from raw entries, for the tuner to write."""
    doc = {"schema": SCHEMA, "description": description, "entries": list(entries)}
    parse_table(doc, "<generated>")
    return doc


def arch_of_capability(major: int, minor: int) -> str:
    return f"sm_{major}{minor}"


def current_arch() -> str | None:
    """``sm_XY`` of the current CUDA device, or None (CPU, ROCm: the table does not apply)."""
    import torch

    if not torch.cuda.is_available() or torch.version.hip is not None:
        return None
    return arch_of_capability(*torch.cuda.get_device_capability())

"""extend_attention_tiles — Gemma 4's Triton extend attention takes its tile from a table.

SGLang 0.5.23 chooses the extend-attention tile from the head dimension only
(``_get_block_sizes_for_extend_attention(Lq, Lv)``) and launches ``num_stages=1``
(``extend_attention_fwd`` except two Kimi shapes, ``extend_attention_fwd_unified``
always); ``dense_prefill_attention_fwd`` shares the tile function (map §4). Seed 002
measured -28 % to -82 % per call on H100 for Gemma 4's head_dim 256 by choosing the
tile by batch regime, with two stages.

How, without copying SGLang's launchers:

* For a Gemma 4 model, ``TritonAttnBackend.__init__`` binds tiled versions of the three
  launchers on the backend instance (where SGLang binds its own). A tiled launcher reads
  the batch size (``qo_indptr``), the longest extend and whether the layer slides, looks
  the launch up in :mod:`gemma4_kernels.extend_tiles`, and runs SGLang's launcher inside
  a scope holding the entry. Other models' backends are not touched.
* Inside that scope SGLang's ``_get_block_sizes_for_extend_attention`` (module global,
  replaced) returns the entry's BLOCK_M/BLOCK_N/num_warps, and the three ``@triton.jit``
  kernels (module globals, wrapped) launch with the entry's ``num_stages``. Outside a
  scope both are exactly SGLang's.
* An entry with ``kernel: swa_pipelined`` sends an eligible sliding-window launch to our
  ``gemma4::extend_attention_swa`` (its loop pipelines; see that op). The shipped table
  has none: the table chooses it only with a GPU timing.
* ``TritonAttnBackend.extend_attention_block_m`` (the scheduler's tile-budget BLOCK_M,
  used on HIP only in 0.5.23) is set to the tile a single-request prefill launches.

No entry for the launch (another arch, head_dim 512, CPU) = SGLang's own tile. The table
(shipped or ``GEMMA4_KERNELS_EXTEND_TILES``) is read once, when the patch is applied.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from gemma4_kernels import extend_tiles
from sglang_patches.base import CheckResult, Patch, Pin, UndoLog, verify_pins
from sglang_patches.gemma4_models import is_gemma4

EA = "sglang.kernels.ops.attention.extend_attention"
BACKEND = "sglang.srt.layers.attention.triton_backend"

# launcher name -> (kernel global it launches, argument holding the longest extend)
LAUNCHERS = {
    "extend_attention_fwd": ("_fwd_kernel", "max_len_extend"),
    "extend_attention_fwd_unified": ("_fwd_kernel_unified", "max_len_extend"),
    "dense_prefill_attention_fwd": ("_fwd_kernel_dense_prefill", "max_len_q"),
}
BLOCK_SIZES = "_get_block_sizes_for_extend_attention"


@dataclass(frozen=True)
class Launch:
    """What the table is keyed by, for one launcher call."""

    arch: str | None
    head_dim: int
    batch: int
    max_extend: int
    sliding: bool


_scope = threading.local()  # .entry: the table entry of the launch in progress
_forced = threading.local()  # .arch: the arch launches are looked up for (CPU checks)


@contextlib.contextmanager
def _bound(local: threading.local, name: str, value: Any) -> Iterator[None]:
    """``local.name = value`` for the duration (re-entrant: the previous value returns)."""
    previous = getattr(local, name, None)
    setattr(local, name, value)
    try:
        yield
    finally:
        setattr(local, name, previous)


def _current_entry() -> extend_tiles.TileEntry | None:
    return getattr(_scope, "entry", None)


def _entry_scope(entry: extend_tiles.TileEntry) -> contextlib.AbstractContextManager[None]:
    return _bound(_scope, "entry", entry)


def forced_arch(arch: str) -> contextlib.AbstractContextManager[None]:
    """Look launches up as if on ``arch`` (CPU interpreter checks of the table's tiles)."""
    return _bound(_forced, "arch", arch)


@functools.lru_cache(maxsize=1)
def _device_arch() -> str | None:
    return extend_tiles.current_arch()


def launch_arch() -> str | None:
    return getattr(_forced, "arch", None) or _device_arch()


class StagedKernel:
    """A ``@triton.jit`` kernel that launches with the scoped entry's warps and stages."""

    def __init__(self, kernel: Any) -> None:
        self.kernel = kernel

    def __getitem__(self, grid: Any) -> Callable[..., Any]:
        launch = self.kernel[grid]
        entry = _current_entry()
        if entry is None:
            return launch

        def staged(*args: Any, **kwargs: Any) -> Any:
            kwargs["num_warps"] = entry.tile.num_warps
            kwargs["num_stages"] = entry.tile.num_stages
            return launch(*args, **kwargs)

        return staged

    def __getattr__(self, name: str) -> Any:
        return getattr(self.kernel, name)


def _swa_eligible(args: dict[str, Any]) -> str | None:
    """Why an extend_attention_fwd call cannot take the pipelined SWA kernel, or None."""
    import torch

    checks = (
        (args.get("custom_mask") is None, "custom mask"),
        (args.get("sinks") is None, "attention sinks"),
        (args.get("lse_extend") is None, "LSE output"),
        (not args.get("skip_prefix") and not args.get("skip_extend"), "split prefix/extend"),
        (args.get("page_size", 1) == 1, "page size > 1"),
        (args.get("score_mod") is None and args.get("aux_tensors") is None, "score_mod"),
        ((args.get("xai_temperature_len", -1) or -1) <= 0, "xai temperature"),
        (args.get("is_causal", True) is True, "non-causal"),
        (args.get("window_kv_offsets") is None, "window kv offsets"),
        (
            not isinstance(args.get("k_scale"), torch.Tensor)
            and not isinstance(args.get("v_scale"), torch.Tensor),
            "tensor k/v scales",
        ),
        (
            len({args["q_extend"].dtype, args["k_buffer"].dtype, args["k_extend"].dtype}) == 1,
            "mixed q/kv dtypes (fp8 cache)",
        ),
    )
    for ok, reason in checks:
        if not ok:
            return reason
    return None


class ExtendAttentionTiles(Patch):
    name = "extend_attention_tiles"
    purpose = "Gemma 4 Triton extend attention: tile (BLOCK_M/N, warps, stages) by batch regime"
    targets = (
        f"{EA}.{BLOCK_SIZES}",
        *(f"{EA}.{kernel}" for kernel, _ in LAUNCHERS.values()),
        f"{BACKEND}.TritonAttnBackend.__init__",
    )

    pins = (
        Pin(f"{EA}.{BLOCK_SIZES}", "4b4586fff41fa5bd"),
        Pin(f"{EA}.extend_attention_fwd", "b0cc63493292f6b2"),
        Pin(f"{EA}.extend_attention_fwd_unified", "fb849a9f17abfe41"),
        Pin(f"{EA}.dense_prefill_attention_fwd", "bb138cf519a166ab"),
        Pin(f"{BACKEND}.TritonAttnBackend.__init__", "f2dba0f1048f11fd"),
    )

    def __init__(self) -> None:
        super().__init__()
        self.launches: Counter[tuple[str, str]] = Counter()
        self.table: extend_tiles.TileTable | None = None  # read once per application

    def check(self) -> CheckResult:
        result = verify_pins(self.pins)
        if not result.ok:
            return result
        # A malformed or unsafe table is an error now, not a launch failure later.
        table = extend_tiles.active_table()
        return CheckResult.ready(
            f"targets unchanged; {len(table.entries)} table entries ({table.origin})"
        )

    # --- the launch path ----------------------------------------------------------
    def lookup(self, launch: Launch) -> extend_tiles.TileEntry | None:
        table = self.table or extend_tiles.active_table()  # not applied: read it now
        return table.lookup(
            launch.arch, launch.head_dim, launch.batch, launch.max_extend, launch.sliding
        )

    def tiled(self, name: str, original: Callable[..., Any]) -> Callable[..., Any]:
        """SGLang's launcher ``name``, launched with the table's tile for the call."""
        signature = inspect.signature(original)
        _, max_len_arg = LAUNCHERS[name]
        patch = self

        @functools.wraps(original)
        def launcher(*args: Any, **kwargs: Any) -> Any:
            arch = launch_arch()
            if arch is None:  # CPU / ROCm: nothing to look up
                return original(*args, **kwargs)
            bound = signature.bind(*args, **kwargs)
            values = bound.arguments
            q = values.get("q_extend", values.get("q"))
            launch = Launch(
                arch=arch,
                head_dim=int(q.shape[-1]),
                batch=int(values["qo_indptr"].shape[0]) - 1,
                max_extend=int(values[max_len_arg]),
                sliding=(values.get("sliding_window_size", -1) or -1) > 0,
            )
            entry = patch.lookup(launch)
            if entry is None:
                patch.launches[(name, "sglang")] += 1
                return original(*args, **kwargs)
            if entry.tile.kernel == "swa_pipelined" and name == "extend_attention_fwd":
                bound.apply_defaults()
                reason = _swa_eligible(bound.arguments)
                if reason is None:
                    patch.launches[(name, entry.tile.label())] += 1
                    return _run_swa_pipelined(bound.arguments, entry.tile)
                patch.fallback(f"swa_pipelined entry not usable ({reason}); SGLang kernel")
            patch.launches[(name, entry.tile.label())] += 1
            with _entry_scope(entry):
                return original(*args, **kwargs)

        launcher.gemma4_kernels_tiled = True  # functools.wraps copies it onto wrappers
        return launcher

    def block_sizes(self, original: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(original)
        def _get_block_sizes_for_extend_attention(Lq: int, Lv: int) -> tuple:
            d_model, d_pe, d_v, block_m, block_n, num_warps = original(Lq, Lv)
            entry = _current_entry()
            if entry is not None:
                block_m, block_n, num_warps = (
                    entry.tile.block_m,
                    entry.tile.block_n,
                    entry.tile.num_warps,
                )
            return d_model, d_pe, d_v, block_m, block_n, num_warps

        return _get_block_sizes_for_extend_attention

    def backend_init(self, original: Callable[..., Any]) -> Callable[..., Any]:
        patch = self

        @functools.wraps(original)
        def __init__(backend: Any, model_runner: Any, *args: Any, **kwargs: Any) -> None:
            original(backend, model_runner, *args, **kwargs)
            if not is_gemma4(getattr(model_runner.model_config, "hf_config", None)):
                return
            patch.bind(backend, model_runner.model_config.head_dim)

        return __init__

    def bind(self, backend: Any, head_dim: int) -> None:
        """Tiled launchers on ``backend`` (a TritonAttnBackend of a Gemma 4 model)."""
        import torch
        from sglang.kernels.ops.attention import extend_attention

        for name in LAUNCHERS:
            launcher = self.tiled(name, getattr(extend_attention, name))
            setattr(backend, name, torch.compiler.disable(launcher))
        # The tile a single-request prefill launches (the regime the budget reasons about).
        arch = launch_arch()
        prefill = self.lookup(Launch(arch, head_dim, 1, 1 << 20, False))
        if prefill is not None:
            backend.extend_attention_block_m = prefill.tile.block_m

    def _apply(self, undo: UndoLog) -> None:
        from sglang.kernels.ops.attention import extend_attention
        from sglang.srt.layers.attention.triton_backend import TritonAttnBackend

        self.launches.clear()
        # The table launches use; not re-read (or stat'ed) on every launch.
        self.table = extend_tiles.active_table()
        undo.on_rollback("extend tile table", lambda: setattr(self, "table", None))
        undo.set_attr(
            extend_attention, BLOCK_SIZES, self.block_sizes(getattr(extend_attention, BLOCK_SIZES))
        )
        for kernel, _ in LAUNCHERS.values():
            undo.set_attr(extend_attention, kernel, StagedKernel(getattr(extend_attention, kernel)))
        undo.set_attr(
            TritonAttnBackend,
            "__init__",
            self.backend_init(TritonAttnBackend.__dict__["__init__"]),
        )


def _run_swa_pipelined(args: dict[str, Any], tile: extend_tiles.Tile) -> None:
    from gemma4_kernels.ops.extend_attention_swa import extend_attention_swa

    q = args["q_extend"]
    sm_scale = args["sm_scale"] or 1.0 / (q.shape[-1] ** 0.5)
    extend_attention_swa(
        q,
        args["k_extend"],
        args["v_extend"],
        args["o_extend"],
        args["k_buffer"],
        args["v_buffer"],
        args["qo_indptr"],
        args["kv_indptr"],
        args["kv_indices"],
        int(args["max_len_extend"]),
        sm_scale=sm_scale * float(args["k_scale"]),
        sliding_window_size=int(args["sliding_window_size"]),
        logit_cap=float(args["logit_cap"] or 0.0),
        v_scale=float(args["v_scale"]),
        block_m=tile.block_m,
        block_n=tile.block_n,
        num_warps=tile.num_warps,
        num_stages=tile.num_stages,
    )


PATCH = ExtendAttentionTiles()

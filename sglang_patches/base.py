"""Patch records, target pins and the undo log that makes every patch exactly reversible.

A patch is data (name, purpose, targets, switch, default, the parallel settings it
supports) plus three functions:

* ``check()``  side-effect free: are the targets present and unchanged since we read them?
* ``apply()``  idempotent; every mutation goes through an :class:`UndoLog`;
* ``revert()`` replays the undo log backwards, restoring the exact original objects.

Nothing here imports SGLang; patch modules import it inside ``check``/``_apply``.
"""

from __future__ import annotations

import enum
import hashlib
import inspect
import logging
import pkgutil
import sys
import threading
import types
from collections.abc import Callable, Iterable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger("gemma4_kernels")

_MISSING = object()


class State(str, enum.Enum):
    """Where a patch stands in this process."""

    PENDING = "pending"  # install() has not looked at it yet (or it was reverted)
    APPLIED = "applied"
    SKIPPED = "skipped"  # target missing/changed, version gate, unmet requirement
    DISABLED = "disabled"  # switched off by environment or off by default
    FAILED = "failed"  # check()/apply() raised; SGLang left untouched
    UPSTREAM = "upstream"  # SGLang already does what the patch would do

    def __str__(self) -> str:  # so f-strings print "applied", not "State.APPLIED"
        return self.value


@dataclass(frozen=True)
class CheckResult:
    """Outcome of ``Patch.check()``."""

    ok: bool
    reason: str
    upstream: bool = False

    @classmethod
    def ready(cls, reason: str = "targets present and unchanged") -> CheckResult:
        return cls(True, reason)

    @classmethod
    def skip(cls, reason: str) -> CheckResult:
        return cls(False, reason)

    @classmethod
    def fixed_upstream(cls, reason: str) -> CheckResult:
        return cls(False, reason, upstream=True)


@dataclass(frozen=True)
class Parallelism:
    """The parallel settings a patch is safe under.

    Every SGLang rank runs every patch, so a patch states what it supports and the
    framework refuses (loudly) outside it. ``True`` means "any size"; ``False``
    means "only size 1 / off".
    """

    tp: bool = True
    pp: bool = True
    dp_attention: bool = True
    ep: bool = True

    def unsupported(self, cfg: Any) -> str | None:
        """Reason this patch must not act under ``cfg`` (a server-args view), or None."""
        sizes = {
            "tp": ("tp_size", self.tp),
            "pp": ("pp_size", self.pp),
            "dp_attention": ("attn_dp_size", self.dp_attention),
            "ep": ("ep_size", self.ep),
        }
        for label, (attr, allowed) in sizes.items():
            size = getattr(cfg, attr, 1) or 1
            if size > 1 and not allowed:
                return f"{attr}={size} is outside what this patch supports ({label} must be off)"
        return None

    def describe(self) -> str:
        off = [name for name in ("tp", "pp", "dp_attention", "ep") if not getattr(self, name)]
        return "all" if not off else "not with " + ", ".join(off)


@dataclass(frozen=True)
class EnvSwitch:
    """A patch's own environment switch (the seed's names keep working).

    ``1``/``true``/``on`` forces the patch on, ``0``/``false``/``off`` forces it off.
    """

    var: str
    note: str = ""


# ----------------------------------------------------------------------------------
# Target pins: what we read in SGLang 0.5.23, so a changed SGLang is detected.
# ----------------------------------------------------------------------------------


def resolve_target(path: str) -> Any:
    """Import and return the object at dotted ``path`` (``module.attr.attr``)."""
    return pkgutil.resolve_name(path)


def source_fingerprint(obj: Any) -> str:
    """Short SHA-256 of an object's source text (the thing a patch was written against)."""
    if isinstance(obj, (classmethod, staticmethod)):
        obj = obj.__func__
    source = inspect.getsource(obj)
    return hashlib.sha256(source.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Pin:
    """A target and the fingerprint of the source we read when writing the patch."""

    path: str
    fingerprint: str

    def verify(self) -> str | None:
        """None when the target resolves and is unchanged; else a reason to skip."""
        try:
            obj = resolve_target(self.path)
        except (ImportError, AttributeError, ValueError) as exc:
            return f"target {self.path} is missing ({type(exc).__name__}: {exc})"
        try:
            found = source_fingerprint(obj)
        except (OSError, TypeError) as exc:
            return f"target {self.path} has no readable source ({exc})"
        if found != self.fingerprint:
            return (
                f"target {self.path} changed since the patch was written "
                f"(source fingerprint {found}, expected {self.fingerprint})"
            )
        return None


def verify_pins(pins: Iterable[Pin]) -> CheckResult:
    for pin in pins:
        reason = pin.verify()
        if reason is not None:
            return CheckResult.skip(reason)
    return CheckResult.ready()


# ----------------------------------------------------------------------------------
# Undo log
# ----------------------------------------------------------------------------------


def _namespace(owner: Any) -> MutableMapping[str, Any] | types.MappingProxyType:
    return owner.__dict__ if isinstance(owner, type) else vars(owner)


class UndoLog:
    """Records each mutation a patch makes so ``rollback()`` restores the originals.

    Objects are restored by identity (``is``), attributes that did not exist are
    deleted again, and list registrations are removed by identity.
    """

    def __init__(self) -> None:
        self._steps: list[tuple[str, Callable[[], None]]] = []

    def __len__(self) -> int:
        return len(self._steps)

    def describe(self) -> list[str]:
        return [label for label, _ in self._steps]

    def on_rollback(self, label: str, fn: Callable[[], None]) -> None:
        self._steps.append((label, fn))

    def set_attr(self, owner: Any, name: str, value: Any) -> None:
        """``setattr(owner, name, value)``, remembering the raw original (descriptor kept)."""
        original = _namespace(owner).get(name, _MISSING)

        def undo() -> None:
            current = _namespace(owner).get(name, _MISSING)
            if current is not value:
                # Someone (another plugin, SGLang's HookRegistry) rebound it after us:
                # restoring would silently drop their change. Refuse loudly instead.
                raise RuntimeError(
                    f"{_qualname(owner)}.{name} was replaced after gemma4-kernels patched it"
                )
            if original is _MISSING:
                delattr(owner, name)
            else:
                setattr(owner, name, original)

        setattr(owner, name, value)
        self.on_rollback(f"{_qualname(owner)}.{name}", undo)

    def replace_everywhere(self, owner: Any, name: str, new: Any) -> int:
        """Rebind ``owner.name`` and every module global still bound to the original.

        ``from X import f`` copies the reference at import time, so rebinding ``X.f``
        alone leaves stale copies (SGLang's HookRegistry propagates the same way).
        Returns how many extra module bindings were rebound.
        """
        original = _namespace(owner).get(name, _MISSING)
        if original is _MISSING:
            raise AttributeError(f"{_qualname(owner)} has no attribute {name!r} to replace")
        self.set_attr(owner, name, new)
        rebound = 0
        for module in list(sys.modules.values()):
            if module is owner or not isinstance(module, types.ModuleType):
                continue
            try:
                items = list(vars(module).items())
            except TypeError:
                continue
            for attr, value in items:
                if value is original:
                    self.set_attr(module, attr, new)
                    rebound += 1
        return rebound

    def register_in(
        self,
        registry: MutableMapping[Any, list],
        key: Any,
        item: Any,
        register: Callable[[], Any],
    ) -> None:
        """Call SGLang's own ``register()``, then remember how to take ``item`` out again."""
        key_existed = key in registry
        register()
        if not any(entry is item for entry in registry.get(key, ())):
            raise RuntimeError(f"registration of {item!r} under {key!r} did not land")

        def undo() -> None:
            entries = registry.get(key, [])
            for i in range(len(entries) - 1, -1, -1):
                if entries[i] is item:
                    del entries[i]
                    break
            if not key_existed and not entries:
                registry.pop(key, None)

        self.on_rollback(f"registry[{key!r}] += {_qualname(item)}", undo)

    def rollback(self) -> None:
        errors = []
        while self._steps:
            label, undo = self._steps.pop()
            try:
                undo()
            except Exception as exc:  # keep undoing the rest; report at the end
                errors.append(f"{label}: {exc}")
        if errors:
            raise RuntimeError("revert left some targets modified: " + "; ".join(errors))


def _qualname(obj: Any) -> str:
    return getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None) or repr(obj)


# ----------------------------------------------------------------------------------
# Patch
# ----------------------------------------------------------------------------------


@dataclass
class RuntimeNotes:
    """Decisions a patch took while SGLang ran (fallbacks outside supported settings)."""

    counts: dict[str, int] = field(default_factory=dict)

    def note(self, reason: str) -> bool:
        """Count ``reason``; True the first time it is seen (log it then)."""
        first = reason not in self.counts
        self.counts[reason] = self.counts.get(reason, 0) + 1
        return first


class Patch:
    """Base class: subclasses set the record fields and implement check/_apply."""

    name: str = ""
    purpose: str = ""
    targets: tuple[str, ...] = ()
    default_on: bool = True
    switch: EnvSwitch | None = None
    options: tuple[EnvSwitch, ...] = ()  # on/off behaviour switches read at run time
    requires: tuple[str, ...] = ()
    parallel: Parallelism = Parallelism()

    def __init__(self) -> None:
        self._undo: UndoLog | None = None
        self._lock = threading.RLock()
        self.runtime = RuntimeNotes()

    # --- to implement -------------------------------------------------------------
    def check(self) -> CheckResult:
        raise NotImplementedError

    def _apply(self, undo: UndoLog) -> None:
        raise NotImplementedError

    # --- generic --------------------------------------------------------------------
    @property
    def applied(self) -> bool:
        return self._undo is not None

    def apply(self) -> None:
        """Apply once; a second call is a no-op. On error nothing stays modified."""
        with self._lock:
            if self._undo is not None:
                return
            undo = UndoLog()
            self.runtime = RuntimeNotes()  # notes describe the current application only
            try:
                self._apply(undo)
            except BaseException:
                undo.rollback()
                raise
            self._undo = undo

    def revert(self) -> None:
        """Restore every original object; a no-op when not applied."""
        with self._lock:
            undo, self._undo = self._undo, None
            if undo is not None:
                undo.rollback()

    def fallback(self, reason: str) -> None:
        """Record that the patch stepped aside at runtime (logged once per reason)."""
        if self.runtime.note(reason):
            logger.warning("gemma4-kernels: patch %s stepped aside: %s", self.name, reason)

    def __repr__(self) -> str:
        return f"<patch {self.name} applied={self.applied}>"

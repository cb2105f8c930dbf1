"""install / revert / status over the registry, with the version gate and strict mode.

Every decision is logged once: INFO for an applied patch, WARNING for a skipped or
failed one, plus one summary line per install. A patch that raises in check() or
apply() is marked ``failed`` and SGLang carries on with the others; under
``GEMMA4_KERNELS_STRICT=1`` the same situation raises :class:`PatchError` after
reverting what this call applied.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import threading
import traceback
from dataclasses import dataclass

from sglang_patches.base import CheckResult, Patch, State
from sglang_patches.settings import Settings, parse_bool

logger = logging.getLogger("gemma4_kernels")

SUPPORTED_SGLANG = "0.5.23"

_lock = threading.RLock()


class PatchError(RuntimeError):
    """A patch was skipped or failed while strict mode was on."""


@dataclass
class _Record:
    state: State = State.PENDING
    reason: str = "install() has not run in this process"


_records: dict[str, _Record] = {}


def sglang_version() -> str | None:
    """Installed SGLang version from package metadata (does not import sglang)."""
    try:
        return importlib.metadata.version("sglang")
    except importlib.metadata.PackageNotFoundError:
        return None


def _patches() -> list[Patch]:
    from sglang_patches.registry import PATCHES

    return PATCHES


def _record(patch: Patch | str) -> _Record:
    name = patch if isinstance(patch, str) else patch.name
    return _records.setdefault(name, _Record())


def _set(patch: Patch, state: State, reason: str, level: int) -> None:
    rec = _record(patch)
    rec.state, rec.reason = state, reason
    logger.log(level, "gemma4-kernels: %-20s %-8s %s", patch.name, state, reason)


def install(*, strict: bool | None = None) -> list[dict]:
    """Apply every enabled patch whose targets check out; idempotent.

    Returns :func:`status`. Raises ``ValueError`` for malformed switches and, in strict
    mode, :class:`PatchError` when a patch is skipped or fails.
    """
    patches = _patches()
    names = [p.name for p in patches]
    settings = Settings.from_env(names)
    strict = settings.strict if strict is None else strict
    for patch in patches:  # switch values are validated up front, before any change
        patch_switch_decision(settings, patch)
        for option in patch.options:
            parse_bool(option.var, os.environ.get(option.var))
    with _lock:
        applied_now: list[Patch] = []
        problems: list[str] = []
        version = sglang_version()
        gate = None
        if version is None:
            gate = "sglang is not installed"
        elif version != SUPPORTED_SGLANG:
            gate = f"sglang {version} is not the supported {SUPPORTED_SGLANG}"
        if gate is not None and not all(p.applied for p in patches):
            logger.warning("gemma4-kernels: %s; all %d patches skipped", gate, len(patches))
        for patch in patches:
            if patch.applied:
                continue
            enabled, why = patch_switch_decision(settings, patch)
            if not enabled:
                _set(patch, State.DISABLED, why, logging.INFO)
                continue
            if gate is not None:
                rec = _record(patch)
                rec.state, rec.reason = State.SKIPPED, gate  # the gate logged one line
                problems.append(f"{patch.name}: {gate}")
                continue
            missing = [r for r in patch.requires if _record(r).state != State.APPLIED]
            if missing:
                detail = ", ".join(f"{r} is {_record(r).state}" for r in missing)
                _set(patch, State.SKIPPED, f"requires {detail}", logging.WARNING)
                problems.append(f"{patch.name}: requires {detail}")
                continue
            try:
                result = patch.check()
                if not isinstance(result, CheckResult):
                    raise TypeError(f"check() returned {type(result).__name__}, not CheckResult")
            except Exception as exc:
                _fail(patch, "check", exc)
                problems.append(f"{patch.name}: check() raised {exc!r}")
                continue
            if result.upstream:
                _set(patch, State.UPSTREAM, result.reason, logging.INFO)
                continue
            if not result.ok:
                _set(patch, State.SKIPPED, result.reason, logging.WARNING)
                problems.append(f"{patch.name}: {result.reason}")
                continue
            try:
                patch.apply()
            except Exception as exc:
                _fail(patch, "apply", exc)
                problems.append(f"{patch.name}: apply() raised {exc!r}")
                continue
            applied_now.append(patch)
            _set(patch, State.APPLIED, patch.purpose, logging.INFO)
        _summary(version)
        if strict and problems:
            for patch in reversed(applied_now):
                patch.revert()
                rec = _record(patch)
                rec.state, rec.reason = State.PENDING, "reverted: strict mode refused the install"
            raise PatchError(
                "GEMMA4_KERNELS_STRICT=1 and some patches did not apply: " + "; ".join(problems)
            )
    return status()


def patch_switch_decision(settings: Settings, patch: Patch) -> tuple[bool, str]:
    switch_var = patch.switch.var if patch.switch is not None else None
    return settings.decide(patch.name, patch.default_on, switch_var)


def _fail(patch: Patch, phase: str, exc: BaseException) -> None:
    _set(patch, State.FAILED, f"{phase}() raised {type(exc).__name__}: {exc}", logging.WARNING)
    logger.debug(
        "gemma4-kernels: %s %s() traceback:\n%s", patch.name, phase, traceback.format_exc()
    )


def _summary(version: str | None) -> None:
    from gemma4_kernels import __version__

    counts: dict[str, int] = {}
    for patch in _patches():
        state = str(_record(patch).state)
        counts[state] = counts.get(state, 0) + 1
    detail = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    logger.info("gemma4-kernels %s on sglang %s: %s", __version__, version, detail)


def revert() -> None:
    """Revert every applied patch, last applied first; restores the original objects.

    A patch whose target was rebound by someone else after us is not forced back: it
    is marked failed and a RuntimeError naming it is raised after the others revert.
    """
    errors = []
    with _lock:
        for patch in reversed(_patches()):
            if not patch.applied:
                continue
            try:
                patch.revert()
            except RuntimeError as exc:
                _set(patch, State.FAILED, f"revert: {exc}", logging.WARNING)
                errors.append(f"{patch.name}: {exc}")
                continue
            rec = _record(patch)
            rec.state, rec.reason = State.PENDING, "reverted"
            logger.info("gemma4-kernels: %-20s reverted", patch.name)
    if errors:
        raise RuntimeError("; ".join(errors))


def status() -> list[dict]:
    """One record per patch: name, state, target, reason (plus purpose and switches)."""
    rows = []
    for patch in _patches():
        rec = _record(patch)
        rows.append(
            {
                "name": patch.name,
                "state": str(rec.state),
                "target": ", ".join(patch.targets),
                "reason": rec.reason,
                "purpose": patch.purpose,
                "default_on": patch.default_on,
                "switch": patch.switch.var if patch.switch is not None else None,
                "options": [option.var for option in patch.options],
                "parallel": patch.parallel.describe(),
                "runtime_fallbacks": dict(patch.runtime.counts),
            }
        )
    return rows

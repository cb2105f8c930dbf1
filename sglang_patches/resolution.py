"""Shared plumbing for patches that wrap a step of SGLang's server-argument resolution
through ``register_resolution_hook`` (map §6): pins, registration with undo, and the
tiny amount of state the hooks read."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sglang_patches.base import CheckResult, Pin, UndoLog, verify_pins

# The extension point itself: a wrapper registered for a step name runs as
# ``fn(server_args, previous)`` at that step's place in the pipeline.
RESOLUTION_HOOK_PINS = (
    Pin("sglang.srt.arg_groups.resolution_hooks.register_resolution_hook", "73099403db2ee059"),
    Pin("sglang.srt.arg_groups.resolution_hooks.run_hook", "1619f4a36a23413c"),
)


def check_resolution_step(step: str, *pins: Pin) -> CheckResult:
    """Targets unchanged and ``step`` still overridable."""
    result = verify_pins(RESOLUTION_HOOK_PINS + pins)
    if not result.ok:
        return result
    from sglang.srt.arg_groups.resolution_hooks import _OVERRIDABLE_HOOKS

    if step not in _OVERRIDABLE_HOOKS:
        return CheckResult.skip(f"resolution step {step!r} is no longer overridable")
    return result


def register_step_wrapper(
    undo: UndoLog, step: str, wrapper: Callable[[Any, Callable[[Any], None]], None]
) -> None:
    """``register_resolution_hook(step)(wrapper)``, undone on revert."""
    from sglang.srt.arg_groups import resolution_hooks

    undo.register_in(
        resolution_hooks._HOOKS,
        step,
        wrapper,
        lambda: resolution_hooks.register_resolution_hook(step)(wrapper),
    )


def declare(server_args: Any, patch_name: str, **fields: Any) -> None:
    """Declare resolved values under a source label that names our patch."""
    from sglang.srt.arg_groups.overrides import declare_resolution

    declare_resolution(server_args, f"gemma4_kernels.{patch_name}", **fields)

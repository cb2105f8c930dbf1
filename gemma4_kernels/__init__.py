"""gemma4-kernels: Triton kernels for Gemma 4 and the patches that put them into SGLang.

``import gemma4_kernels`` does not import SGLang: the ops are usable on their own.

* ``gemma4_kernels.install()``  apply every enabled patch (idempotent); also done by
  ``import gemma4_kernels.install`` and by SGLang's plugin loader in every process.
* ``gemma4_kernels.revert()``   restore SGLang's original objects.
* ``gemma4_kernels.status()``   one record per patch: name, state, target, reason.
"""

from __future__ import annotations

__version__ = "0.1.0"


def install(*, strict: bool | None = None) -> list[dict]:
    """Apply every enabled patch whose target checks out; returns :func:`status`."""
    from sglang_patches.manager import install as _install

    return _install(strict=strict)


def revert() -> None:
    """Revert every applied patch (original objects restored by identity)."""
    from sglang_patches.manager import revert as _revert

    _revert()


def status() -> list[dict]:
    """``[{name, state, target, reason, ...}]`` for every patch in this process."""
    from sglang_patches.manager import status as _status

    return _status()


__all__ = ["__version__", "install", "revert", "status"]

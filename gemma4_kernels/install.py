"""``import gemma4_kernels.install`` installs every enabled patch in this process.

After the import, ``gemma4_kernels.install`` names this module (Python binds a
submodule over the package attribute of the same name), so the module is made
callable: ``gemma4_kernels.install()`` keeps working either way.
"""

from __future__ import annotations

import sys
import types

from gemma4_kernels import install as _install_fn


class _CallableModule(types.ModuleType):
    def __call__(self, *, strict: bool | None = None) -> list[dict]:
        return _install_fn(strict=strict)


sys.modules[__name__].__class__ = _CallableModule

_install_fn()

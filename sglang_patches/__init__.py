"""SGLang patches for Gemma 4: each a record plus check/apply/revert (see base.py).

Importing this package does not import SGLang; patches import it when checked.
Use :mod:`gemma4_kernels` (``install()``, ``revert()``, ``status()``) to drive them.
"""

from sglang_patches.manager import SUPPORTED_SGLANG, PatchError, install, revert, status

__all__ = ["SUPPORTED_SGLANG", "PatchError", "install", "revert", "status"]

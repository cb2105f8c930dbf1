"""The two things SGLang 0.5.23's Gemma 4 path needs to run on a CPU-only machine.

Used by the CPU harness (tests and the demo) only; never installed by the patches.

1. ``vllm`` import stub. ``RotaryEmbedding.__init__`` imports
   ``vllm._custom_ops.rotary_embedding`` on a platform that is neither CUDA nor
   SGLang's CPU engine (a CUDA build of torch with no GPU is such a platform). The
   imported kernel is used only by ``forward_cuda``; on CPU dispatch goes to
   ``forward_native``, so a module whose function raises if ever called suffices.
2. Triton-interpreter ``libdevice`` functions. Triton 3.8's interpreter leaves the
   ``triton.language.extra.libdevice`` stubs unimplemented (they return ``None``),
   and SGLang's logit-softcap kernel calls ``libdevice.tanh``. Under
   ``TRITON_INTERPRET=1`` the listed functions are given numpy implementations, so
   SGLang's real kernel runs instead of being replaced.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable

from gemma4_kernels.ops._common import interpreter_active

_applied = False


def _vllm_stub() -> None:
    if "vllm" in sys.modules:
        return
    vllm = types.ModuleType("vllm")
    vllm.__path__ = []  # a package, so "vllm._custom_ops" imports
    ops = types.ModuleType("vllm._custom_ops")

    def rotary_embedding(*args, **kwargs):
        raise RuntimeError(
            "vllm stub: rotary_embedding is a CUDA kernel; the CPU harness must take "
            "RotaryEmbedding.forward_native"
        )

    ops.rotary_embedding = rotary_embedding
    vllm._custom_ops = ops
    sys.modules["vllm"] = vllm
    sys.modules["vllm._custom_ops"] = ops


def _unary(np_fn: Callable) -> Callable:
    def shim(arg0, *args, **kwargs):
        from triton.language import core
        from triton.runtime.interpreter import TensorHandle

        handle = arg0.handle
        data = np_fn(handle.data).astype(handle.data.dtype, copy=False)
        return core.tensor(TensorHandle(data, handle.dtype.scalar), arg0.type)

    shim.__name__ = getattr(np_fn, "__name__", "shim")
    return shim


def _libdevice_shims() -> None:
    import numpy as np
    import torch
    from triton.language.extra import libdevice

    def erf(x):
        return torch.erf(torch.from_numpy(np.ascontiguousarray(x))).numpy()

    functions = {
        "tanh": np.tanh,
        "exp": np.exp,
        "log": np.log,
        "sqrt": np.sqrt,
        "rsqrt": lambda x: 1.0 / np.sqrt(x),
        "erf": erf,
    }
    for name, fn in functions.items():
        setattr(libdevice, name, _unary(fn))


def apply_cpu_shims() -> None:
    """Idempotent; call before importing SGLang model code on a machine without a GPU."""
    global _applied
    if _applied:
        return
    _vllm_stub()
    if interpreter_active():
        _libdevice_shims()
    _applied = True

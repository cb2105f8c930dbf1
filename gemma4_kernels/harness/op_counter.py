"""Count, per decoder layer, what one forward really runs: our ``torch.ops.gemma4.*``
calls, Triton kernel launches, and other torch ops.

This is the proof that a patched model runs our kernels. It is not a GPU launch
count: on CPU SGLang takes its native code paths (Gemma 4's fused Triton kernels
check ``is_cuda``), so torch-op counts here describe the CPU path. The CUDA-path
launch and bytes model lives with the microbenchmarks.

Triton launches are counted at ``JITFunction.run`` / the interpreter's
``InterpretedFunction.run`` (one per ``kernel[grid](...)``; autotune trials included,
so count a warmed-up forward). Torch ops issued *inside* a Triton launch (the
interpreter moving data) are not counted.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

OUTSIDE = "outside layers"


@dataclass
class LayerCounts:
    ours: Counter = field(default_factory=Counter)  # gemma4::<op> -> calls
    triton: Counter = field(default_factory=Counter)  # kernel name -> launches
    torch_ops: int = 0  # other dispatcher ops (CPU path; not GPU launches)

    def as_dict(self) -> dict[str, Any]:
        return {"ours": dict(self.ours), "triton": dict(self.triton), "torch_ops": self.torch_ops}


@dataclass
class OpCounts:
    layers: dict[Any, LayerCounts] = field(default_factory=dict)

    def layer(self, key: Any) -> LayerCounts:
        return self.layers.setdefault(key, LayerCounts())

    def per_layer(self, what: str) -> list[int]:
        """Totals of ``what`` ('ours', 'triton' or 'torch_ops') for layers 0..n-1."""
        keys = sorted(k for k in self.layers if isinstance(k, int))
        return [_total(self.layers[k], what) for k in keys]


def _total(counts: LayerCounts, what: str) -> int:
    value = getattr(counts, what)
    return sum(value.values()) if isinstance(value, Counter) else value


class _Counting(TorchDispatchMode):
    def __init__(self, state: _State, namespace: str) -> None:
        super().__init__()
        self.state = state
        self.namespace = namespace

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not self.state.in_triton:
            counts = self.state.counts.layer(self.state.current)
            if func.namespace == self.namespace:
                counts.ours[f"{func.namespace}::{func.__name__.split('.')[0]}"] += 1
            else:
                counts.torch_ops += 1
        return func(*args, **(kwargs or {}))


@dataclass
class _State:
    counts: OpCounts
    current: Any = OUTSIDE
    in_triton: bool = False


def _launch_classes() -> list[type]:
    from triton.runtime.jit import JITFunction

    classes: list[type] = [JITFunction]
    try:
        from triton.runtime.interpreter import InterpretedFunction

        classes.append(InterpretedFunction)
    except ImportError:  # pragma: no cover - interpreter always ships with triton
        pass
    return classes


@contextlib.contextmanager
def count_ops(layers: Sequence[torch.nn.Module], namespace: str = "gemma4") -> Iterator[OpCounts]:
    """Count inside the ``with`` block; ``layers[i]``'s work is attributed to layer ``i``."""
    state = _State(OpCounts())
    handles = []
    for index, layer in enumerate(layers):

        def enter(module, args, index=index):
            state.current = index

        def leave(module, args, output):
            state.current = OUTSIDE

        handles.append(layer.register_forward_pre_hook(enter))
        handles.append(layer.register_forward_hook(leave))

    originals = {}
    for cls in _launch_classes():
        original = cls.__dict__["run"]
        originals[cls] = original

        def run(self, *args, _original=original, **kwargs):
            if kwargs.get("warmup"):
                return _original(self, *args, **kwargs)
            name = getattr(getattr(self, "fn", None), "__name__", None) or repr(self)
            state.counts.layer(state.current).triton[name] += 1
            outer, state.in_triton = state.in_triton, True
            try:
                return _original(self, *args, **kwargs)
            finally:
                state.in_triton = outer

        cls.run = run
    try:
        with _Counting(state, namespace):
            yield state.counts
    finally:
        for cls, original in originals.items():
            cls.run = original
        for handle in handles:
            handle.remove()

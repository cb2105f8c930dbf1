"""The per-layer counter attributes our ops and Triton launches to the right layer."""

from __future__ import annotations

import pytest
import torch
import triton
import triton.language as tl

from gemma4_kernels.harness.op_counter import OUTSIDE, count_ops
from gemma4_kernels.ops._common import interpreter_active


@torch.library.custom_op("g4counter_test::double", mutates_args=())
def _double(x: torch.Tensor) -> torch.Tensor:
    return x * 2


@_double.register_fake
def _(x):
    return torch.empty_like(x)


@triton.jit
def _add_one_kernel(x_ptr, n, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(x_ptr + offs, tl.load(x_ptr + offs, mask=mask) + 1, mask=mask)


class Layer(torch.nn.Module):
    def __init__(self, use_op: bool, launch: bool) -> None:
        super().__init__()
        self.use_op, self.launch = use_op, launch

    def forward(self, x):
        if self.use_op:
            x = torch.ops.g4counter_test.double(x)
        if self.launch:
            x = x.clone()
            _add_one_kernel[(1,)](x, x.numel(), BLOCK=8)
        return x + 0


@pytest.mark.skipif(
    not interpreter_active() and not torch.cuda.is_available(),
    reason="Triton launches need a GPU or TRITON_INTERPRET=1",
)
def test_counts_are_attributed_per_layer():
    device = "cuda" if torch.cuda.is_available() else "cpu"
    layers = torch.nn.ModuleList([Layer(False, False), Layer(True, True), Layer(True, False)])
    x = torch.zeros(4, device=device)
    with count_ops(layers, namespace="g4counter_test") as counts:
        y = x + 1  # outside any layer
        for layer in layers:
            y = layer(y)
    assert y.tolist() == [6.0] * 4  # layer 1: 1 * 2 + 1; layer 2: * 2
    assert dict(counts.layers[1].ours) == {"g4counter_test::double": 1}
    assert dict(counts.layers[2].ours) == {"g4counter_test::double": 1}
    assert dict(counts.layers[0].ours) == {}
    assert dict(counts.layers[1].triton) == {"_add_one_kernel": 1}
    assert counts.per_layer("triton") == [0, 1, 0]
    assert counts.per_layer("ours") == [0, 1, 1]
    assert counts.layers[OUTSIDE].torch_ops >= 1
    # Ops issued inside the Triton launch (interpreter data movement) are not counted:
    # layer 1 runs double, clone, +0 only.
    assert counts.layers[1].torch_ops == 2


def test_hooks_and_launch_wrappers_are_removed():
    from triton.runtime.jit import JITFunction

    before = JITFunction.__dict__["run"]
    layers = torch.nn.ModuleList([Layer(False, False)])
    with count_ops(layers):
        pass
    assert JITFunction.__dict__["run"] is before
    assert not layers[0]._forward_hooks and not layers[0]._forward_pre_hooks

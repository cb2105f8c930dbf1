"""Static metrics of the real compiled code, without a GPU.

``triton.compile`` builds PTX and a cubin for a CUDA target on any machine; the
``ptxas`` and ``cuobjdump`` that ship inside the triton wheel then report registers
per thread, spill bytes, shared memory and the SASS instruction count. Pointer
arguments are marked 16-byte aligned, as they are on a real launch (without that
hint loads degrade to scalar ones and the numbers look worse than reality).

These are properties of the code, not timings.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class StaticMetrics:
    kernel: str
    arch: str
    num_warps: int
    registers: int
    spill_store_bytes: int
    spill_load_bytes: int
    shared_bytes: int
    sass_instructions: int
    mma: str = ""  # "wgmma" (Hopper async MMA), "mma.sync", or "" (no tensor-core MMA)
    async_copies: int = 0  # cp.async instructions in the PTX: what the pipeliner emits

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _tool(name: str) -> str:
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def compile_static(
    fn: Any,
    signature: dict[str, str],
    constexprs: dict[str, Any],
    *,
    num_warps: int,
    num_stages: int = 3,
    capability: int = 90,
) -> StaticMetrics:
    """Compile ``fn`` (a ``@triton.jit`` function) for ``sm_<capability>`` and measure it."""
    _require_compiler()
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    pointer_args = [i for i, ty in enumerate(signature.values()) if ty.startswith("*")]
    attrs = {(i,): [["tt.divisibility", 16]] for i in pointer_args}
    source = ASTSource(fn, signature, constexprs=constexprs, attrs=attrs)
    kernel = triton.compile(
        source,
        target=GPUTarget("cuda", capability, 32),
        options={"num_warps": num_warps, "num_stages": num_stages},
    )
    return measure(kernel, fn.__name__, capability, num_warps)


def compile_launch(
    kernel: Any, args: tuple, kwargs: dict[str, Any], *, capability: int = 90
) -> StaticMetrics:
    """Compile ``kernel`` exactly as ``kernel[grid](*args, **kwargs)`` would on
    ``sm_<capability>``: Triton's own launch binder specializes the arguments (ints equal
    to 1 become constants, 16-divisible ints and 16-byte aligned tensors get the
    divisibility hint), so the code is the one a real launch with these values builds.
    CPU tensors stand in for device tensors (torch aligns both the same way)."""
    _require_compiler()
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import CUDABackend
    from triton.compiler import ASTSource
    from triton.runtime.jit import create_function_from_signature

    target = GPUTarget("cuda", capability, 32)
    backend = CUDABackend(target)
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(
        backend, kwargs, bound, specialization, options
    )
    compiled = triton.compile(
        ASTSource(kernel, signature, constexprs=constexprs, attrs=attrs),
        target=target,
        options=options.__dict__,
    )
    return measure(compiled, kernel.fn.__name__, capability, options.num_warps)


def _require_compiler() -> None:
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise RuntimeError(
            "static compilation needs TRITON_INTERPRET unset (the interpreter replaces jit)"
        )


def measure(kernel: Any, name: str, capability: int, num_warps: int) -> StaticMetrics:
    """ptxas/cuobjdump metrics of a compiled kernel."""
    arch = f"sm_{capability}a" if capability == 90 else f"sm_{capability}"
    with tempfile.TemporaryDirectory() as tmp:
        ptx = os.path.join(tmp, "k.ptx")
        cubin = os.path.join(tmp, "k.cubin")
        with open(ptx, "w") as f:
            f.write(kernel.asm["ptx"])
        info = subprocess.run(
            [_tool("ptxas"), "-v", "--gpu-name", arch, "-o", cubin, ptx],
            capture_output=True,
            text=True,
            check=True,
        ).stderr
        sass = subprocess.run(
            [_tool("cuobjdump"), "-sass", cubin], capture_output=True, text=True, check=True
        ).stdout
    registers = int(re.search(r"Used (\d+) registers", info).group(1))
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", info)
    smem = re.search(r"(\d+) bytes smem", info)
    instructions = sum(1 for line in sass.splitlines() if re.match(r"\s+/\*[0-9a-f]{4,}\*/", line))
    text = kernel.asm["ptx"]
    mma = "wgmma" if "wgmma.mma_async" in text else "mma.sync" if "mma.sync" in text else ""
    return StaticMetrics(
        kernel=name,
        arch=arch,
        num_warps=num_warps,
        registers=registers,
        spill_store_bytes=int(spills.group(1)),
        spill_load_bytes=int(spills.group(2)),
        shared_bytes=max(int(smem.group(1)) if smem else 0, kernel.metadata.shared),
        sass_instructions=instructions,
        mma=mma,
        async_copies=len(re.findall(r"\bcp\.async\.(?:ca|cg)\b", text)),
    )


def signature_of(
    fn: Any, *, pointer: str = "*bf16", floats: tuple[str, ...] = ("eps",)
) -> dict[str, str]:
    """The compile signature of a ``@triton.jit`` kernel following the naming its
    arguments use: ``*_ptr`` pointers of ``pointer`` type, ``floats`` fp32, constexpr
    parameters ``constexpr``, every other scalar i32."""

    def kind(param: Any) -> str:
        if param.is_constexpr:
            return "constexpr"
        if param.name.lower().endswith("_ptr"):
            return pointer
        return "fp32" if param.name in floats else "i32"

    return {param.name: kind(param) for param in fn.params}

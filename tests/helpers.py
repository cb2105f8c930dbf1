"""Helpers shared by tests (fixtures live in conftest.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

GIB = 1024  # SGLang's get_device_memory_capacity reports MiB


def default_patch_states() -> dict[str, str]:
    """What a default install gives each patch. Call it before anything is patched:
    after an install, a fix patch's check() sees its own fix and calls it upstream's."""
    from sglang_patches.registry import PATCHES

    return {
        p.name: "disabled" if not p.default_on else "upstream" if p.check().upstream else "applied"
        for p in PATCHES
    }


def resolve(model_dir: Path, **server_args: Any):
    """Resolve real SGLang ServerArgs for ``model_dir`` as a CUDA server would.

    Returns ``(server_args, view)`` where ``view`` reads the resolved values.
    """
    from sglang.srt.arg_groups.overrides import resolving_view
    from sglang.srt.server_args import ServerArgs

    args = ServerArgs(model_path=str(model_dir), device="cuda", **server_args)
    args.resolve_once()
    return args, resolving_view(args)


def snapshot_sglang() -> dict:
    """Identity snapshot of everything SGLang exposes at module level.

    For every loaded ``sglang.*`` module: each global (by identity), the ``__dict__``
    of each class it defines, and one level into module-level dicts and lists (the
    registries patches append to). Compare two snapshots with ``diff_snapshots``.
    """
    import sys
    import types

    snap: dict = {}
    for mod_name, module in list(sys.modules.items()):
        if not (mod_name == "sglang" or mod_name.startswith("sglang.")):
            continue
        if not isinstance(module, types.ModuleType):
            continue
        for attr, value in list(vars(module).items()):
            snap[(mod_name, attr)] = value
            if isinstance(value, type) and value.__module__ == mod_name:
                for cattr, cvalue in list(value.__dict__.items()):
                    snap[(mod_name, attr, cattr)] = cvalue
            elif isinstance(value, list):
                snap[(mod_name, attr, "[]")] = tuple(value)
            elif isinstance(value, dict):
                snap[(mod_name, attr, "{}")] = tuple(value.items())
                for key, item in list(value.items()):
                    if isinstance(item, list):
                        snap[(mod_name, attr, "{}", key)] = tuple(item)
    return snap


def diff_snapshots(before: dict, after: dict) -> list:
    """Keys whose object is not the same (``is``) in both, restricted to ``before``'s keys,
    plus keys that appeared in modules that existed before."""

    def same(a, b) -> bool:
        if isinstance(a, tuple) and isinstance(b, tuple):
            return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
        return a is b

    changed = [
        key for key, value in before.items() if key not in after or not same(value, after[key])
    ]
    modules = {key[0] for key in before}
    added = [key for key in after if key not in before and key[0] in modules and len(key) > 2]
    return changed + added


def assert_close(name: str, actual, expected, *, rtol: float, atol: float) -> None:
    """``torch.testing.assert_close`` (NaN == NaN) with a report: max error, error ratio,
    NaN mismatches and the first offending indices."""
    import torch

    actual, expected = actual.float(), expected.float()
    if actual.shape != expected.shape:
        raise AssertionError(f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}")
    nan_a, nan_e = torch.isnan(actual), torch.isnan(expected)
    diff = (actual - expected).abs().nan_to_num(0.0)
    bad = (diff > atol + rtol * expected.abs().nan_to_num(0.0)) | (nan_a != nan_e)
    bad &= ~(nan_a & nan_e)
    if bad.any():
        first = bad.nonzero()[:5].tolist()
        got = [actual[tuple(i)].item() for i in first]
        want = [expected[tuple(i)].item() for i in first]
        raise AssertionError(
            f"{name}: {int(bad.sum())}/{bad.numel()} elements differ "
            f"(max |diff| {diff.max().item():.3e}, rtol {rtol}, atol {atol}, "
            f"NaN mismatches {int((nan_a != nan_e).sum())}); first at {first}: "
            f"{got} vs {want}"
        )


def tolerance(dtype) -> dict:
    """Kernel vs reference at the same dtype: both accumulate in fp32 and round once, so
    they differ by fp32 summation order (fp32) or, after rounding, by at most about one
    unit in the last place of the output dtype (fp16 2^-10, bf16 2^-7 relative)."""
    import torch

    return {
        torch.float32: dict(rtol=1e-5, atol=1e-5),
        torch.float16: dict(rtol=2e-3, atol=2e-3),
        torch.bfloat16: dict(rtol=1.6e-2, atol=1.6e-2),
    }[dtype]

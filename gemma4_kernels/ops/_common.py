"""Helpers shared by the op files: input checks, block sizing (no SGLang import here)."""

from __future__ import annotations

import os

import torch

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
MAX_HIDDEN = 16384  # one row per program, held in registers


def interpreter_active() -> bool:
    """True when Triton kernels run in the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def check_row_tensor(name: str, t: object, like: torch.Tensor | None = None) -> None:
    """A ``[T, H]`` float tensor (any strides); with ``like``, same shape, dtype and device."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 2:
        raise ValueError(f"{name} must be 2-D [tokens, hidden], got shape {tuple(t.shape)}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, bfloat16 or float16, got {t.dtype}")
    if like is None:
        if not 1 <= t.shape[1] <= MAX_HIDDEN:
            raise ValueError(f"{name} hidden size must be in 1..{MAX_HIDDEN}, got {t.shape[1]}")
        return
    if t.shape != like.shape:
        raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {tuple(like.shape)}")
    if t.dtype != like.dtype:
        raise TypeError(f"{name} has dtype {t.dtype}, expected {like.dtype}")
    if t.device != like.device:
        raise ValueError(f"{name} is on {t.device}, expected {like.device}")


def check_vector(name: str, v: object, length: int, device: torch.device) -> None:
    """A float vector of ``length`` elements on ``device`` (any float dtype)."""
    if not isinstance(v, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(v).__name__}")
    if not v.is_floating_point():
        raise TypeError(f"{name} must be floating point, got {v.dtype}")
    if v.shape != (length,):
        raise ValueError(f"{name} must have shape ({length},), got {tuple(v.shape)}")
    if not v.is_contiguous():
        raise ValueError(f"{name} must be contiguous")
    if v.device != device:
        raise ValueError(f"{name} is on {v.device}, expected {device}")


def row_block(hidden: int) -> tuple[int, int]:
    """(BLOCK, num_warps) for one row of ``hidden`` elements per program."""
    block = 1 << (hidden - 1).bit_length()
    if block > MAX_HIDDEN:
        raise ValueError(f"hidden size {hidden} exceeds {MAX_HIDDEN}")
    warps = 4 if block < 2048 else 8 if block < 8192 else 16
    return block, warps

"""What the decoder-layer patches need to know about SGLang's norm modules: whether a
norm computes plain Gemma 4 RMSNorm (``x * rsqrt(mean(x^2) + eps) * w``) so that one
of our fused ops computes the same thing, and its (weight, eps)."""

from __future__ import annotations

from typing import Any


def plain_rmsnorm(module: Any) -> tuple[Any, float] | None:
    """(weight, eps) when ``module`` is a plain-weight RMSNorm our ops reproduce, else None."""
    kind = type(module).__name__
    if kind == "RMSNorm":
        if (
            not getattr(module, "has_weight", False)
            or getattr(module, "cast_x_before_out_mul", True)
            or getattr(module, "fp32_residual", True)
            or getattr(module, "override_orig_dtype", 1) is not None
            or getattr(module, "variance_size_override", 1) is not None
            or module.__dict__.get("_quant_linear") is not None  # FP8 input quant fused in
        ):
            return None
        return module.weight, float(module.variance_epsilon)
    if kind == "Gemma4RMSNorm":
        if not getattr(module, "with_scale", False) or getattr(module, "scale_shift", 1) != 0:
            return None
        return module.weight, float(module.eps)
    return None


def rows_2d(*tensors: Any) -> bool:
    """All 2-D tensors of one dtype and device, with at least one row."""
    first = tensors[0]
    return (
        all(
            getattr(t, "dim", lambda: 0)() == 2
            and t.dtype == first.dtype
            and t.device == first.device
            for t in tensors
        )
        and first.shape[0] > 0
    )


def layer_tail(layer: Any, x: Any, weight: Any, residual: Any, eps: float) -> Any:
    """A Gemma 4 layer's last step, ``(rmsnorm(x, weight) + residual) * layer.layer_scalar``
    (``gemma4::rmsnorm_residual_scalar``).

    The patches that compute a layer's tail call it through this module attribute
    (``gemma4_layers.layer_tail(...)``), so ``layer_boundary_fusion`` can replace it by
    one kernel that also produces the next layer's input norm.
    """
    from gemma4_kernels.ops.norms import rmsnorm_residual_scalar

    return rmsnorm_residual_scalar(x, weight, residual, layer.layer_scalar, eps)

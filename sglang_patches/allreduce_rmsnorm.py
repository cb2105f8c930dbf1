"""allreduce_rmsnorm — dense Gemma 4 (31B) under TP > 1: the attention's TP all-reduce
and ``post_attention_layernorm`` in one FlashInfer kernel.

Seed 002 PR-A/PR-B (31B-it, H100 TP=2): chat +2.6 % tok/s, TPOT -3.4 %, MMLU within
noise. The post-attention site is the only point of Gemma 4's residual flow that
matches FlashInfer's fused all-reduce + residual + RMSNorm: ``rmsnorm(AR(x))·w`` is
that kernel with a zero residual. The post-FFN site does not match (Gemma adds the
residual *after* the norm) and is not touched; neither are MoE layers (two reductions
meet there) nor PLE layers (E2B/E4B), as in the seed.

Two parts:

* **Server arguments.** SGLang 0.5.23 enables FlashInfer's all-reduce fusion only for
  the architectures in ``_FLASHINFER_ALLREDUCE_FUSION_ARCHS`` (map §7). After
  ``handle_model_specific_adjustments`` we run one more post-process pass that sets
  ``flashinfer_allreduce_fusion_backend="auto"`` for dense Gemma 4 under exactly the
  preconditions SGLang's own auto-enable uses (pinned below: SM90/SM100, TP > 1, no
  DP attention, one node unless SM100, no MoE all-to-all, not already set) and never
  when the user passed ``--enforce-disable-flashinfer-allreduce-fusion``.
* **The model.** In 0.5.23 the attention output's TP sum is completed by the FFN
  boundary (``layer_boundary.prepare._reduce_update_read``: all-reduce, then the
  output transform ``post_attention_layernorm``, then the fused residual add +
  ``pre_feedforward_layernorm``). Boundaries bind that function when a layer is
  built; the patch rebinds the name the binder uses, so for a registered dense
  Gemma 4 post-attention norm the all-reduce and that norm run as
  ``flashinfer_allreduce_residual_rmsnorm(x, zeros, w)`` and the rest of SGLang's step
  runs as before (sum already complete, transform already applied). Every other read,
  model and batch goes to SGLang's function unchanged — bit-identical — including
  whenever FlashInfer declines (batch over 2048 tokens, workspace failure,
  non-contiguous input, no FlashInfer) or the input is not on CUDA.

Only the rows every TP rank holds are fused (no DP attention, no residual gather), so
each rank takes the same decision from the same metadata: no rank can enter the
collective kernel while another falls back.
"""

from __future__ import annotations

import functools
import logging
import weakref
from collections.abc import Callable
from typing import Any

from sglang_patches.base import CheckResult, Parallelism, Patch, Pin, UndoLog
from sglang_patches.gemma4_layers import plain_rmsnorm
from sglang_patches.gemma4_models import has_ple, is_gemma4, is_moe
from sglang_patches.resolution import check_resolution_step, register_step_wrapper

logger = logging.getLogger("gemma4_kernels")

STEP = "handle_model_specific_adjustments"
MODEL = "sglang.srt.models.gemma4_causal"
BOUNDARY = "sglang.srt.layers.layer_boundary"
OVERRIDES = "sglang.srt.arg_groups.overrides"
# SGLang's own bound for the fused kernel's workspace (layernorm._forward_with_allreduce_fusion).
MIN_WORKSPACE_TOKENS = 2048


def _on_cuda(x: Any) -> bool:
    return bool(getattr(x, "is_cuda", False))


def _attn_tp_size() -> int:
    from sglang.srt.runtime_context import get_parallel

    return get_parallel().attn_tp_size


def _fusion_backend() -> str | None:
    from sglang.srt.runtime_context import get_exec

    return get_exec().comm.flashinfer_allreduce_fusion_backend


def gemma4_allreduce_rmsnorm_auto_enable(view: Any) -> dict:
    """Post-process pass: SGLang's auto-enable preconditions, for dense Gemma 4."""
    from sglang.srt.arg_groups.overrides import attn_dp_enabled_of, model_config_of
    from sglang.srt.runtime_context import get_platform

    hf_config = model_config_of(view).hf_config
    if not is_gemma4(hf_config) or is_moe(hf_config) or has_ple(hf_config):
        return {}
    platform = get_platform()
    if (
        view.flashinfer_allreduce_fusion_backend is None
        and not view.enforce_disable_flashinfer_allreduce_fusion
        and (platform.is_sm90 or platform.is_sm100)
        and view.tp_size > 1
        and not attn_dp_enabled_of(view)
        and (view.nnodes == 1 or platform.is_sm100)
        and view.moe_a2a_backend == "none"
    ):
        logger.info(
            "gemma4-kernels: flashinfer_allreduce_fusion_backend None -> auto (dense Gemma 4, "
            "TP=%d: post-attention all-reduce + RMSNorm fused)",
            view.tp_size,
        )
        return {"flashinfer_allreduce_fusion_backend": "auto"}
    return {}


class AllreduceRmsnorm(Patch):
    name = "allreduce_rmsnorm"
    purpose = (
        "dense Gemma 4, TP > 1 on SM90/SM100: post-attention TP all-reduce + RMSNorm in "
        "one FlashInfer kernel"
    )
    targets = (
        f"sglang.srt.arg_groups.model_hook.{STEP}",
        f"{BOUNDARY}.boundary._reduce_update_read",
        f"{MODEL}.Gemma4DecoderLayer.__init__",
    )
    # DP attention: SGLang's predicate excludes it; PP is per-stage and harmless.
    parallel = Parallelism(dp_attention=False)

    pins = (
        # The preconditions mirrored in gemma4_allreduce_rmsnorm_auto_enable.
        Pin(f"{OVERRIDES}._flashinfer_allreduce_fusion_auto_enable", "74b43ec3ce9ef26a"),
        Pin(f"{OVERRIDES}._enforce_disable_allreduce_fusion", "93c56d327e8528fe"),
        Pin(f"sglang.srt.arg_groups.model_hook.{STEP}", "1c321ef6fec85a67"),
        # The FFN entry step we wrap, and what it does with a transformed read.
        Pin(f"{BOUNDARY}.prepare._reduce_update_read", "ba049b0796123879"),
        Pin(f"{BOUNDARY}.boundary._TransformedRead.update_and_read", "cb7b5729a3f57bc4"),
        Pin(f"{BOUNDARY}.residual.add_norm.flashinfer_ar_fusion_applies", "392ac91b0359a81d"),
        Pin(
            "sglang.srt.layers.flashinfer_comm_fusion.flashinfer_allreduce_residual_rmsnorm",
            "6ff0dcfc2e419019",
        ),
        Pin(f"{MODEL}.Gemma4DecoderLayer.__init__", "9e9975c609184ad8"),
    )

    def __init__(self) -> None:
        super().__init__()
        # post_attention_layernorm modules of dense, non-PLE Gemma 4 layers
        self._sites: weakref.WeakSet = weakref.WeakSet()
        # (device, dtype, hidden) -> a zero residual of MIN_WORKSPACE_TOKENS rows (read-only)
        self._zeros: dict[tuple, Any] = {}

    def check(self) -> CheckResult:
        return check_resolution_step(STEP, *self.pins)

    # --- server arguments --------------------------------------------------------------
    def step(self, server_args: Any, previous: Callable[[Any], None]) -> None:
        from sglang.srt.arg_groups.overrides import run_post_process_pass

        previous(server_args)
        run_post_process_pass(server_args, gemma4_allreduce_rmsnorm_auto_enable)

    # --- the model: AR + post-attention norm ----------------------------------------------
    def zero_residual(self, x: Any) -> Any:
        """Zeros shaped like ``x``: a slice of a cached buffer (the kernel only reads its
        residual input), or a fresh tensor inside a CUDA-graph capture without one."""
        import torch

        key = (x.device, x.dtype, x.shape[1])
        buffer = self._zeros.get(key)
        if buffer is None or buffer.shape[0] < x.shape[0]:
            if x.is_cuda and torch.cuda.is_current_stream_capturing():
                return torch.zeros_like(x)
            rows = max(x.shape[0], MIN_WORKSPACE_TOKENS)
            buffer = torch.zeros(rows, x.shape[1], dtype=x.dtype, device=x.device)
            self._zeros[key] = buffer
        return buffer[: x.shape[0]]

    def fused_post_attn_norm(self, x: Any, norm_module: Any) -> Any | None:
        """``post_attention_layernorm(all_reduce(x))`` in one kernel, or None (stock path)."""
        import torch
        from sglang.srt.layers import flashinfer_comm_fusion
        from sglang.srt.layers.layer_boundary.residual import add_norm

        if _attn_tp_size() <= 1 or _fusion_backend() is None:
            return None  # nothing to fuse / fusion off by configuration
        if not isinstance(x, torch.Tensor) or not _on_cuda(x):
            self.fallback("attention output not a CUDA tensor (stock all-reduce + norm)")
            return None
        weight_eps = plain_rmsnorm(norm_module)
        if x.dim() != 2 or x.shape[0] == 0 or not x.is_contiguous() or weight_eps is None:
            self.fallback("input not 2-D contiguous rows or norm not plain (stock path)")
            return None
        if not add_norm.flashinfer_ar_fusion_applies(x.shape[0]):
            self.fallback("SGLang's FlashInfer fusion predicate declined the batch (stock path)")
            return None
        weight, eps = weight_eps
        normed, _ = flashinfer_comm_fusion.flashinfer_allreduce_residual_rmsnorm(
            input_tensor=x,
            residual=self.zero_residual(x),
            weight=weight,
            eps=eps,
            max_token_num=max(x.shape[0], MIN_WORKSPACE_TOKENS),
            use_attn_tp_group=True,
        )
        if normed is None:
            self.fallback("FlashInfer declined (workspace, layout or backend): stock path")
            return None
        return normed

    def _apply(self, undo: UndoLog) -> None:
        import torch
        from sglang.srt.layers.layer_boundary import boundary
        from sglang.srt.layers.layer_boundary.boundary import _TransformedRead
        from sglang.srt.layers.layer_boundary.layout import SumGroup
        from sglang.srt.models.gemma4_causal import Gemma4DecoderLayer

        patch = self
        original_init = Gemma4DecoderLayer.__dict__["__init__"]
        original_step = boundary._reduce_update_read

        @functools.wraps(original_init)
        def __init__(layer, *args, **kwargs):
            original_init(layer, *args, **kwargs)
            if not layer.enable_moe_block and not layer.has_ple:
                patch._sites.add(layer.post_attention_layernorm)

        @functools.wraps(original_step)
        def _reduce_update_read(hidden_states, residual, forward_batch, norm, **kwargs):
            read = kwargs.get("read")
            if (
                type(read) is _TransformedRead
                and kwargs.get("group") is SumGroup.ATTN_TP
                and not kwargs.get("gathers_residual")
                # other models' transforms may be any callable (maybe unhashable)
                and isinstance(read.transform.apply, torch.nn.Module)
                and read.transform.apply in patch._sites
            ):
                normed = patch.fused_post_attn_norm(hidden_states, read.transform.apply)
                if normed is not None:
                    # Sum complete and transform applied: SGLang's step does the rest
                    # (residual add + pre-FFN norm) with nothing left to reduce.
                    kwargs.update(group=None, read=read.inner)
                    return original_step(normed, residual, forward_batch, norm, **kwargs)
            return original_step(hidden_states, residual, forward_batch, norm, **kwargs)

        register_step_wrapper(undo, STEP, self.step)
        undo.set_attr(Gemma4DecoderLayer, "__init__", __init__)
        undo.set_attr(boundary, "_reduce_update_read", _reduce_update_read)
        undo.on_rollback("forget registered layers", self._forget)

    def _forget(self) -> None:
        self._sites.clear()
        self._zeros.clear()


PATCH = AllreduceRmsnorm()

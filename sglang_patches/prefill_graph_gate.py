"""prefill_graph_gate — Gemma 4 keeps the breakable prefill CUDA graph off unless asked.

Seed 002: once text-only serving made a Gemma 4 checkpoint non-multimodal, SGLang's
"multimodal model" rule stopped disabling the piecewise prefill graph, the graph was
captured, and dense 31B produced garbage for every prompt (0/20 parity). In 0.5.23
the piecewise graph is the *breakable* backend, on by default on CUDA (map §7); the
multimodal rule is the only thing keeping it off for Gemma 4. This gate keys on the
architecture instead, so it holds whether or not the model is multimodal.

Opt in: ``SGLANG_ENABLE_PIECEWISE_CUDA_GRAPH_FOR_MM=1`` (the seed's switch) lets
SGLang's own choice stand, and an explicit ``--cuda-graph-backend-prefill`` (or
``--cuda-graph-config``) always wins. For a multimodal Gemma 4 server SGLang's own
rule still applies on top.

Hook: ``register_resolution_hook("handle_cuda_graph_config")``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

from sglang_patches.base import CheckResult, EnvSwitch, Patch, Pin, UndoLog
from sglang_patches.gemma4_models import architecture_of, is_gemma4
from sglang_patches.resolution import check_resolution_step, declare, register_step_wrapper
from sglang_patches.settings import parse_bool

logger = logging.getLogger("gemma4_kernels")

STEP = "handle_cuda_graph_config"
OPT_IN = EnvSwitch(
    "SGLANG_ENABLE_PIECEWISE_CUDA_GRAPH_FOR_MM",
    "1 lets SGLang's breakable prefill CUDA graph run for Gemma 4",
)


class PrefillGraphGate(Patch):
    name = "prefill_graph_gate"
    purpose = "Gemma 4: breakable prefill CUDA graph stays off unless the user opts in"
    targets = (f"sglang.srt.arg_groups.cuda_graph_hook.{STEP}",)
    options = (OPT_IN,)

    pins = (
        Pin(f"sglang.srt.arg_groups.cuda_graph_hook.{STEP}", "1fd5d159cbabb888"),
        # Records which (phase, key) the user set explicitly: the gate reads it.
        Pin("sglang.srt.arg_groups.cuda_graph_hook.parse_cuda_graph_config", "a20501b881cc91e4"),
    )

    def check(self) -> CheckResult:
        return check_resolution_step(STEP, *self.pins)

    def step(self, server_args: Any, previous: Callable[[Any], None]) -> None:
        previous(server_args)

        from sglang.srt.arg_groups.overrides import model_config_of, resolving_view
        from sglang.srt.model_executor.cuda_graph_config import Backend, Phase, with_phase

        hf_config = model_config_of(server_args).hf_config
        if not is_gemma4(hf_config):
            return
        cfg = resolving_view(server_args)
        backend = cfg.cuda_graph_config.prefill.backend
        if backend == Backend.DISABLED:
            return
        if (Phase.PREFILL, "backend") in getattr(server_args, "_cuda_graph_config_locked", ()):
            logger.info(
                "gemma4-kernels: prefill_graph_gate keeps prefill CUDA graph backend %r "
                "(set explicitly by the user)",
                backend,
            )
            return
        if parse_bool(OPT_IN.var, os.environ.get(OPT_IN.var)):
            logger.info(
                "gemma4-kernels: prefill_graph_gate keeps prefill CUDA graph backend %r (%s=1)",
                backend,
                OPT_IN.var,
            )
            return
        declare(
            server_args,
            self.name,
            cuda_graph_config=with_phase(
                cfg.cuda_graph_config, Phase.PREFILL, backend=Backend.DISABLED
            ),
        )
        logger.info(
            "gemma4-kernels: cuda_graph_config[prefill].backend %s -> disabled for %s "
            "(opt in with %s=1 or --cuda-graph-backend-prefill)",
            backend,
            architecture_of(hf_config),
            OPT_IN.var,
        )

    def _apply(self, undo: UndoLog) -> None:
        register_step_wrapper(undo, STEP, self.step)


PATCH = PrefillGraphGate()

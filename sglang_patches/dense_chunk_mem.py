"""dense_chunk_mem — dense Gemma 4 (31B, E4B, E2B): smaller prefill chunks, more KV.

Seed 002 (31B-it, H100 TP=2): SGLang auto-tunes ``chunked_prefill_size`` to 8192 on
60–160 GiB GPUs, so one 8k prompt fills a whole prefill batch and decode cannot grow
(peak running requests 11–12); 4096 lets two partial prefills share a step
(summarisation +33 %). ``mem_fraction_static`` auto-tunes to ~0.78 there, leaving
~16 GiB idle; a 0.88 floor grew the KV pool 68k → 106k tokens.

Hook: ``register_resolution_hook("handle_gpu_memory_settings")`` (map §6).

* The chunk is capped *before* SGLang's step runs, so everything SGLang derives from
  it (prefill CUDA-graph sizes, the activation reserve) follows 4096. It is capped
  exactly when 0.5.23 would auto-tune it to 8192 — for a GPU of 60–160 GiB, the rule
  in ``handle_gpu_memory_settings`` (pinned by fingerprint below, and checked against
  SGLang's own result by the tests).
* The 0.88 floor applies after SGLang's step, only in the regime the seed measured:
  a 60–160 GiB GPU and a prefill chunk of at most 4096 tokens (the 12 % headroom then
  covers SGLang's activation reserve for the chunk). Smaller GPUs, larger or disabled
  chunks keep SGLang's value.
* A value the user set is never touched. MoE Gemma 4 is left to ``swa_ratio_moe``.
* Not with pipeline parallelism or DP attention: SGLang reserves extra headroom for
  both, which a fixed floor would eat (nothing was measured there).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from sglang_patches.base import CheckResult, Parallelism, Patch, Pin, UndoLog
from sglang_patches.gemma4_models import is_gemma4, is_moe
from sglang_patches.resolution import check_resolution_step, declare, register_step_wrapper

logger = logging.getLogger("gemma4_kernels")

STEP = "handle_gpu_memory_settings"
CHUNK_AUTO = 8192
CHUNK_CAP = 4096
MEM_FRACTION_FLOOR = 0.88
# GPU memory (MiB) for which SGLang 0.5.23 auto-tunes chunked_prefill_size to 8192.
AUTO_8192_MIB = (60 * 1024, 160 * 1024)


class DenseChunkMem(Patch):
    name = "dense_chunk_mem"
    purpose = (
        "dense Gemma 4: chunked_prefill_size 8192 -> 4096 and mem_fraction_static floor "
        "0.88 when SGLang auto-tuned them"
    )
    targets = (f"sglang.srt.arg_groups.memory_hook.{STEP}",)
    parallel = Parallelism(pp=False, dp_attention=False)

    pins = (Pin(f"sglang.srt.arg_groups.memory_hook.{STEP}", "cc1fe2e7c35eba76"),)

    def check(self) -> CheckResult:
        return check_resolution_step(STEP, *self.pins)

    def step(self, server_args: Any, previous: Callable[[Any], None]) -> None:
        from sglang.srt.arg_groups import memory_hook
        from sglang.srt.arg_groups.overrides import model_config_of, resolving_view

        cfg = resolving_view(server_args)
        hf_config = model_config_of(server_args).hf_config
        if not is_gemma4(hf_config) or is_moe(hf_config):
            previous(server_args)
            return
        unsupported = self.parallel.unsupported(cfg)
        if unsupported is not None:
            self.fallback(unsupported)
            previous(server_args)
            return

        # The same query SGLang's step makes (looked up on its module, so it is the
        # function SGLang itself calls).
        gpu_mib = memory_hook.get_device_memory_capacity(cfg.device)
        measured_regime = gpu_mib is not None and AUTO_8192_MIB[0] <= gpu_mib < AUTO_8192_MIB[1]
        chunk_unset = cfg.chunked_prefill_size is None
        mem_unset = cfg.mem_fraction_static is None

        if chunk_unset and measured_regime:
            declare(server_args, self.name, chunked_prefill_size=CHUNK_CAP)
            logger.info(
                "gemma4-kernels: chunked_prefill_size %d -> %d (dense Gemma 4: two partial "
                "prefills per step let decode batches grow)",
                CHUNK_AUTO,
                CHUNK_CAP,
            )
        elif not chunk_unset:
            logger.info(
                "gemma4-kernels: dense_chunk_mem keeps chunked_prefill_size=%s (already set)",
                cfg.chunked_prefill_size,
            )

        previous(server_args)

        if not mem_unset:
            logger.info(
                "gemma4-kernels: dense_chunk_mem keeps mem_fraction_static=%s (already set)",
                cfg.mem_fraction_static,
            )
            return
        chunk = cfg.chunked_prefill_size
        if (
            measured_regime
            and chunk is not None
            and 0 < chunk <= CHUNK_CAP
            and cfg.mem_fraction_static < MEM_FRACTION_FLOOR
        ):
            before = cfg.mem_fraction_static
            declare(server_args, self.name, mem_fraction_static=MEM_FRACTION_FLOOR)
            logger.info(
                "gemma4-kernels: mem_fraction_static %s -> %s (dense Gemma 4: the KV pool "
                "gets the memory the auto-tune left idle)",
                before,
                MEM_FRACTION_FLOOR,
            )

    def _apply(self, undo: UndoLog) -> None:
        register_step_wrapper(undo, STEP, self.step)


PATCH = DenseChunkMem()

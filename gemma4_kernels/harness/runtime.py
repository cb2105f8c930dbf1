"""SGLang 0.5.23's real Gemma 4 forward on CPU, in-process.

This is SGLang's own path, not a re-implementation: ``ServerArgs`` resolution,
``ModelRunner`` (model build, KV pool and SWA pool, attention backend), the real
``Gemma4ForConditionalGeneration`` with weights loaded through its own
``load_weights`` under HF names, and ``ScheduleBatch``/``ForwardBatch`` driven by
SGLang's one-batch driver (``sglang.benchmark.one_batch.extend``/``decode``).

What differs from a GPU server, and why:

* ``device="cpu"`` (``"cuda"`` when a GPU is present; that path has not been run yet),
  fp32, ``attention_backend="triton"`` with the Triton kernels run by the interpreter
  (``TRITON_INTERPRET=1``) on CPU: Gemma 4's backend check rejects ``torch_native``.
  ``triton_attention_num_kv_splits=1`` only shortens interpretation.
* ``cpu_shims.apply_cpu_shims()``: a ``vllm`` import stub and interpreter
  ``libdevice`` functions (see that module).
* ``max_total_tokens=256``: otherwise the CPU KV pool sizes itself from host memory;
  ``swa_full_tokens_ratio=1.0`` because the one-batch driver cannot evict SWA slots.
* No CUDA graphs (``disable_cuda_graph``); decode metadata can instead be built by
  the CUDA-graph *buffer* code (``decode_metadata="cuda_graph_buffers"``), the
  capture variant, run eagerly — the graph itself cannot be captured on CPU.
* One-batch driver: its tree cache evicts nothing (no radix cache, no SWA eviction).
* SGLang's parallel runtime starts once per process (gloo, world size 1); models are
  built one after another on it. On CPU SGLang's Gemma 4 takes its native paths (its
  fused Triton norm kernels check ``is_cuda``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gemma4_kernels.harness.cpu_shims import apply_cpu_shims
from gemma4_kernels.harness.op_counter import OpCounts, count_ops

HARNESS_SERVER_ARGS: dict[str, Any] = dict(
    dtype="float32",
    attention_backend="triton",
    load_format="dummy",  # weights arrive through model.load_weights
    skip_tokenizer_init=True,
    max_total_tokens=256,
    # The one-batch driver cannot evict, so the SWA pool must hold every token too.
    swa_full_tokens_ratio=1.0,
    disable_cuda_graph=True,
    mem_fraction_static=0.5,
    triton_attention_num_kv_splits=1,
    disable_radix_cache=True,
    random_seed=0,
)


@dataclass
class Generation:
    """Greedy generation: ``logits[s]`` is ``[batch, vocab]`` at step s (0 = prefill)."""

    logits: list[torch.Tensor]
    tokens: list[list[int]]  # per request, one token per step
    op_counts: OpCounts | None = None  # of the decode step asked for, if any


class SGLangCpuRuntime:
    """SGLang's runtime in this process; build tiny models on it with :meth:`load`."""

    _instance: SGLangCpuRuntime | None = None

    def __init__(self) -> None:
        self._started = False
        self._port_args = None

    @classmethod
    def get(cls) -> SGLangCpuRuntime:
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    def _server_args(self, model_dir: Path, overrides: dict[str, Any]):
        from sglang.srt.server_args import ServerArgs

        device = "cuda" if torch.cuda.is_available() else "cpu"
        args = ServerArgs(
            model_path=str(model_dir), device=device, **{**HARNESS_SERVER_ARGS, **overrides}
        )
        args.resolve_once()
        return args

    def _publish(self, server_args) -> None:
        from sglang.srt.runtime_context import SpawnRanks, publish

        publish(server_args, role="scheduler", ranks=SpawnRanks(world_rank=0, gpu_id=0))

    def load(
        self,
        model_dir: str | Path,
        weights: Sequence[tuple[str, torch.Tensor]],
        **server_args: Any,
    ) -> TinySGLangModel:
        """Build SGLang's model for ``model_dir`` (config.json) and load ``weights``."""
        if os.environ.get("TRITON_INTERPRET", "0") in ("", "0") and not torch.cuda.is_available():
            raise RuntimeError(
                "the CPU harness needs TRITON_INTERPRET=1 (set it before importing triton)"
            )
        apply_cpu_shims()
        from sglang.benchmark import one_batch
        from sglang.srt.arg_groups.overrides import resolving_view
        from sglang.srt.configs.model_config import ModelConfig
        from sglang.srt.distributed import bootstrap
        from sglang.srt.model_executor.model_runner import ModelRunner
        from sglang.srt.runtime_context import get_device
        from sglang.srt.server_args import PortArgs

        args = self._server_args(Path(model_dir), server_args)
        if not self._started:
            self._port_args = PortArgs.init_new(args)
            self._publish(args)
            one_batch._init_process_global_configs()
            model_config = ModelConfig.from_server_args(args)
            bootstrap.init_parallel_runtime(
                server_args=args, device=get_device().device, dist_port=self._port_args.nccl_port
            )
            self._started = True
        else:
            self._publish(args)
            model_config = ModelConfig.from_server_args(args)
        bootstrap.init_layer_runtime(model_config=model_config)

        runner = ModelRunner(
            model_config=model_config,
            mem_fraction_static=resolving_view(args).mem_fraction_static,
            gpu_id=0,
            nccl_port=self._port_args.nccl_port,
            server_args=args,
        )
        runner.alloc_memory_pool()
        runner.init_attention_backends()
        runner.init_cuda_graphs()  # a no-op with disable_cuda_graph; keeps the runner complete
        loaded = runner.model.load_weights(iter(weights))
        return TinySGLangModel(runner, loaded)


class TinySGLangModel:
    def __init__(self, runner: Any, loaded: Any) -> None:
        self.runner = runner
        self.loaded_weights = set(loaded or ())

    @property
    def model(self) -> Any:
        return self.runner.model

    def decoder_layers(self) -> Sequence[torch.nn.Module]:
        return self.model.language_model.layers

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        decode_steps: int,
        decode_metadata: str = "eager",
        count_decode_step: int | None = None,
    ) -> Generation:
        """Prefill all prompts as one batch, then ``decode_steps`` greedy decode steps.

        ``count_decode_step=k`` counts the ops of decode step ``k`` (1-based) per layer.
        """
        if count_decode_step is not None and not 1 <= count_decode_step <= decode_steps:
            raise ValueError(
                f"count_decode_step must be in 1..{decode_steps}, got {count_decode_step}"
            )
        if decode_metadata not in ("eager", "cuda_graph_buffers"):
            raise ValueError(
                f"decode_metadata must be 'eager' or 'cuda_graph_buffers', got {decode_metadata!r}"
            )
        from sglang.benchmark import one_batch

        runner = self.runner
        runner.req_to_token_pool.clear()
        runner.token_to_kv_pool_allocator.clear()
        reqs = _requests(prompts, decode_steps)
        # The interpreter evaluates masked-out lanes too (inf - inf); silence numpy there
        # rather than pay for a warning per interpreted program.
        with (
            torch.no_grad(),
            np.errstate(invalid="ignore", over="ignore"),
            self._decode_metadata(decode_metadata, len(prompts)),
        ):
            next_ids, logits, batch = one_batch.extend(reqs, runner)
            step_logits = [logits.detach().to("cpu", torch.float32, copy=True)]
            tokens = [[int(t)] for t in next_ids.tolist()]
            counts = None
            for step in range(1, decode_steps + 1):
                if step == count_decode_step:
                    with count_ops(self.decoder_layers()) as counts:
                        next_ids, logits = one_batch.decode(next_ids, batch, runner)
                else:
                    next_ids, logits = one_batch.decode(next_ids, batch, runner)
                step_logits.append(logits.detach().to("cpu", torch.float32, copy=True))
                for row, token in zip(tokens, next_ids.tolist(), strict=True):
                    row.append(int(token))
        return Generation(step_logits, tokens, counts)

    @contextlib.contextmanager
    def _decode_metadata(self, mode: str, batch_size: int) -> Iterator[None]:
        if mode == "eager":
            yield
            return
        backend = self.runner.attn_backend
        backend.init_cuda_graph_state(batch_size, batch_size)
        eager = backend.init_forward_metadata

        def from_graph_buffers(forward_batch: Any) -> None:
            if not forward_batch.forward_mode.is_decode():
                eager(forward_batch)
                return
            # Capture builds the metadata views over the graph buffers (with dummy
            # write slots); replay refills the same buffers from this batch.
            backend.init_forward_metadata_out_graph(forward_batch, in_capture=True)
            backend.init_forward_metadata_out_graph(forward_batch, in_capture=False)

        backend.init_forward_metadata = from_graph_buffers  # instance attribute, removed below
        try:
            yield
        finally:
            del backend.init_forward_metadata


def _requests(prompts: Sequence[Sequence[int]], decode_steps: int) -> list[Any]:
    from array import array

    from sglang.srt.managers.schedule_batch import Req
    from sglang.srt.sampling.sampling_params import SamplingParams

    params = SamplingParams(temperature=0, max_new_tokens=decode_steps + 1)
    reqs = []
    for rid, ids in enumerate(prompts):
        req = Req(
            rid=rid, origin_input_text="", origin_input_ids=array("q", ids), sampling_params=params
        )
        req.full_untruncated_fill_ids = req.origin_input_ids
        req.logprob_start_len = -1
        req.extend_end = len(req.origin_input_ids)
        reqs.append(req)
    return reqs

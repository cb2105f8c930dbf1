"""EXTEND forwards with cached prefixes on the CPU harness: prefix reuse, chunked
prefill, and batches mixing long and one-token extends.

SGLang's one-batch driver (``sglang.benchmark.one_batch.extend``) prefills requests
from their ``prefix_len`` to their ``extend_end``; its own correctness test re-extends
the same ``Req`` objects after moving those two marks. :class:`PrefixDriver` does the
same: a request keeps its ``req_to_token`` row and the KV slots of everything extended
so far, and each :meth:`PrefixDriver.step` is one EXTEND batch (``ScheduleBatch`` ->
``prepare_for_extend`` -> ``ForwardBatch`` -> ``ModelRunner.forward``: SGLang's path).

    driver = PrefixDriver(model)                 # a harness TinySGLangModel
    a, b = driver.add(prompt_a), driver.add(prompt_b)
    driver.step([(a, 4), (b, 10)])               # prefill a[:4], b[:10]
    logits = driver.step([(a, len(prompt_a)), (b, 11)])   # prefixes 4 / 10 reused

A step returns the logits of each listed request's last extended token (fp32, CPU).
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch


class PrefixDriver:
    def __init__(self, model: Any) -> None:
        self.runner = model.runner
        self.runner.req_to_token_pool.clear()
        self.runner.token_to_kv_pool_allocator.clear()
        self.reqs: list[Any] = []

    def add(self, prompt: Sequence[int]) -> Any:
        """A request for ``prompt``; nothing runs until a step extends it."""
        from sglang.srt.managers.schedule_batch import Req
        from sglang.srt.sampling.sampling_params import SamplingParams

        req = Req(
            rid=len(self.reqs),
            origin_input_text="",
            origin_input_ids=array("q", prompt),
            sampling_params=SamplingParams(temperature=0, max_new_tokens=1),
        )
        req.full_untruncated_fill_ids = req.origin_input_ids
        req.logprob_start_len = -1
        req.prefix_len = 0
        req.extend_end = 0
        self.reqs.append(req)
        return req

    def step(self, plan: Sequence[tuple[Any, int]]) -> torch.Tensor:
        """One EXTEND batch: each ``(request, end)`` extends that request's prompt from
        where it stands to ``end``. Returns ``[len(plan), vocab]`` last-token logits."""
        from sglang.benchmark import one_batch

        if not plan:
            raise ValueError("plan must list at least one (request, end)")
        for req, end in plan:
            if not req.extend_end < end <= len(req.origin_input_ids):
                raise ValueError(
                    f"request {req.rid}: cannot extend from {req.extend_end} to {end} "
                    f"(prompt length {len(req.origin_input_ids)})"
                )
        for req, end in plan:
            req.prefix_len, req.extend_end = req.extend_end, end
        with torch.no_grad(), np.errstate(invalid="ignore", over="ignore"):
            _, logits, _ = one_batch.extend([req for req, _ in plan], self.runner)
        return logits.detach().to("cpu", torch.float32, copy=True)

    def chunked(self, prompts: Sequence[Sequence[int]], chunk: int) -> torch.Tensor:
        """Chunked prefill of ``prompts`` in lockstep, ``chunk`` tokens per request per
        step (a request whose prompt is done leaves the batch). Returns each prompt's
        logits from the step that reached its end, in prompt order."""
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        reqs = [self.add(p) for p in prompts]
        final: dict[int, torch.Tensor] = {}
        while len(final) < len(reqs):
            plan = [
                (r, min(r.extend_end + chunk, len(r.origin_input_ids)))
                for r in reqs
                if r.rid not in final
            ]
            logits = self.step(plan)
            for row, (req, end) in enumerate(plan):
                if end == len(req.origin_input_ids):
                    final[req.rid] = logits[row]
        return torch.stack([final[r.rid] for r in reqs])

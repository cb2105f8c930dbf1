"""SGLang vs HF on the same prompts and weights: per-step logit error and greedy agreement.

Tolerance: both sides compute in fp32; they differ only in operation order (fused vs
unfused norms, split-KV attention, the interpreter's numpy arithmetic). Observed
errors on the tiny models are <= 2e-5 with logits of magnitude up to the softcap (30);
``PARITY_ATOL = 1e-4`` leaves 5x margin while every known defect is >= 0.5 off.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from gemma4_kernels.harness.reference import teacher_forced_logits
from gemma4_kernels.harness.runtime import Generation

PARITY_ATOL = 1e-4

# Three requests of different lengths; with sliding_window=8 every request crosses
# the window during the decode steps the tests run.
DEFAULT_PROMPTS: tuple[tuple[int, ...], ...] = (
    (5, 17, 300, 41, 9),
    tuple(range(20, 32)),
    (7, 8, 9),
)


@dataclass
class ParityReport:
    step_max_abs: list[float]  # step 0 = prefill, then one per decode step
    greedy_agree: list[bool]  # per step, all requests
    kv_lens: list[list[int]]  # per request, KV length (incl. the new token) at each step
    per_request: list[list[float]] = field(default_factory=list)

    @property
    def prefill_max_abs(self) -> float:
        return self.step_max_abs[0]

    @property
    def decode_max_abs(self) -> float:
        return max(self.step_max_abs[1:], default=0.0)

    @property
    def all_greedy_agree(self) -> bool:
        return all(self.greedy_agree)

    def decode_max_abs_where(self, predicate) -> float:
        """Largest decode error over (request, step) pairs whose KV length passes ``predicate``."""
        values = [
            self.per_request[r][s]
            for r in range(len(self.per_request))
            for s in range(1, len(self.per_request[r]))
            if predicate(self.kv_lens[r][s])
        ]
        return max(values, default=0.0)

    def ok(self, atol: float = PARITY_ATOL) -> bool:
        return max(self.step_max_abs) <= atol and self.all_greedy_agree


def compare(
    hf_model: torch.nn.Module, prompts: Sequence[Sequence[int]], generation: Generation
) -> ParityReport:
    """Teacher-force HF on SGLang's own tokens and compare every step's logits."""
    reference = teacher_forced_logits(hf_model, prompts, generation.tokens)
    steps = len(generation.logits)
    per_request, agree, kv_lens = [], [True] * steps, []
    for r, prompt in enumerate(prompts):
        errors = []
        for s in range(steps):
            ours, ref = generation.logits[s][r], reference[r][s]
            errors.append((ours - ref).abs().max().item())
            agree[s] = agree[s] and int(ref.argmax()) == generation.tokens[r][s]
        per_request.append(errors)
        kv_lens.append([len(prompt) + s for s in range(steps)])
    step_max = [max(per_request[r][s] for r in range(len(prompts))) for s in range(steps)]
    return ParityReport(step_max, agree, kv_lens, per_request)

"""HF transformers' Gemma 4 as the oracle: random weights generated once, HF names.

The same ``(name, tensor)`` list is loaded into HF ``Gemma4ForConditionalGeneration``
(here) and into SGLang's model through SGLang's own ``load_weights`` (runtime.py), so
the HF → SGLang name mapping is exercised too. Nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

# Norm weights and scales initialise to ones in HF; perturbing them makes a norm or
# scale that is dropped or misapplied show up in the logits.
_PERTURBED = ("norm", "scale", "layer_scalar")
_LEFT_ALONE = ("embed_scale", "root_size")


def random_hf_model(config: Any, seed: int = 0) -> torch.nn.Module:
    """fp32 eager-attention HF model with seeded random weights and perturbed norms."""
    from transformers import Gemma4ForConditionalGeneration

    torch.manual_seed(seed)
    model = Gemma4ForConditionalGeneration._from_config(
        config, attn_implementation="eager", dtype=torch.float32
    ).eval()
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        tensors = list(model.named_parameters()) + list(model.named_buffers())
        for name, tensor in tensors:
            if not tensor.is_floating_point() or any(s in name for s in _LEFT_ALONE):
                continue
            if any(s in name for s in _PERTURBED):
                tensor.mul_(1.0 + 0.3 * torch.randn(tensor.shape, generator=generator))
    return model


def checkpoint_weights(model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """The model's weights under checkpoint (HF) names; the tied LM head is omitted."""
    return [(name, t) for name, t in model.state_dict().items() if name != "lm_head.weight"]


@torch.no_grad()
def teacher_forced_logits(
    model: torch.nn.Module, prompts: Sequence[Sequence[int]], tokens: Sequence[Sequence[int]]
) -> list[torch.Tensor]:
    """HF next-token logits at every generation step of every request.

    Request ``i`` is run once over ``prompt + tokens[:-1]``; row ``s`` of the result
    is the logit vector that predicts ``tokens[s]`` (row 0 = prefill's last token).
    Returns one ``[steps, vocab]`` fp32 tensor per request.
    """
    out = []
    for prompt, generated in zip(prompts, tokens, strict=True):
        sequence = list(prompt) + list(generated[:-1])
        logits = model(input_ids=torch.tensor([sequence])).logits[0].float()
        out.append(logits[len(prompt) - 1 :])
    return out

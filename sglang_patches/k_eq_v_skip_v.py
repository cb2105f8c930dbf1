"""k_eq_v_skip_v — Gemma 4 full-attention layers with ``attention_k_eq_v`` project K once.

In those layers HF has no ``v_proj``: ``value_states = key_states`` right after
``k_proj`` (before ``k_norm`` and RoPE); V then gets ``v_norm`` (no weight) and K gets
``k_norm`` and RoPE. SGLang 0.5.23 loads the K weight into both the K and the V shard of
the fused QKV projection, so every forward runs the same projection twice and the weight
is stored twice (vLLM #41944 removes it).

Here those layers' ``qkv_proj`` is built without a V shard (``v_head_size=0``), its
output is extended with a copy of the K columns (so SGLang's attention forward, which
splits q/k/v and applies k_norm/v_norm/RoPE, runs unchanged), and V loads are dropped.
A checkpoint that does carry a ``v_proj`` for such a layer must equal its ``k_proj``;
otherwise loading refuses loudly. Quantized or biased QKV and KV-shared layers keep
SGLang's projection.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

from sglang_patches.base import CheckResult, Patch, Pin, UndoLog, verify_pins

MODEL = "sglang.srt.models.gemma4_causal"
MM_MODEL = "sglang.srt.models.gemma4_mm"
SEEN = "_gemma4_kernels_kv_loads"


def _k_plus_copy_forward(projection: Any, q_size: int, kv_size: int):
    inner = projection.forward

    def forward(x, *args, **kwargs):
        import torch

        out, bias = inner(x, *args, **kwargs)
        return torch.cat([out, out[..., q_size : q_size + kv_size]], dim=-1), bias

    return forward


def _drop_v_loads(param: Any, seen: dict) -> None:
    loader = param.weight_loader

    def weight_loader(param, loaded_weight, loaded_shard_id=None, *args, **kwargs):
        if loaded_shard_id == "v":
            seen.setdefault("v", []).append(loaded_weight)
            return None
        if loaded_shard_id == "k":
            seen["k"] = loaded_weight
        return loader(param, loaded_weight, loaded_shard_id, *args, **kwargs)

    param.weight_loader = weight_loader


def verify_k_equals_v(model: Any) -> int:
    """After loading, each V offered to a skipped shard must equal its K; returns layers."""
    import torch

    checked = 0
    for name, module in model.named_modules():
        seen = module.__dict__.get(SEEN)
        if seen is None:
            continue
        k = seen.get("k")
        for v in seen.get("v", []):
            if v is k:
                continue  # SGLang's own K -> V duplication
            if k is None or v.shape != k.shape or not torch.equal(v, k):
                raise ValueError(
                    f"{name}: checkpoint V differs from K on an attention_k_eq_v layer; "
                    "k_eq_v_skip_v refuses to derive V from K (disable it with "
                    "GEMMA4_KERNELS_PATCHES=-k_eq_v_skip_v)"
                )
        seen.clear()
        checked += 1
    return checked


class KEqVSkipV(Patch):
    name = "k_eq_v_skip_v"
    purpose = "attention_k_eq_v layers project K once (V = raw K, as HF); no duplicate V weights"
    targets = (
        f"{MODEL}.Gemma4Attention.__init__",
        f"{MODEL}.Gemma4ForCausalLM.load_weights",
        f"{MM_MODEL}.Gemma4ForConditionalGeneration.load_weights",
    )

    pins = (
        Pin(f"{MODEL}.Gemma4Attention.__init__", "e521bdf0650169e9"),
        Pin(f"{MODEL}.Gemma4Attention.forward", "3e2f0f3572e49507"),
        Pin("sglang.srt.layers.linear.QKVParallelLinear.__init__", "2a25766c4e64a029"),
        Pin("sglang.srt.layers.linear.QKVParallelLinear.weight_loader", "a0e20671e0b591e3"),
        Pin(f"{MODEL}.Gemma4ForCausalLM.load_weights", "096c84f14bd54072"),
        Pin(f"{MM_MODEL}.Gemma4ForConditionalGeneration.load_weights", "83483cee730434db"),
    )

    def check(self) -> CheckResult:
        return verify_pins(self.pins)

    def rebuild(self, attn: Any, config: Any, quant_config: Any, prefix: str) -> None:
        from sglang.srt.layers.linear import QKVParallelLinear
        from sglang.srt.utils import add_prefix

        projection = QKVParallelLinear(
            config.hidden_size,
            attn.head_dim,
            attn.total_num_heads,
            attn.total_num_kv_heads,
            bias=False,
            quant_config=quant_config,
            prefix=add_prefix("qkv_proj", prefix),
            v_head_size=0,
        )
        seen: dict = {}
        _drop_v_loads(projection.weight, seen)
        projection.forward = _k_plus_copy_forward(projection, attn.q_size, attn.kv_size)
        attn.qkv_proj = projection  # the duplicated-V projection is released here
        attn.__dict__[SEEN] = seen

    def _apply(self, undo: UndoLog) -> None:
        from sglang.srt.models.gemma4_causal import Gemma4Attention, Gemma4ForCausalLM
        from sglang.srt.models.gemma4_mm import Gemma4ForConditionalGeneration

        patch = self
        original_init = Gemma4Attention.__dict__["__init__"]
        signature = inspect.signature(original_init)

        @functools.wraps(original_init)
        def __init__(attn, *args, **kwargs):
            original_init(attn, *args, **kwargs)
            bound = signature.bind(attn, *args, **kwargs)
            bound.apply_defaults()
            config, quant_config = bound.arguments["config"], bound.arguments["quant_config"]
            layer_type = config.layer_types[bound.arguments["layer_id"]]
            if not (getattr(config, "attention_k_eq_v", False) and layer_type == "full_attention"):
                return
            if attn.is_kv_shared_layer or config.attention_bias or quant_config is not None:
                patch.fallback("k_eq_v layer with KV sharing, bias or quantization keeps V")
                return
            patch.rebuild(attn, config, quant_config, bound.arguments["prefix"])

        undo.set_attr(Gemma4Attention, "__init__", __init__)
        for cls in (Gemma4ForCausalLM, Gemma4ForConditionalGeneration):
            original_load = cls.__dict__["load_weights"]

            @functools.wraps(original_load)
            def load_weights(model, weights, _original=original_load):
                loaded = _original(model, weights)
                verify_k_equals_v(model)
                return loaded

            undo.set_attr(cls, "load_weights", load_weights)


PATCH = KEqVSkipV()

"""gemma4::extend_attention_swa (sliding-window extend attention with an up-front window
range) against its fp32 reference, and the reference against HF's Gemma 4 attention.

Interpreter dtypes are fp32 and fp16: Triton 3.8's interpreter computes ``tl.dot`` of
bf16 operands from their raw bits (garbage, also for SGLang's own kernel), so bf16 is a
GPU-only dtype here.
"""

from __future__ import annotations

import types

import pytest
import torch

from gemma4_kernels.ops.extend_attention_swa import extend_attention_swa, extend_attention_swa_ref

DTYPES = [torch.float32, torch.float16]
TOL = {torch.float32: 2e-5, torch.float16: 4e-3}


def make_batch(extends, prefixes, heads=4, kv_heads=2, head_dim=32, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    ext, pre = torch.tensor(extends), torch.tensor(prefixes)
    qo = torch.cat([torch.zeros(1, dtype=torch.int64), ext.cumsum(0)]).to(torch.int32)
    kvp = torch.cat([torch.zeros(1, dtype=torch.int64), pre.cumsum(0)]).to(torch.int32)
    tokens, slots = int(qo[-1]), int(kvp[-1]) + 5

    def rand(*shape):
        return torch.randn(*shape, generator=g).to(dtype)

    return dict(
        q=rand(tokens, heads, head_dim),
        k=rand(tokens, kv_heads, head_dim),
        v=rand(tokens, kv_heads, head_dim),
        k_buffer=rand(slots, kv_heads, head_dim),
        v_buffer=rand(slots, kv_heads, head_dim),
        qo_indptr=qo,
        kv_indptr=kvp,
        # Scattered, unordered slots, as a paged pool hands them out.
        kv_indices=torch.randperm(slots, generator=g)[: int(kvp[-1])],
        max_len_extend=max(extends, default=0),
    )


def run_kernel(b, window, sm_scale=0.125, **tile):
    o = torch.full_like(b["q"], float("nan"))
    extend_attention_swa(
        b["q"], b["k"], b["v"], o, b["k_buffer"], b["v_buffer"], b["qo_indptr"],
        b["kv_indptr"], b["kv_indices"], b["max_len_extend"], sm_scale=sm_scale,
        sliding_window_size=window, **tile,
    )  # fmt: skip
    return o


def reference(b, window, sm_scale=0.125):
    return extend_attention_swa_ref(
        b["q"], b["k"], b["v"], b["k_buffer"], b["v_buffer"], b["qo_indptr"], b["kv_indptr"],
        b["kv_indices"], sm_scale, window,
    )  # fmt: skip


SHAPES = {
    # name: (extends, prefixes, heads, kv_heads, window)
    "ragged_prefix_and_none": ([5, 40, 1], [0, 20, 37], 4, 2, 7),
    "single_row": ([1], [9], 2, 1, 3),
    "verify_bs8": ([4] * 8, [30] * 8, 8, 1, 11),  # GQA 8 (E2B)
    "long_extend_no_prefix": ([70], [0], 4, 1, 15),  # GQA 4 (E4B)
    "window_wider_than_context": ([6, 3], [5, 2], 4, 2, 100),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", SHAPES)
def test_kernel_matches_reference(name, dtype):
    extends, prefixes, heads, kv_heads, window = SHAPES[name]
    b = make_batch(extends, prefixes, heads, kv_heads, dtype=dtype)
    out = run_kernel(b, window, block_m=16, block_n=16)
    torch.testing.assert_close(out.float(), reference(b, window), atol=TOL[dtype], rtol=TOL[dtype])


@pytest.mark.parametrize("head_dim", [256, 512])
def test_gemma4_head_dims_with_table_tiles(head_dim):
    b = make_batch([3, 20], [12, 0], heads=2, kv_heads=1, head_dim=head_dim)
    out = run_kernel(b, 9, block_m=16, block_n=64)
    torch.testing.assert_close(out, reference(b, 9), atol=2e-5, rtol=2e-5)


def test_empty_batch_and_zero_tokens_launch_nothing():
    b = make_batch([], [])
    assert run_kernel(b, 4).numel() == 0
    b = make_batch([0, 0], [3, 1])
    assert run_kernel(b, 4).numel() == 0


def hf_rows(b, window_radius, request, sm_scale):
    """HF Gemma 4 eager attention over the request's whole sequence (prefix + extend),
    with HF's own sliding-window causal mask (HF window = SGLang radius + 1)."""
    from transformers.masking_utils import sliding_window_causal_mask_function
    from transformers.models.gemma4.modeling_gemma4 import eager_attention_forward

    q0, q1 = int(b["qo_indptr"][request]), int(b["qo_indptr"][request + 1])
    k0, k1 = int(b["kv_indptr"][request]), int(b["kv_indptr"][request + 1])
    loc = b["kv_indices"][k0:k1]
    keys = torch.cat([b["k_buffer"][loc], b["k"][q0:q1]]).float()
    values = torch.cat([b["v_buffer"][loc], b["v"][q0:q1]]).float()
    total, prefix = keys.shape[0], k1 - k0
    heads, kv_heads = b["q"].shape[1], keys.shape[1]
    # Queries at every position; only the extend rows are compared.
    query = torch.zeros(total, heads, keys.shape[-1])
    query[prefix:] = b["q"][q0:q1].float()
    idx = torch.arange(total)
    allowed = sliding_window_causal_mask_function(window_radius + 1)(
        0, 0, idx[:, None], idx[None, :]
    )
    mask = torch.zeros(total, total).masked_fill(~allowed, float("-inf"))
    module = types.SimpleNamespace(num_key_value_groups=heads // kv_heads, training=False)
    out, _ = eager_attention_forward(
        module,
        query.transpose(0, 1)[None],
        keys.transpose(0, 1)[None],
        values.transpose(0, 1)[None],
        mask[None, None],
        scaling=sm_scale,
    )
    return out[0, prefix:]


@pytest.mark.parametrize("name", ["ragged_prefix_and_none", "verify_bs8"])
def test_reference_matches_hf_gemma4_attention(name):
    extends, prefixes, heads, kv_heads, window = SHAPES[name]
    b = make_batch(extends, prefixes, heads, kv_heads)
    ref = reference(b, window)
    for r in range(len(extends)):
        q0, q1 = int(b["qo_indptr"][r]), int(b["qo_indptr"][r + 1])
        torch.testing.assert_close(ref[q0:q1], hf_rows(b, window, r, 0.125), atol=1e-5, rtol=1e-5)


def test_full_attention_reference_is_hf_causal():
    b = make_batch([6], [10], 2, 1)
    torch.testing.assert_close(reference(b, -1), hf_rows(b, 10**6, 0, 0.125), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "change, error, message",
    [
        (dict(q=torch.zeros(3, 4)), ValueError, "q must be 3-D"),
        (dict(k_buffer=[1]), TypeError, "k_buffer must be a torch.Tensor"),
        (dict(v=torch.zeros(5, 2, 32, dtype=torch.float16)), TypeError, "v has dtype"),
        (dict(kv_indptr=torch.zeros(3, dtype=torch.int32)), ValueError, "same length"),
        (dict(kv_indices=torch.zeros(3)), TypeError, "kv_indices must be int32 or int64"),
    ],
)
def test_bad_input_is_refused_before_launch(change, error, message):
    b = make_batch([5], [3])
    b.update(change)
    with pytest.raises(error, match=message):
        run_kernel(b, 4)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(window=0), "sliding_window_size must be a positive int"),
        (dict(block_m=24), "block_m must be a power of two"),
        (dict(block_n=8), "block_n must be a power of two"),
    ],
)
def test_bad_settings_are_refused(kwargs, message):
    b = make_batch([5], [3])
    window = kwargs.pop("window", 4)
    with pytest.raises(ValueError, match=message):
        run_kernel(b, window, **kwargs)


def test_opcheck():
    b = make_batch([3, 5], [4, 0])
    o = torch.zeros_like(b["q"])
    args = (
        b["q"], b["k"], b["v"], o, b["k_buffer"], b["v_buffer"], b["qo_indptr"], b["kv_indptr"],
        b["kv_indices"], 5, 0.125, 3, 0.0, 1.0, 16, 16, 4, 2,
    )  # fmt: skip
    torch.library.opcheck(torch.ops.gemma4.extend_attention_swa.default, args)

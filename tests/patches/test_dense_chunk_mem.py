"""dense_chunk_mem against the real SGLang 0.5.23 argument resolution on CPU.

The GPU-memory query is the only stub (``gpu_memory`` fixture): this machine has no GPU.
"""

from __future__ import annotations

import pytest

from gemma4_kernels.harness.tiny_configs import MM_ARCH, TEXT_ARCH
from tests.helpers import resolve

# 24 GiB (4090), 40 GiB (A100-40), 80 GiB (H100), 141 GiB (H200), 180 GiB (B200)
GPU_GIB = (24, 40, 80, 141, 180)


def chunk_mem(model_dir, **kwargs):
    args, view = resolve(model_dir, **kwargs)
    return view.chunked_prefill_size, view.mem_fraction_static, view


@pytest.mark.parametrize("gib", GPU_GIB)
@pytest.mark.parametrize("arch", [MM_ARCH, TEXT_ARCH])
def test_cap_fires_exactly_where_sglang_autotunes_8192(
    install_only, tiny_checkpoint, gpu_memory, gib, arch
):
    gpu_memory(gib)
    model = tiny_checkpoint("dense", arch)
    stock_chunk, stock_mem, _ = chunk_mem(model)
    # What stock SGLang computes when the chunk is 4096 (independent expectation).
    _, stock_mem_at_4096, _ = chunk_mem(model, chunked_prefill_size=4096)

    install_only("dense_chunk_mem")
    chunk, mem, view = chunk_mem(model)
    if stock_chunk == 8192:
        assert chunk == 4096
        # What SGLang derives from the chunk follows it (one resolution pass).
        assert view.cuda_graph_config.prefill.max_bs == 4096
        assert mem == max(stock_mem_at_4096, 0.88)
    else:
        assert (chunk, mem) == (stock_chunk, stock_mem)


def test_h100_dense_values_and_logs(install_only, tiny_checkpoint, gpu_memory, gemma4_logs):
    gpu_memory(80)
    model = tiny_checkpoint("dense")
    stock_chunk, stock_mem, _ = chunk_mem(model)
    assert stock_chunk == 8192 and stock_mem < 0.88  # the seed's starting point
    _, mem_at_4096, _ = chunk_mem(model, chunked_prefill_size=4096)  # what SGLang derives
    install_only("dense_chunk_mem")
    chunk, mem, _ = chunk_mem(model)
    assert (chunk, mem) == (4096, 0.88)
    messages = [r.getMessage() for r in gemma4_logs.records]
    assert any("chunked_prefill_size 8192 -> 4096" in m for m in messages)
    assert any(f"mem_fraction_static {mem_at_4096} -> 0.88" in m for m in messages), messages


def test_h200_floor_does_not_lower_a_higher_value(install_only, tiny_checkpoint, gpu_memory):
    gpu_memory(141)
    model = tiny_checkpoint("dense")
    install_only("dense_chunk_mem")
    chunk, mem, _ = chunk_mem(model)
    assert chunk == 4096 and mem > 0.88


@pytest.mark.parametrize(
    "user, expect_chunk, expect_floor",
    [
        (dict(chunked_prefill_size=2048), 2048, True),
        (dict(chunked_prefill_size=4096), 4096, True),
        (dict(chunked_prefill_size=8192), 8192, False),  # activations need the headroom
        (dict(chunked_prefill_size=-1), -1, False),  # unchunked prefill
        (dict(mem_fraction_static=0.7), 4096, False),
    ],
)
def test_user_values_are_never_touched(
    install_only, tiny_checkpoint, gpu_memory, user, expect_chunk, expect_floor
):
    gpu_memory(80)
    model = tiny_checkpoint("dense")
    stock_chunk, stock_mem, _ = chunk_mem(model, **user)
    install_only("dense_chunk_mem")
    chunk, mem, _ = chunk_mem(model, **user)
    assert chunk == expect_chunk
    if "mem_fraction_static" in user:
        assert mem == user["mem_fraction_static"]
    elif expect_floor:
        assert mem == 0.88
    else:
        assert mem == stock_mem


def test_moe_is_left_alone(install_only, tiny_checkpoint, gpu_memory):
    model = tiny_checkpoint("moe")
    stock = chunk_mem(model)[:2]
    install_only("dense_chunk_mem")
    assert chunk_mem(model)[:2] == stock


def test_tensor_parallel_is_supported(install_only, tiny_checkpoint, gpu_memory):
    install_only("dense_chunk_mem")
    chunk, mem, _ = chunk_mem(tiny_checkpoint("dense"), tp_size=2)
    assert chunk == 4096 and mem == 0.88


@pytest.mark.parametrize("parallel", [dict(pp_size=2), dict(tp_size=2, attn_dp_size=2)])
def test_steps_aside_loudly_outside_supported_parallelism(
    install_only, tiny_checkpoint, gpu_memory, parallel, gemma4_logs
):
    model = tiny_checkpoint("dense")
    stock = chunk_mem(model, **parallel)[:2]
    install_only("dense_chunk_mem")
    assert chunk_mem(model, **parallel)[:2] == stock
    row = {r["name"]: r for r in __import__("gemma4_kernels").status()}["dense_chunk_mem"]
    assert row["state"] == "applied"
    (reason,) = row["runtime_fallbacks"]
    assert ("pp_size=2" in reason) or ("attn_dp_size=2" in reason)
    warnings = [r for r in gemma4_logs.records if r.levelname == "WARNING"]
    assert any("dense_chunk_mem stepped aside" in r.getMessage() for r in warnings)

"""Regression tests for seed 002's "Patch E" property on SGLang 0.5.23's real classes:
while a FROZEN_KV_MTP draft reads the target's pool, its attention backend's SWA pool
and flags match that pool, and the SWA page table exists before CUDA-graph capture.

Real: SWAKVPool / MHATokenToKVPool (tiny, CPU), the backends' constructors and
``init_cuda_graph_state``, the frozen-KV views. Stubbed, because they need a GPU: the
FlashInfer wrapper classes (constructed, never run) and trtllm_mha's SM-count query.
The model runner is a namespace with the fields the constructors read.
"""

from __future__ import annotations

import types

import pytest
import torch

from gemma4_kernels.harness.tiny_configs import TEXT_ARCH

BACKENDS = ("trtllm_mha", "flashinfer", "triton")


class _Wrapper:  # stands in for FlashInfer's CUDA-only wrapper classes
    def __init__(self, *args, **kwargs):
        pass


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Target SWA pool, the draft's own dense pool, a published config context."""
    from sglang.srt import runtime_context
    from sglang.srt.configs.model_config import ModelConfig
    from sglang.srt.mem_cache.memory_pool import MHATokenToKVPool
    from sglang.srt.mem_cache.swa_memory_pool import SWAKVPool
    from sglang.srt.server_args import ServerArgs
    from sglang.srt.speculative.frozen_kv_mtp_info import FrozenKVMTPContext

    from gemma4_kernels.harness.tiny_configs import write_config

    model = write_config(tmp_path_factory.mktemp("mtp") / "dense", "dense", TEXT_ARCH)
    args = ServerArgs(model_path=str(model), device="cuda", attention_backend="triton")
    args.resolve_once()
    context = runtime_context.create_context(args, role="scheduler")
    pool = dict(page_size=1, dtype=torch.bfloat16, head_num=1, head_dim=8, device="cpu")
    target = SWAKVPool(
        size=16, size_swa=8, swa_attention_layer_ids=[0], full_attention_layer_ids=[1], **pool
    )
    target.register_mapping(torch.zeros(17, dtype=torch.int64))
    draft_own = MHATokenToKVPool(size=16, layer_num=2, enable_memory_saver=False, **pool)
    with runtime_context.use_context(context):
        model_config = ModelConfig.from_server_args(args)
    return types.SimpleNamespace(
        args=args,
        context=context,
        target=target,
        draft_own=draft_own,
        model_config=model_config,
        kv_context=FrozenKVMTPContext(target_token_to_kv_pool=target, physical_layer_ids={}),
    )


def runner(world, backend, *, draft=True, algorithm="FROZEN_KV_MTP"):
    from sglang.srt.speculative.spec_info import SpeculativeAlgorithm

    return types.SimpleNamespace(
        token_to_kv_pool=world.draft_own if draft else world.target,
        is_draft_worker=draft,
        spec_algorithm=getattr(SpeculativeAlgorithm, algorithm),
        # SGLang builds the allocator over the target's pool; the draft shares it
        token_to_kv_pool_allocator=types.SimpleNamespace(get_kvcache=lambda: world.target),
        device="cpu",
        gpu_id=0,
        model_config=world.model_config,
        page_size=1,
        sliding_window_size=8,
        req_to_token_pool=types.SimpleNamespace(
            size=4, req_to_token=torch.zeros(4, 32, dtype=torch.int32)
        ),
        kv_cache_dtype=torch.bfloat16,
        dtype=torch.bfloat16,
        server_args=world.args,
        kv_index_translator=types.SimpleNamespace(is_translating=False),
        prefill_attention_backend_str=backend,
        decode_attention_backend_str=backend,
        max_running_requests=4,
        model=torch.nn.Module(),
        decode_num_tokens_per_req=lambda: 1,
    )


@pytest.fixture
def build(world, monkeypatch):
    from sglang.srt import runtime_context
    from sglang.srt.layers.attention import flashinfer_backend, trtllm_mha_backend
    from sglang.srt.layers.attention.triton_backend import TritonAttnBackend

    for name in (
        "BatchPrefillWithRaggedKVCacheWrapper",
        "BatchPrefillWithPagedKVCacheWrapper",
        "BatchDecodeWithPagedKVCacheWrapper",
    ):
        monkeypatch.setattr(flashinfer_backend, name, _Wrapper, raising=False)
    monkeypatch.setattr(
        trtllm_mha_backend,
        "make_persistent_multi_ctas_kv_counter_buffer",
        lambda *a, **k: torch.zeros(8, dtype=torch.uint8),
    )
    classes = {
        "trtllm_mha": trtllm_mha_backend.TRTLLMHAAttnBackend,
        "flashinfer": flashinfer_backend.FlashInferAttnBackend,
        "triton": TritonAttnBackend,
    }

    def make(backend, **kw):
        with runtime_context.use_context(world.context):
            return classes[backend](runner(world, backend, **kw), skip_prefill=True)

    return make


@pytest.mark.parametrize("backend", ["trtllm_mha", "flashinfer"])
@pytest.mark.parametrize("view", ["frozen_kv_target_view", "target_kv_pool_view"])
def test_draft_backend_swa_state_matches_the_pool_it_reads(world, build, backend, view):
    from sglang.srt.mem_cache.swa_memory_pool import SWAKVPool
    from sglang.srt.speculative import frozen_kv_mtp_utils

    attn = build(backend)
    batch = types.SimpleNamespace(spec_info="spec")
    with getattr(frozen_kv_mtp_utils, view)(batch, world.kv_context, attn):
        live = attn.token_to_kv_pool
        assert live is world.target  # the draft reads the target's pool ...
        assert attn._swa_kv_pool is live  # ... and the backend's SWA pool is that pool
        assert attn.use_sliding_window_kv_pool is isinstance(live, SWAKVPool)
    assert attn.token_to_kv_pool is world.draft_own and batch.spec_info == "spec"


def test_trtllm_swa_page_tables_exist_before_capture(world, build):
    attn = build("trtllm_mha")
    from sglang.srt import runtime_context

    with runtime_context.use_context(world.context):
        attn.init_cuda_graph_state(2, 2)
    table = attn.decode_cuda_graph_metadata["swa_page_table"]
    assert table is not None and table.shape == attn.decode_cuda_graph_metadata["page_table"].shape
    assert attn.cuda_graph_swa_out_cache_loc is not None


@pytest.mark.parametrize("backend", ["trtllm_mha", "flashinfer"])
def test_only_frozen_drafts_take_the_targets_swa_pool(world, build, backend):
    assert build(backend, draft=False, algorithm="NONE")._swa_kv_pool is world.target
    # an EAGLE draft owns a separate KV pool: the target's SWA mapping must not be used
    assert build(backend, algorithm="EAGLE")._swa_kv_pool is None


def test_triton_flag_is_stale_but_gates_only_writes_the_frozen_draft_never_does(world, build):
    """Triton sizes its SWA *write* state from the draft's own dense pool, so the flag
    does not follow the swap; reads go through the live pool. The frozen draft writes no
    KV: ``bind_frozen_kv_context`` marks every assistant layer KV-shared."""
    from sglang.srt.models.gemma4_mtp import Gemma4AssistantForCausalLM
    from sglang.srt.speculative import frozen_kv_mtp_utils

    attn = build("triton")
    batch = types.SimpleNamespace(spec_info="spec")
    with frozen_kv_mtp_utils.frozen_kv_target_view(batch, world.kv_context, attn):
        assert attn.token_to_kv_pool is world.target
        assert attn.use_sliding_window_kv_pool is False  # stale: describes the draft's pool

    layer = types.SimpleNamespace(
        self_attn=types.SimpleNamespace(
            is_kv_shared_layer=False, attn=types.SimpleNamespace(layer_id=0)
        )
    )
    fake = types.SimpleNamespace(model=types.SimpleNamespace(layers=[layer, layer]))
    context = types.SimpleNamespace(get_physical_layer_id=lambda i: 10 + i)
    Gemma4AssistantForCausalLM.bind_frozen_kv_context(fake, context)
    assert layer.self_attn.is_kv_shared_layer is True


def test_status_reports_upstream(install_only):
    rows = install_only("frozen_kv_mtp_swa")
    assert rows["frozen_kv_mtp_swa"]["state"] == "upstream"

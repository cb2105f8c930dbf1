"""prefill_graph_gate against the real SGLang 0.5.23 argument resolution on CPU.

Stubs: SGLang's GPU-memory query and the platform query behind its default prefill
CUDA-graph backend (breakable on CUDA), because this machine has no GPU.
"""

from __future__ import annotations

import pytest

from gemma4_kernels.harness.tiny_configs import FAMILIES
from tests.helpers import resolve

pytestmark = pytest.mark.usefixtures("gpu_memory", "cuda_prefill_graph_default")


def prefill_backend(model_dir, **kwargs) -> str:
    _, view = resolve(model_dir, **kwargs)
    return view.cuda_graph_config.prefill.backend


@pytest.fixture
def llama_checkpoint(tmp_path):
    from transformers import LlamaConfig

    config = LlamaConfig(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    config.architectures = ["LlamaForCausalLM"]
    config.save_pretrained(tmp_path / "llama")
    return tmp_path / "llama"


@pytest.mark.parametrize("family", FAMILIES)
def test_gemma4_without_multimodal_captures_prefill_graph_in_stock(
    install_only, tiny_checkpoint, family, gemma4_logs
):
    """The fork's failure mode: multimodal off -> the breakable prefill graph is captured."""
    model = tiny_checkpoint(family)
    assert prefill_backend(model, enable_multimodal=False) == "breakable"  # stock 0.5.23

    assert install_only("prefill_graph_gate")["prefill_graph_gate"]["state"] == "applied"
    assert prefill_backend(model, enable_multimodal=False) == "disabled"
    assert any(
        "cuda_graph_config[prefill].backend breakable -> disabled" in r.getMessage()
        for r in gemma4_logs.records
    )


def test_opt_in_env_keeps_sglang_choice(install_only, tiny_checkpoint, monkeypatch):
    model = tiny_checkpoint("dense")
    install_only("prefill_graph_gate")
    monkeypatch.setenv("SGLANG_ENABLE_PIECEWISE_CUDA_GRAPH_FOR_MM", "1")
    assert prefill_backend(model, enable_multimodal=False) == "breakable"
    monkeypatch.setenv("SGLANG_ENABLE_PIECEWISE_CUDA_GRAPH_FOR_MM", "0")
    assert prefill_backend(model, enable_multimodal=False) == "disabled"


@pytest.mark.parametrize("backend", ["breakable", "full"])
def test_explicit_backend_flag_wins(install_only, tiny_checkpoint, backend):
    model = tiny_checkpoint("dense")
    install_only("prefill_graph_gate")
    got = prefill_backend(model, enable_multimodal=False, cuda_graph_backend_prefill=backend)
    assert got == backend


def test_other_models_are_untouched(install_only, llama_checkpoint):
    stock = prefill_backend(llama_checkpoint)
    assert stock == "breakable"
    install_only("prefill_graph_gate")
    assert prefill_backend(llama_checkpoint) == stock


def test_malformed_opt_in_value_is_a_clear_error(install_only, monkeypatch):
    monkeypatch.setenv("SGLANG_ENABLE_PIECEWISE_CUDA_GRAPH_FOR_MM", "maybe")
    with pytest.raises(ValueError, match="SGLANG_ENABLE_PIECEWISE_CUDA_GRAPH_FOR_MM='maybe'"):
        install_only("prefill_graph_gate")

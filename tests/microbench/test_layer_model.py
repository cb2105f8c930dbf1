"""The whole-decode-step launch and bytes model (CUDA path): configs as SGLang builds
them, patch entries, numbers checked against independent arithmetic, and the patched
layers' ops against what SGLang's real forward calls on CPU."""

from __future__ import annotations

import pytest

from microbench import layer_model as lm
from microbench import shapes

GEMMS = {"qkv_proj", "o_proj", "mlp_gate_up", "mlp_down", "lm_head"}


def test_expressions_are_arithmetic_over_named_values_only():
    names = {"T": 3, "H": 10, "A": 2, "full": True, "kv_shared": False}
    assert lm.evaluate("2*T*H*A + H*A", names) == 140
    assert lm.evaluate("min(T, 2) ** 2 - 1", names) == 3
    assert lm.evaluate("full and not kv_shared", names) is True
    with pytest.raises(ValueError, match="unknown name 'Q'"):
        lm.evaluate("Q + 1", names)
    for hostile in ("__import__('os').getpid()", "T.bit_length()", "[T][0]", "'a' * 3"):
        with pytest.raises(ValueError, match="unsupported expression"):
            lm.evaluate(hostile, names)


def test_layers_are_built_the_way_sglang_configures_them():
    """Layer types, head shapes and KV sharing, checked against the model facts in DESIGN.md
    and the seed (full layers: head_dim 512 and the global KV heads; E2B shares KV from
    layer 15 and doubles its MLP there)."""
    moe = lm.layers_of(lm.load("26B-A4B")["config"])
    assert [i for i, layer in enumerate(moe) if layer.full] == [5, 11, 17, 23, 29]
    assert {(layer.head_dim, layer.kv_heads) for layer in moe if layer.full} == {(512, 2)}
    assert {(layer.head_dim, layer.kv_heads) for layer in moe if not layer.full} == {(256, 8)}
    assert all(layer.k_eq_v == layer.full for layer in moe) and all(layer.moe for layer in moe)

    e2b = lm.layers_of(lm.load("E2B")["config"])
    assert len(e2b) == 35 and sum(layer.full for layer in e2b) == 7 and e2b[-1].full
    assert [layer.kv_shared for layer in e2b] == [False] * 15 + [True] * 20
    assert {layer.intermediate for layer in e2b[15:]} == {2 * e2b[0].intermediate}
    assert not any(layer.k_eq_v for layer in e2b) and all(layer.ple for layer in e2b)

    e4b = lm.layers_of(lm.load("E4B")["config"])
    assert [layer.kv_shared for layer in e4b].index(True) == 42 - 18


@pytest.mark.parametrize("model", sorted(lm.DATA_FILES))
def test_data_configs_agree_with_the_bench_shapes(model):
    config, shape = lm.load(model)["config"], shapes.MODELS[model]
    assert config["hidden_size"] == shape.hidden
    assert config["num_hidden_layers"] == shape.layers
    assert (config.get("num_experts") or 0, config.get("top_k_experts") or 0) == (
        shape.experts,
        shape.top_k,
    )
    assert (config.get("hidden_size_per_layer_input") or 0) == shape.ple_dim
    assert (config.get("num_kv_shared_layers") or 0) == shape.kv_shared_layers
    assert lm.load(model)["config_sources"], "every config names its sources"


def _weights(step_t1: lm.Step, step_t2: lm.Step, ids: set[str]) -> int:
    """Weight bytes of the GEMMs: they move W + c*T, so W = 2*b(T=1) - b(T=2)."""
    b1 = sum(k.bytes for k in step_t1.launches if k.id in ids)
    b2 = sum(k.bytes for k in step_t2.launches if k.id in ids)
    return 2 * b1 - b2


def test_31b_gemm_bytes_are_the_models_weights():
    """Independent count: per layer q/k/v/o and a 3-matrix MLP; tied LM head; bf16."""
    h, inter, vocab = 5376, 21504, 262144
    sliding = (32 * 256 + 2 * 16 * 256) * h + 32 * 256 * h
    full = (32 * 512 + 2 * 4 * 512) * h + 32 * 512 * h  # stock loads V = K again
    params = 50 * sliding + 10 * full + 60 * 3 * h * inter + vocab * h
    stock = [lm.decode_step("31B", t, context=16, patched=False) for t in (1, 2)]
    assert _weights(*stock, GEMMS) == 2 * params


def test_k_eq_v_skip_v_saves_the_duplicated_v_weights():
    """README arithmetic: 31B 10 x 4 x 512 x 5376 x 2 B; 26B-A4B 5 x 2 x 512 x 2816 x 2 B."""
    for model, saved in (("31B", 10 * 4 * 512 * 5376 * 2), ("26B-A4B", 5 * 2 * 512 * 2816 * 2)):
        others = [p["patch"] for p in lm.load(model)["patches"] if p["patch"] != "k_eq_v_skip_v"]
        every = others + ["k_eq_v_skip_v"]
        deltas = [
            lm.decode_step(model, t, 64, patches=every).total_bytes
            - lm.decode_step(model, t, 64, patches=others).total_bytes
            for t in (1, 2)
        ]
        assert 2 * deltas[0] - deltas[1] == -saved, model
        full_layers = 10 if model == "31B" else 5
        extra = lm.decode_step(model, 1, 64, patches=every).launch_count
        assert extra - lm.decode_step(model, 1, 64, patches=others).launch_count == full_layers


def test_fusion_patches_remove_the_launches_the_readme_claims():
    """Per layer: triple norm 4 -> 1 (MoE), PLE tail 7 -> 3, layer boundary 2 -> 1 with the
    last layer's tail taking the final norm."""

    def launches(model, patches=None, patched=True):
        return lm.decode_step(model, 1, 64, patched=patched, patches=patches).launch_count

    assert launches("26B-A4B", patched=False) - launches("26B-A4B", ["post_attn_triple_norm"]) == (
        3 * 30
    )
    assert launches("E2B", patched=False) - launches("E2B", ["ple_tail"]) == 4 * 35
    assert launches("E2B", ["ple_tail"]) - launches(
        "E2B", ["ple_tail", "layer_boundary_fusion"]
    ) == (35)
    fused = lm.decode_step("31B", 1, 64, patches=["layer_boundary_fusion"])
    assert [k.id for k in fused.where("exit")] == ["lm_head", "softcap"]  # final norm fused
    assert [k.id for k in fused.where("layer 0")][0] == "input_layernorm"
    assert all("input_layernorm" not in [k.id for k in fused.where(f"layer {i}")] for i in (1, 59))
    # Without ple_tail there is no rmsnorm_residual_scalar to fuse: nothing changes.
    assert launches("E4B", ["layer_boundary_fusion"]) == launches("E4B", patched=False)


def test_router_fp32_runs_the_router_eagerly_in_fp32():
    """Its forward (sglang_patches/router_fp32.py) issues 12 CUDA ops where SGLang's
    router GEMM was one (its norm output, still written by triple_rmsnorm, goes unread)."""
    names = [p["patch"] for p in lm.load("26B-A4B")["patches"]]
    without = [n for n in names if n != "router_fp32"]
    delta = (
        lm.decode_step("26B-A4B", 1, 64).launch_count
        - lm.decode_step("26B-A4B", 1, 64, patches=without).launch_count
    )
    assert delta == 11 * 30


def test_kv_shared_layers_read_the_window_and_write_no_kv():
    step = lm.decode_step("E2B", 1, context=4096, patched=False)
    shared_sliding = {k.id: k for k in step.where("layer 15")}
    assert "kv_cache_write" not in shared_sliding and "dummy_k" in shared_sliding
    # Sliding span capped at the 512-token window; kv = 1 head x 256; q = 8 x 256; bf16.
    assert shared_sliding["attention"].bytes == 512 * 2 * 256 * 2 + 2 * 8 * 256 * 2
    full = {k.id: k for k in step.where("layer 19")}
    assert full["attention"].bytes == 4096 * 2 * 512 * 2 + 2 * 8 * 512 * 2


def test_expected_experts_under_uniform_routing():
    assert lm.expected_experts(128, 8, 1) == pytest.approx(8)
    assert lm.expected_experts(128, 8, 1000) == pytest.approx(128, rel=1e-6)
    assert 8 < lm.expected_experts(128, 8, 4) < 32


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="unknown model"):
        lm.decode_step("70B", 1)
    with pytest.raises(ValueError, match="tokens and context"):
        lm.decode_step("31B", 0)
    with pytest.raises(ValueError, match="unknown patch"):
        lm.decode_step("31B", 1, patches=["ple_tail"])


@pytest.mark.parametrize("family, model", [("moe", "26B-A4B"), ("dense", "31B"), ("e2b", "E2B")])
def test_patched_layers_call_the_ops_sglangs_real_forward_calls(tiny_families, family, model):
    """The model's data, built at the tiny family's config, predicts per layer exactly the
    gemma4:: ops the CPU harness counts in SGLang's real patched forward."""
    from gemma4_kernels.harness.tiny_configs import text_config_kwargs

    data = {**lm.load(model), "config": text_config_kwargs(family)}
    step = lm.decode_step(model, 1, 16, data=data)
    run = tiny_families.run(family, "all")
    layers = len(run.model.decoder_layers())
    assert layers == len(data["config"]["layer_types"])
    for index in range(layers):
        counted = dict(run.op_counts.layers[index].ours)
        assert counted == dict(step.our_ops(f"layer {index}")), index

"""allreduce_rmsnorm against the real SGLang 0.5.23 on CPU.

* Server arguments: SGLang's real resolution, with only the platform facts overridden
  (``override_platform``, SGLang's own test hook): this machine is neither SM90 nor SM100.
* The fused step: SGLang's real FFN-entry function, boundary read and norm modules. The
  all-reduce and the FlashInfer kernel are the mocks (no second rank, no GPU), as in the
  seed's tests; ``_on_cuda`` is forced for the success path only.
* Registration and binding: the tiny dense/MoE/E2B models built by SGLang itself.
"""

from __future__ import annotations

import types

import msgspec
import pytest
import torch

from gemma4_kernels.harness.tiny_configs import MM_ARCH
from sglang_patches import allreduce_rmsnorm
from sglang_patches.allreduce_rmsnorm import PATCH, gemma4_allreduce_rmsnorm_auto_enable
from tests.helpers import resolve

H, EPS = 64, 1e-6
RANKS = 2  # the mocked all-reduce sums two ranks holding the same partial


# --------------------------------------------------------------------------------------
# server arguments
# --------------------------------------------------------------------------------------
def fusion_backend(model, platform, **server_args):
    from sglang.srt.runtime_context import override_platform

    with override_platform(**platform):
        _, view = resolve(model, **server_args)
    return view.flashinfer_allreduce_fusion_backend


PLATFORMS = {
    "sm90": dict(is_sm90=True, is_sm100=False),
    "sm100": dict(is_sm90=False, is_sm100=True),
    "other": dict(is_sm90=False, is_sm100=False),
}


@pytest.mark.parametrize("platform", sorted(PLATFORMS))
@pytest.mark.parametrize("tp", [1, 2])
def test_dense_gets_sglangs_own_decision_for_an_allowed_architecture(
    install_only, tiny_checkpoint, gpu_memory, monkeypatch, platform, tp
):
    from sglang.srt.arg_groups import overrides

    model = tiny_checkpoint("dense")
    stock = fusion_backend(model, PLATFORMS[platform], tp_size=tp)
    # The oracle: stock SGLang with Gemma 4 in its allow-list decides for itself.
    with monkeypatch.context() as m:
        m.setattr(
            overrides,
            "_FLASHINFER_ALLREDUCE_FUSION_ARCHS",
            overrides._FLASHINFER_ALLREDUCE_FUSION_ARCHS | {MM_ARCH},
        )
        allowed = fusion_backend(model, PLATFORMS[platform], tp_size=tp)
    install_only("allreduce_rmsnorm")
    patched = fusion_backend(model, PLATFORMS[platform], tp_size=tp)
    assert stock is None
    assert patched == allowed
    assert (patched == "auto") == (tp == 2 and platform != "other")


@pytest.mark.parametrize("family", ["moe", "e2b"])
def test_moe_and_ple_models_are_left_alone(install_only, tiny_checkpoint, gpu_memory, family):
    install_only("allreduce_rmsnorm")
    assert fusion_backend(tiny_checkpoint(family), PLATFORMS["sm90"], tp_size=2) is None


def test_user_choices_win(install_only, tiny_checkpoint, gpu_memory):
    model = tiny_checkpoint("dense")
    install_only("allreduce_rmsnorm")
    sm90 = PLATFORMS["sm90"]
    disabled = fusion_backend(
        model, sm90, tp_size=2, enforce_disable_flashinfer_allreduce_fusion=True
    )
    assert disabled is None
    assert fusion_backend(model, sm90, tp_size=2, flashinfer_allreduce_fusion_backend="trtllm") == (
        "trtllm"
    )


def test_pass_preconditions_on_views(monkeypatch):
    """The multi-node and MoE all-to-all preconditions, which resolution on one CPU
    cannot reach, on hand-made views (same predicate, different inputs)."""
    from sglang.srt.runtime_context import override_platform

    config = types.SimpleNamespace(architectures=[MM_ARCH], text_config=None)

    def view(**kw):
        base = dict(
            flashinfer_allreduce_fusion_backend=None,
            enforce_disable_flashinfer_allreduce_fusion=False,
            tp_size=2,
            nnodes=1,
            moe_a2a_backend="none",
            enable_dp_attention=False,
        )
        base.update(kw)
        return types.SimpleNamespace(**base)

    def decide(v, **platform):
        with override_platform(**platform):
            return gemma4_allreduce_rmsnorm_auto_enable(v)

    import sglang.srt.arg_groups.overrides as overrides

    monkeypatch.setattr(
        overrides, "model_config_of", lambda v: types.SimpleNamespace(hf_config=config)
    )
    monkeypatch.setattr(overrides, "attn_dp_enabled_of", lambda v: v.enable_dp_attention)
    sm90, sm100 = PLATFORMS["sm90"], PLATFORMS["sm100"]
    assert decide(view(), **sm90) == {"flashinfer_allreduce_fusion_backend": "auto"}
    assert decide(view(nnodes=2), **sm90) == {}
    assert decide(view(nnodes=2), **sm100) == {"flashinfer_allreduce_fusion_backend": "auto"}
    assert decide(view(moe_a2a_backend="deepep"), **sm90) == {}
    assert decide(view(enable_dp_attention=True), **sm90) == {}
    assert decide(view(tp_size=1), **sm90) == {}


# --------------------------------------------------------------------------------------
# the fused step
# --------------------------------------------------------------------------------------
def rmsnorm_ref(x, w, eps=EPS):
    x = x.float()
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w.float()


class FakeFlashInfer:
    """``flashinfer_allreduce_residual_rmsnorm`` over RANKS equal partials, in fp32."""

    def __init__(self, decline=False):
        self.calls, self.decline = [], decline

    def __call__(self, *, input_tensor, residual, weight, eps, max_token_num, use_attn_tp_group):
        self.calls.append(dict(residual=residual.clone(), weight=weight, eps=eps))
        if self.decline:
            return None, None
        total = input_tensor.float() * RANKS + residual.float()
        return rmsnorm_ref(total, weight, eps).to(input_tensor.dtype), total.to(residual.dtype)


@pytest.fixture
def site(monkeypatch):
    """Real post-attention / pre-FFN RMSNorms and SGLang's transformed boundary read,
    with the patch installed and the post-attention norm registered as a dense site."""
    from sglang.srt.layers.layer_boundary import prepare
    from sglang.srt.layers.layer_boundary.boundary import _TransformedRead
    from sglang.srt.layers.layer_boundary.output import OutputTransform
    from sglang.srt.layers.layer_boundary.residual.add_norm import NORM_READOUT
    from sglang.srt.layers.layernorm import RMSNorm

    import gemma4_kernels

    monkeypatch.setenv("GEMMA4_KERNELS_PATCHES", "allreduce_rmsnorm")
    gemma4_kernels.install()
    torch.manual_seed(0)
    post, pre_ff = RMSNorm(H, eps=EPS), RMSNorm(H, eps=EPS)
    with torch.no_grad():
        post.weight.uniform_(0.5, 1.5)
        pre_ff.weight.uniform_(0.5, 1.5)
    PATCH._sites.add(post)
    monkeypatch.setattr(prepare, "attn_tp_all_reduce", lambda h, fb, may_quantize=False: h * RANKS)
    monkeypatch.setattr(allreduce_rmsnorm, "_attn_tp_size", lambda: RANKS)
    monkeypatch.setattr(allreduce_rmsnorm, "_fusion_backend", lambda: "auto")
    fake = FakeFlashInfer()
    from sglang.srt.layers import flashinfer_comm_fusion
    from sglang.srt.layers.layer_boundary.residual import add_norm

    monkeypatch.setattr(flashinfer_comm_fusion, "flashinfer_allreduce_residual_rmsnorm", fake)
    monkeypatch.setattr(add_norm, "flashinfer_ar_fusion_applies", lambda n: 0 < n <= 2048)
    read = _TransformedRead(NORM_READOUT, OutputTransform(post))
    return types.SimpleNamespace(
        post=post, pre_ff=pre_ff, read=read, fake=fake, stock=prepare._reduce_update_read
    )


def entry(step, site, x, residual, read=None):
    """Call an FFN entry step the way SGLang binds it at TP > 1 (boundary.py)."""
    from sglang.srt.layers.layer_boundary.layout import SumGroup

    return step(
        x.clone(),
        residual.clone(),
        types.SimpleNamespace(),
        site.pre_ff,
        gathers_residual=False,
        fusions=(),
        read_fusions=(),
        group=SumGroup.ATTN_TP,
        read=read or site.read,
    )


def inputs(rows, dtype=torch.float32):
    torch.manual_seed(rows)
    return torch.randn(rows, H).to(dtype), torch.randn(rows, H).to(dtype)


@pytest.mark.parametrize("rows", [1, 7, 64])
def test_success_path_fuses_and_matches_stock(site, monkeypatch, rows):
    from sglang.srt.layers.layer_boundary import boundary

    monkeypatch.setattr(allreduce_rmsnorm, "_on_cuda", lambda x: True)
    x, residual = inputs(rows)
    fused_in, fused_res = entry(boundary._reduce_update_read, site, x, residual)
    stock_in, stock_res = entry(site.stock, site, x, residual)
    assert len(site.fake.calls) == 1
    call = site.fake.calls[0]
    assert torch.count_nonzero(call["residual"]) == 0  # the zero residual
    assert call["weight"] is site.post.weight and call["eps"] == EPS
    torch.testing.assert_close(fused_res, stock_res, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(fused_in, stock_in, rtol=1e-5, atol=1e-5)
    # and against an independent reference of the whole step
    h = rmsnorm_ref(x * RANKS, site.post.weight) + residual
    torch.testing.assert_close(fused_res, h, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(fused_in, rmsnorm_ref(h, site.pre_ff.weight), rtol=1e-5, atol=1e-5)


class UnhashableScale:
    __hash__ = None

    def __eq__(self, other):
        return self is other

    def __call__(self, x):
        return x * 0.5


@pytest.mark.parametrize(
    "case",
    [
        "declined",
        "predicate_off",
        "not_cuda",
        "non_contiguous",
        "not_a_dense_site",
        "other_models_transform",
        "tp1",
        "fusion_off",
    ],
)
def test_every_fallback_is_bit_identical_to_stock(site, monkeypatch, case):
    from sglang.srt.layers.layer_boundary import boundary
    from sglang.srt.layers.layer_boundary.boundary import _TransformedRead
    from sglang.srt.layers.layer_boundary.output import OutputTransform
    from sglang.srt.layers.layer_boundary.residual import add_norm
    from sglang.srt.layers.layernorm import RMSNorm

    read = None
    if case != "not_cuda":
        monkeypatch.setattr(allreduce_rmsnorm, "_on_cuda", lambda x: True)
    if case == "declined":
        site.fake.decline = True
    elif case == "predicate_off":
        monkeypatch.setattr(add_norm, "flashinfer_ar_fusion_applies", lambda n: False)
    elif case == "not_a_dense_site":  # e.g. a MoE layer's post-attention norm
        read = _TransformedRead(site.read.inner, OutputTransform(RMSNorm(H, eps=EPS)))
    elif case == "other_models_transform":  # any callable, even an unhashable one
        read = _TransformedRead(site.read.inner, OutputTransform(UnhashableScale()))
    elif case == "tp1":
        monkeypatch.setattr(allreduce_rmsnorm, "_attn_tp_size", lambda: 1)
    elif case == "fusion_off":
        monkeypatch.setattr(allreduce_rmsnorm, "_fusion_backend", lambda: None)
    x, residual = inputs(5, torch.bfloat16)
    if case == "non_contiguous":
        x = x.t().contiguous().t()  # same values, column-major
        assert not x.is_contiguous()
    ours = entry(boundary._reduce_update_read, site, x, residual, read)
    stock = entry(site.stock, site, x, residual, read)
    for a, b in zip(ours, stock, strict=True):
        assert torch.equal(a, b)
    assert len(site.fake.calls) == (1 if case == "declined" else 0)
    counted = sum(PATCH.runtime.counts.values())
    counted_cases = ("declined", "predicate_off", "not_cuda", "non_contiguous")
    assert counted == (1 if case in counted_cases else 0)


def test_zero_residual_is_reused_and_grows():
    x = torch.ones(3, H, dtype=torch.bfloat16)
    a = PATCH.zero_residual(x)
    b = PATCH.zero_residual(torch.ones(5, H, dtype=torch.bfloat16))
    assert a.shape == (3, H) and b.shape == (5, H) and a.dtype == torch.bfloat16
    assert a.data_ptr() == b.data_ptr() and torch.count_nonzero(b) == 0
    big = PATCH.zero_residual(torch.ones(3000, H, dtype=torch.bfloat16))
    assert big.shape == (3000, H) and torch.count_nonzero(big) == 0
    PATCH._forget()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_zero_residual_identity_and_why_the_post_ffn_site_is_not_fused(dtype):
    """FlashInfer's kARResidualRMSNorm is rmsnorm(sum + residual)·w. With a zero
    residual it is SGLang's RMSNorm of the sum (the post-attention site); at the
    post-FFN site Gemma computes rmsnorm(x)·w + residual instead, which differs."""
    from sglang.srt.layers.layernorm import RMSNorm

    torch.manual_seed(1)
    partials = [torch.randn(16, H).to(dtype) for _ in range(RANKS)]
    norm = RMSNorm(H, eps=EPS).to(dtype)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    total = sum(p.float() for p in partials)
    fused_kernel = rmsnorm_ref(total + 0.0, norm.weight).to(dtype)
    sglang = norm.forward_native(total.to(dtype))
    tol = dict(rtol=1e-6, atol=1e-6) if dtype == torch.float32 else dict(rtol=8e-3, atol=8e-3)
    torch.testing.assert_close(fused_kernel, sglang, **tol)
    residual = torch.randn(16, H)
    post_ffn = rmsnorm_ref(total, norm.weight) + residual
    kernel_pattern = rmsnorm_ref(total + residual, norm.weight)
    assert (post_ffn - kernel_pattern).abs().max() > 1.0


# --------------------------------------------------------------------------------------
# registration on SGLang's own layers, and SGLang's binding at TP > 1
# --------------------------------------------------------------------------------------
def build(tiny_families, family):
    """``family`` built by SGLang with the patch installed; each FFN entry SGLang binds
    for a transformed read is re-bound as at TP > 1 (the attention owes its sum)."""
    from sglang.srt.layers.layer_boundary import boundary
    from sglang.srt.layers.layer_boundary.boundary import _TransformedRead
    from sglang.srt.layers.layer_boundary.layout import SumGroup

    from gemma4_kernels.harness.runtime import SGLangCpuRuntime
    from gemma4_kernels.harness.session import patches_installed

    path, _, weights = tiny_families.get(family)
    captured = []
    original = boundary._select_entry_step

    def capture(produced, **kw):
        if type(kw["need"].read) is _TransformedRead:
            captured.append((produced, kw))
        return original(produced, **kw)

    with patches_installed(["allreduce_rmsnorm"]) as states:
        boundary._select_entry_step = capture
        try:
            model = SGLangCpuRuntime.get().load(path, weights)
        finally:
            boundary._select_entry_step = original
        registered = [
            layer.post_attention_layernorm in PATCH._sites for layer in model.decoder_layers()
        ]
        rebound = [
            original(
                msgspec.structs.replace(produced, always_partial=True, group=SumGroup.ATTN_TP),
                **kw,
            ).step
            for produced, kw in captured
        ]
        wrapper = boundary._reduce_update_read
    return types.SimpleNamespace(
        states=states, registered=registered, rebound=rebound, wrapper=wrapper
    )


@pytest.fixture(scope="module")
def built(tiny_families):
    return {family: build(tiny_families, family) for family in ("dense", "moe", "e2b")}


def test_only_dense_layers_register_their_post_attention_norm(built):
    assert built["dense"].states["allreduce_rmsnorm"] == "applied"
    assert built["dense"].registered and all(built["dense"].registered)
    assert not any(built["moe"].registered)
    assert not any(built["e2b"].registered)


def test_sglang_binds_the_tp_ffn_entry_of_every_dense_layer_to_the_wrapper(built):
    from sglang.srt.layers.layer_boundary.layout import SumGroup

    dense = built["dense"]
    assert len(dense.rebound) == len(dense.registered)  # one transformed read per layer
    for step in dense.rebound:
        assert step.func is dense.wrapper
        assert step.keywords["group"] is SumGroup.ATTN_TP
        assert step.keywords["gathers_residual"] is False

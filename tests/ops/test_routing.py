"""gemma4::moe_routing: kernel vs reference vs HF vs SGLang's upstream kernel; policy; errors."""

from __future__ import annotations

import pytest
import torch

from gemma4_kernels.ops.routing import MAX_EXPERTS, moe_routing, moe_routing_ref
from tests.helpers import assert_close

NAN, INF = float("nan"), float("inf")
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def logits_for(tokens: int, experts: int, dtype=torch.float32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(tokens, experts, generator=g) * 3).to(dtype)


def scale_for(experts: int, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return (torch.rand(experts, generator=g) + 0.5).to(dtype)


def check_against_ref(logits, scale, top_k):
    weights, ids = moe_routing(logits, scale, top_k)
    ref_weights, ref_ids = moe_routing_ref(logits, scale, top_k)
    assert ids.dtype == torch.int32 and weights.dtype == torch.float32
    assert weights.shape == ids.shape == (logits.shape[0], top_k)
    torch.testing.assert_close(ids, ref_ids, rtol=0, atol=0)
    # fp32 on both sides; exp differs between numpy/CUDA and torch by an ulp or two.
    assert_close("weights", weights, ref_weights, rtol=2e-6, atol=1e-7)
    return weights, ids


@pytest.mark.parametrize(
    "experts, top_k",
    [(1, 1), (6, 1), (6, 6), (8, 2), (128, 1), (128, 8), (128, 128), (256, 8), (1024, 8)],
)
@pytest.mark.parametrize("tokens", [1, 5])
def test_kernel_matches_reference(experts, top_k, tokens):
    check_against_ref(logits_for(tokens, experts), scale_for(experts), top_k)


@pytest.mark.parametrize("experts, top_k", [(4096, 8), (4096, 1)])
def test_more_experts_than_upstream_allows(experts, top_k):
    check_against_ref(logits_for(2, experts), scale_for(experts), top_k)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale_dtype", DTYPES)
def test_dtypes(dtype, scale_dtype):
    check_against_ref(logits_for(3, 128, dtype), scale_for(128, scale_dtype), 8)


def test_empty_batch():
    weights, ids = moe_routing(torch.empty(0, 128), scale_for(128), 8)
    assert weights.shape == ids.shape == (0, 8)


def test_no_scale_means_plain_renormalised_softmax():
    logits = logits_for(4, 16)
    weights, _ = moe_routing(logits, None, 4)
    torch.testing.assert_close(weights.sum(-1), torch.ones(4))


@pytest.mark.parametrize("layout", ["transposed", "row_slice", "column_slice"])
def test_any_strides(layout):
    base = logits_for(8, 256)
    if layout == "transposed":
        logits = base.t().contiguous().t()  # column-major [T, E]
    elif layout == "row_slice":
        logits = base[::2]  # stride(0) = 2 * E
    else:
        logits = base[:, ::2]  # stride(1) = 2
    assert not logits.is_contiguous()
    weights, ids = check_against_ref(logits, scale_for(logits.shape[1]), 8)
    w2, i2 = moe_routing(logits.contiguous(), scale_for(logits.shape[1]), 8)
    assert torch.equal(ids, i2) and torch.equal(weights, w2)


def test_ties_go_to_the_lower_expert_id():
    logits = torch.tensor([[1.0, 2.0, 2.0, 1.0, 2.0, 0.5], [0.0] * 6])
    weights, ids = check_against_ref(logits, None, 4)
    assert ids.tolist() == [[1, 2, 4, 0], [0, 1, 2, 3]]
    torch.testing.assert_close(weights[1], torch.full((4,), 0.25))


def test_signed_zeros_rank_equal():
    logits = torch.tensor([[-0.0, 0.0, -0.0, 0.0, -1.0]])
    _, ids = check_against_ref(logits, None, 4)
    assert ids.tolist() == [[0, 1, 2, 3]]


def test_minus_inf_is_never_chosen_over_a_finite_logit():
    logits = torch.tensor([[-INF, -5.0, -INF, -INF, -7.0, -INF]])
    weights, ids = check_against_ref(logits, None, 4)
    assert ids[0, :2].tolist() == [1, 4]
    assert ids[0, 2:].tolist() == [0, 2]  # then the -inf ones, lower id first
    assert weights[0, 2:].tolist() == [0.0, 0.0]
    torch.testing.assert_close(weights[0, :2].sum(), torch.tensor(1.0))


def test_nan_policy_ids_valid_weights_nan_rows_isolated():
    logits = logits_for(4, 16)
    clean = moe_routing(logits, scale_for(16), 4)
    poisoned = logits.clone()
    poisoned[1, 3] = NAN
    poisoned[2] = NAN
    weights, ids = check_against_ref(poisoned, scale_for(16), 4)
    # Rows 0 and 3 are untouched by their neighbours.
    for row in (0, 3):
        assert torch.equal(weights[row], clean[0][row]) and torch.equal(ids[row], clean[1][row])
    # Row 1: NaN ranks last, so the ids are the top-4 of the numbers; weights NaN (as HF).
    expected = torch.topk(torch.nan_to_num(poisoned[1], nan=-INF), 4).indices
    assert ids[1].tolist() == expected.tolist()
    assert torch.isnan(weights[1]).all()
    # Row 2 (all NaN): still valid ids, lowest first.
    assert ids[2].tolist() == [0, 1, 2, 3] and torch.isnan(weights[2]).all()


def test_undefined_softmax_gives_nan_weights_like_hf():
    rows = torch.tensor([[INF, 1.0, 0.0, -1.0], [-INF, -INF, -INF, -INF]])
    weights, ids = check_against_ref(rows, None, 2)
    assert ids.tolist() == [[0, 1], [0, 1]]
    assert torch.isnan(weights).all()
    hf = torch.softmax(rows, dim=-1)
    assert torch.isnan(hf).all()


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(top_k=0), ValueError, "top_k must be in 1..8"),
        (dict(top_k=9), ValueError, "top_k must be in 1..8"),
        (dict(top_k=2.0), TypeError, "top_k must be an int"),
        (dict(top_k=True), TypeError, "top_k must be an int"),
        (dict(router_logits=torch.zeros(8)), ValueError, "router_logits must be 2-D"),
        (dict(router_logits=torch.zeros(2, 2, 8)), ValueError, "router_logits must be 2-D"),
        (dict(router_logits=torch.zeros(2, 8, dtype=torch.int32)), TypeError, "router_logits"),
        (dict(router_logits=[[0.0] * 8]), TypeError, "router_logits must be a torch.Tensor"),
        (
            dict(per_expert_scale=torch.ones(7)),
            ValueError,
            r"per_expert_scale must have shape \(8,\)",
        ),
        (dict(per_expert_scale=torch.ones(8, dtype=torch.int64)), TypeError, "per_expert_scale"),
        (
            dict(per_expert_scale=torch.ones(8, device="meta")),
            ValueError,
            "per_expert_scale is on meta",
        ),
    ],
)
def test_bad_input_is_rejected_before_launch(kwargs, error, match):
    args = dict(router_logits=torch.zeros(2, 8), per_expert_scale=torch.ones(8), top_k=2)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        moe_routing(**args)
    if type(args["top_k"]) is int and isinstance(args["router_logits"], torch.Tensor):
        # The registered op validates too (its schema already rejects non-int/non-tensor).
        with pytest.raises(error, match=match):
            torch.ops.gemma4.moe_routing(
                args["router_logits"], args["per_expert_scale"], args["top_k"]
            )


def test_too_many_experts():
    with pytest.raises(ValueError, match=f"at most {MAX_EXPERTS}"):
        moe_routing(torch.zeros(1, MAX_EXPERTS + 1), None, 1)


def test_opcheck():
    logits = logits_for(3, 32)
    torch.library.opcheck(torch.ops.gemma4.moe_routing.default, (logits, scale_for(32), 4))
    torch.library.opcheck(torch.ops.gemma4.moe_routing.default, (logits, None, 4))


def test_torch_compile_fullgraph():
    def route(logits, scale):
        weights, ids = moe_routing(logits, scale, 4)
        return weights * 2, ids

    logits, scale = logits_for(3, 32), scale_for(32)
    compiled = torch.compile(route, fullgraph=True, backend="eager")
    weights, ids = compiled(logits, scale)
    ref_weights, ref_ids = route(logits, scale)
    assert torch.equal(ids, ref_ids) and torch.equal(weights, ref_weights)


# ----------------------------------------------------------------------------------
# Reference vs the external oracle: HF transformers' Gemma4TextRouter
# ----------------------------------------------------------------------------------


def hf_router(hidden: int, experts: int, top_k: int, seed: int = 0):
    from transformers import Gemma4TextConfig
    from transformers.models.gemma4.modeling_gemma4 import Gemma4TextRouter

    config = Gemma4TextConfig(
        hidden_size=hidden, num_experts=experts, top_k_experts=top_k, enable_moe_block=True
    )
    torch.manual_seed(seed)
    router = Gemma4TextRouter(config).eval()
    with torch.no_grad():
        router.proj.weight.normal_(0, 0.2)
        router.scale.uniform_(0.5, 1.5)
        router.per_expert_scale.uniform_(0.5, 1.5)
    return router


@pytest.mark.parametrize("hidden, experts, top_k", [(64, 8, 2), (2816, 128, 8)])
def test_reference_matches_hf_router(hidden, experts, top_k):
    router = hf_router(hidden, experts, top_k)
    h = torch.randn(16, hidden, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        _, hf_weights, hf_ids = router(h)
        logits = router.proj(router.norm(h) * router.scale * router.scalar_root_size)
    weights, ids = moe_routing_ref(logits, router.per_expert_scale.detach(), top_k)
    assert torch.equal(ids, hf_ids.to(torch.int32))
    assert_close("weights vs HF", weights, hf_weights, rtol=1e-5, atol=1e-6)
    kernel_weights, kernel_ids = moe_routing(logits, router.per_expert_scale.detach(), top_k)
    assert torch.equal(kernel_ids, hf_ids.to(torch.int32))
    assert_close("kernel weights vs HF", kernel_weights, hf_weights, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------
# Ours vs SGLang 0.5.23's gemma4_fused_routing (run in the interpreter)
# ----------------------------------------------------------------------------------


@pytest.fixture
def upstream():
    from gemma4_kernels.ops._common import interpreter_active

    if not interpreter_active() and not torch.cuda.is_available():
        pytest.skip("upstream's kernel is Triton-only: needs a GPU or TRITON_INTERPRET=1")
    from sglang.kernels.ops.moe.gemma4_routing import gemma4_fused_routing

    return gemma4_fused_routing


@pytest.mark.parametrize("experts, top_k", [(8, 2), (128, 8), (1024, 8)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_equal_to_upstream_where_upstream_is_defined(upstream, experts, top_k, dtype):
    logits, scale = logits_for(4, experts, dtype), scale_for(experts)
    ours = moe_routing(logits, scale, top_k)
    theirs = upstream(logits, scale, top_k)
    torch.testing.assert_close(ours[1], theirs[1], rtol=0, atol=0)
    assert_close("weights vs upstream", ours[0], theirs[0], rtol=2e-6, atol=1e-7)


def test_equal_to_upstream_on_ties_and_minus_inf(upstream):
    logits = torch.tensor([[1.0, 2.0, 2.0, 1.0, 2.0, -INF, 0.5, 2.0], [-INF] * 7 + [0.0]])
    ours, theirs = moe_routing(logits, None, 4), upstream(logits, torch.ones(8), 4)
    assert torch.equal(ours[1][0], theirs[1][0])
    assert torch.equal(ours[0][0], theirs[0][0])
    assert ours[1][1, 0] == theirs[1][1, 0] == 7


def test_where_upstream_differs(upstream):
    """Documented differences: upstream ranks +0.0 above -0.0 and NaN above everything."""
    zeros = torch.tensor([[-0.0, 0.0, -1.0, -2.0]])
    assert upstream(zeros, torch.ones(4), 1)[1].item() == 1
    assert moe_routing(zeros, None, 1)[1].item() == 0
    nan_row = torch.tensor([[0.0, NAN, 1.0, 2.0]])
    assert upstream(nan_row, torch.ones(4), 1)[1].item() == 1
    assert moe_routing(nan_row, None, 1)[1].item() == 3
    with pytest.raises(AssertionError):
        upstream(logits_for(1, 2048), torch.ones(2048), 8)

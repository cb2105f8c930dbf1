"""yoco_fast_prefill on SGLang 0.5.23's real Gemma 4 forward (tiny E2B-like model, CPU).

The tiny E2B has 6 layers, the last 2 KV-shared (one sliding, one full), window 8.
Patched vs stock on the same model object: same last-token logits for mixed lengths,
cached prefixes, chunked prefill and long + one-token extends, same decode after a YOCO
prefill; the shared layers see one row per request; the ForwardBatch and the attention
metadata are restored exactly; every guard takes the full path.

Tolerance 2e-5 (fp32): the shared layers compute the same rows from the same KV; only
the attention reduction over a differently tiled query block changes fp32 rounding
(measured ≤ 4.5e-6).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses

import pytest
import torch

from gemma4_kernels.harness.parity import PARITY_ATOL
from gemma4_kernels.harness.prefix_driver import PrefixDriver
from sglang_patches import yoco_fast_prefill as yoco

ATOL = 2e-5
PROMPTS = (
    tuple(range(30, 43)),
    (5, 17, 300, 41, 9, 11, 2, 99, 100, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17),
    (7, 8, 9, 10, 11, 12),
)
SHARED = (4, 5)  # first_shared_layer = 6 - 2


@pytest.fixture(scope="module")
def e2b(tiny_families):
    from gemma4_kernels.harness.runtime import SGLangCpuRuntime
    from gemma4_kernels.harness.session import patches_installed

    path, _, weights = tiny_families.get("e2b")
    with patches_installed(()):
        return SGLangCpuRuntime.get().load(path, weights)


def scenario(model, name):
    """Last-token logits of each prompt, by one of the ways a server prefills."""
    driver = PrefixDriver(model)
    reqs = [driver.add(p) for p in PROMPTS]
    if name == "cached_prefix":
        driver.step([(r, 5) for r in reqs])
        return driver.step([(r, len(p)) for r, p in zip(reqs, PROMPTS, strict=True)])
    if name == "chunked":
        return PrefixDriver(model).chunked(PROMPTS, 4)
    if name == "long_and_one_token":
        a, b, c = reqs
        driver.step([(a, len(PROMPTS[0]) - 1), (c, len(PROMPTS[2]) - 1)])
        return driver.step([(a, len(PROMPTS[0])), (b, len(PROMPTS[1])), (c, len(PROMPTS[2]))])
    raise ValueError(name)


@pytest.fixture
def yoco_on(install_only):
    assert install_only("yoco_fast_prefill")["yoco_fast_prefill"]["state"] == "applied"
    yoco.PATCH.stats.clear()
    return yoco.PATCH


def test_mixed_lengths_prefill_and_the_decode_after_it_match_stock(e2b, install_only):
    stock = e2b.generate(PROMPTS, decode_steps=3, count_decode_step=None)
    install_only("yoco_fast_prefill")
    yoco.PATCH.stats.clear()
    ours = e2b.generate(PROMPTS, decode_steps=3, count_decode_step=None)
    assert yoco.PATCH.stats["yoco prefills"] == 1
    torch.testing.assert_close(ours.logits[0], stock.logits[0], atol=ATOL, rtol=0)
    # Non-shared layers wrote the same KV, shared layers write none: decode is identical.
    for step in range(1, 4):
        assert torch.equal(ours.logits[step], stock.logits[step])
    assert ours.tokens == stock.tokens


@pytest.mark.parametrize("name", ["cached_prefix", "chunked", "long_and_one_token"])
def test_prefix_chunked_and_mixed_extends_match_stock(e2b, install_only, name):
    stock = scenario(e2b, name)
    install_only("yoco_fast_prefill")
    yoco.PATCH.stats.clear()
    ours = scenario(e2b, name)
    assert yoco.PATCH.stats["yoco prefills"] >= 1
    torch.testing.assert_close(ours, stock, atol=ATOL, rtol=0)


@contextlib.contextmanager
def rows_per_layer(model):
    """Rows each decoder layer's attention sees, per forward (pre-hooks; removed after)."""
    seen: dict[int, list[int]] = {}
    handles = []
    for i, layer in enumerate(model.decoder_layers()):

        def hook(module, args, kwargs, i=i):
            hidden = kwargs.get("hidden_states", args[1] if len(args) > 1 else None)
            seen.setdefault(i, []).append(int(hidden.shape[0]))

        handles.append(layer.self_attn.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


def test_shared_layers_see_one_row_per_request(e2b, yoco_on):
    with rows_per_layer(e2b) as seen:
        driver = PrefixDriver(e2b)
        reqs = [driver.add(p) for p in PROMPTS]
        driver.step([(r, 5) for r in reqs])
        driver.step([(r, len(p)) for r, p in zip(reqs, PROMPTS, strict=True)])
    tokens = [3 * 5, sum(len(p) - 5 for p in PROMPTS)]
    for i, rows in seen.items():
        assert rows == ([len(PROMPTS)] * 2 if i in SHARED else tokens), (i, rows)
    assert yoco_on.stats["rows entering shared layers"] == 2 * len(PROMPTS)
    assert yoco_on.stats["rows of the batch"] == sum(tokens)


@contextlib.contextmanager
def around_text_forward(check):
    """Call ``check(model, fb, phase)`` before and after the (patched) text-model forward."""
    from sglang.srt.models.gemma4_causal import Gemma4TextModel

    patched = Gemma4TextModel.__dict__["forward"]

    def spy(model, *args, **kwargs):
        fb = kwargs["forward_batch"] if "forward_batch" in kwargs else args[2]
        check(model, fb, "before")
        out = patched(model, *args, **kwargs)
        check(model, fb, "after")
        return out

    Gemma4TextModel.forward = spy
    try:
        yield
    finally:
        Gemma4TextModel.forward = patched  # before the revert checks identity


def test_forward_batch_and_attention_metadata_are_restored(e2b, yoco_on):
    from sglang.srt.model_executor.forward_context import get_attn_backend

    snapshots = []

    def check(model, fb, phase):
        backend = get_attn_backend()
        bs = fb.batch_size
        fields = {f.name: getattr(fb, f.name) for f in dataclasses.fields(fb)}
        buffers = {n: getattr(backend, n)[: bs + 1].clone() for n in yoco.INDPTR_BUFFERS}
        snapshots.append((phase, fields, backend.forward_metadata, buffers))

    with around_text_forward(check):
        scenario(e2b, "cached_prefix")
    assert yoco_on.stats["yoco prefills"] == 2
    for (_, before, meta, bufs), (_, after, meta_after, bufs_after) in zip(
        snapshots[::2], snapshots[1::2], strict=True
    ):
        changed = [k for k, v in before.items() if k != "residual_stream" and after[k] is not v]
        assert changed == []
        assert meta_after is meta
        assert all(torch.equal(bufs[n], bufs_after[n]) for n in bufs)


@pytest.fixture(scope="module")
def captured(e2b):
    """(model, fb, forward context) of a real eligible prefill (stock forward: the guard
    decision does not depend on the patch being applied)."""
    from sglang.srt.model_executor.forward_context import get_forward_context

    got = {}

    def check(model, fb, phase):
        if phase == "before":
            got.update(model=model, fb=copy.copy(fb), ctx=get_forward_context())

    with around_text_forward(check):
        scenario(e2b, "cached_prefix")
    return got["model"], got["fb"], got["ctx"]


def _mode(name):
    from sglang.srt.model_executor.forward_batch_info import ForwardMode

    return getattr(ForwardMode, name)


def _hidden(name):
    from sglang.srt.model_executor.forward_batch_info import CaptureHiddenMode

    return getattr(CaptureHiddenMode, name)


GUARDS = {
    "decode": (lambda m, fb: setattr(fb, "forward_mode", _mode("DECODE")), "not a plain EXTEND"),
    "mixed": (lambda m, fb: setattr(fb, "forward_mode", _mode("MIXED")), "not a plain EXTEND"),
    "verify": (
        lambda m, fb: setattr(fb, "forward_mode", _mode("TARGET_VERIFY")),
        "not a plain EXTEND",
    ),
    "speculative": (lambda m, fb: setattr(fb, "spec_info", object()), "speculative"),
    "logprobs": (lambda m, fb: setattr(fb, "return_logprob", True), "logprobs"),
    "hidden_full": (
        lambda m, fb: setattr(fb, "capture_hidden_mode", _hidden("FULL")),
        "hidden states",
    ),
    "hidden_last": (
        lambda m, fb: setattr(fb, "capture_hidden_mode", _hidden("LAST")),
        "hidden states",
    ),
    "aux_layers": (lambda m, fb: setattr(m, "layers_to_capture", [5]), "hidden states"),
    "scoring": (lambda m, fb: setattr(fb, "token_indices_to_pool", torch.zeros(1)), "scoring"),
    "dp_attention": (lambda m, fb: setattr(fb, "global_num_tokens_cpu", [4]), "DP attention"),
    "one_token_each": (
        lambda m, fb: setattr(fb, "extend_seq_lens_cpu", [1] * fb.batch_size),
        "every request extends by one",
    ),
    "no_cpu_prefix_lens": (
        lambda m, fb: setattr(fb, "extend_prefix_lens_cpu", None),
        "no CPU prefix lengths",
    ),
    "pipeline": (
        lambda m, fb: setattr(m, "pp_group", type("PP", (), {"world_size": 2})()),
        "pipeline parallel",
    ),
}


@pytest.mark.parametrize("guard", GUARDS)
def test_every_guard_takes_the_full_path(captured, guard):
    from sglang.srt.model_executor.forward_context import set_forward_context

    model, fb, ctx = captured
    fb = copy.copy(fb)
    previous = set_forward_context(ctx)
    try:
        assert yoco.PATCH.ineligible(model, fb) is None  # the captured prefill is eligible
        mutate, reason = GUARDS[guard]
        saved = {k: getattr(model, k) for k in ("layers_to_capture", "pp_group")}
        try:
            mutate(model, fb)
            assert reason in yoco.PATCH.ineligible(model, fb)
        finally:
            for k, v in saved.items():
                setattr(model, k, v)
    finally:
        set_forward_context(previous)


def test_prefill_graph_capture_and_other_backends_take_the_full_path(captured):
    from sglang.srt.model_executor.forward_context import set_forward_context
    from sglang.srt.model_executor.runner_utils.prefill_graph import prefill_graph_scope

    model, fb, ctx = captured
    previous = set_forward_context(ctx)
    try:
        with prefill_graph_scope(full_graph=False):
            assert "prefill CUDA-graph" in yoco.PATCH.ineligible(model, fb)
    finally:
        set_forward_context(previous)
    set_forward_context(dataclasses.replace(ctx, attn_backend=object()))
    try:
        assert "not Triton" in yoco.PATCH.ineligible(model, fb)
    finally:
        set_forward_context(previous)


def test_one_token_extends_and_decode_run_the_full_path_end_to_end(e2b, yoco_on):
    driver = PrefixDriver(e2b)
    reqs = [driver.add(p) for p in PROMPTS]
    driver.step([(r, len(p) - 1) for r, p in zip(reqs, PROMPTS, strict=True)])
    before = yoco_on.stats["yoco prefills"]
    with rows_per_layer(e2b) as seen:
        driver.step([(r, len(p)) for r, p in zip(reqs, PROMPTS, strict=True)])
    assert yoco_on.stats["yoco prefills"] == before
    assert yoco_on.stats["fallback: every request extends by one"] == 1
    assert seen[SHARED[0]] == [len(PROMPTS)]  # one row each anyway: nothing to save


def test_models_without_kv_shared_layers_are_untouched(tiny_families, yoco_on):
    run = tiny_families.run(
        "dense", ("yoco_fast_prefill",), decode_steps=1, count_decode_step=None, fresh=True
    )
    assert run.patch_states["yoco_fast_prefill"] == "applied"
    assert not yoco_on.stats  # no eligibility check, no fallback counted
    assert run.report.prefill_max_abs <= PARITY_ATOL  # the prefill is SGLang's (= HF)


def test_seed_kill_switch_disables_the_patch(install_only, monkeypatch):
    monkeypatch.setenv("SGLANG_GEMMA4_YOCO", "0")
    assert install_only("yoco_fast_prefill")["yoco_fast_prefill"]["state"] == "disabled"

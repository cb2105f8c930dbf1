"""extend_attention_tiles against SGLang 0.5.23's real extend-attention launchers.

No GPU here, so the table's Hopper entries are exercised with ``forced_arch("sm_90")``:
SGLang's own ``_fwd_kernel`` (and the unified / dense-prefill kernels) run under the
Triton interpreter with every shipped tile, against the fp32 reference (itself checked
against HF's Gemma 4 attention in tests/ops/test_extend_attention_swa.py). Interpreter
dtype: fp32 (its bf16 ``tl.dot`` is broken, see that file).
"""

from __future__ import annotations

import json

import pytest
import torch

from gemma4_kernels import extend_tiles
from gemma4_kernels.ops.extend_attention_swa import extend_attention_swa_ref
from sglang_patches import extend_attention_tiles as eat
from tests.ops.test_extend_attention_swa import make_batch

SM_SCALE = 0.0625
ENTRIES = extend_tiles.load_table().entries


class LaunchSpy:
    """Stands in for a StagedKernel's kernel: records each launch's tile, then runs it."""

    def __init__(self, kernel):
        self.kernel, self.launches = kernel, []

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.launches.append(
                {k: kwargs.get(k) for k in ("BLOCK_M", "BLOCK_N", "num_warps", "num_stages")}
            )
            return self.kernel[grid](*args, **kwargs)

        return launch


@pytest.fixture
def patched(install_only, monkeypatch):
    from sglang.kernels.ops.attention import extend_attention

    assert install_only("extend_attention_tiles")["extend_attention_tiles"]["state"] == "applied"
    spies = {}
    for name, (kernel, _) in eat.LAUNCHERS.items():
        staged = getattr(extend_attention, kernel)
        assert isinstance(staged, eat.StagedKernel)
        spies[name] = LaunchSpy(staged.kernel)
        monkeypatch.setattr(staged, "kernel", spies[name])
    return extend_attention, spies


def batch_for(entry, heads, kv_heads, head_dim, with_prefix):
    """A ragged batch whose launch the entry matches."""
    batch = entry.batch.lo
    longest = min(entry.max_extend.hi or 40, 40)
    extends = [longest] + [max(entry.max_extend.lo, 1 + i % longest) for i in range(batch - 1)]
    prefixes = [(13 + 5 * i) * with_prefix for i in range(batch)]
    if with_prefix:
        prefixes[-1] = 0  # prefix 0 and > 0 in one batch
    return make_batch(extends, prefixes, heads, kv_heads, head_dim)


def run_extend(ea, b, window):
    o = torch.full_like(b["q"], float("nan"))
    ea.extend_attention_fwd_tiled(
        b["q"], b["k"], b["v"], o, b["k_buffer"], b["v_buffer"], b["qo_indptr"],
        b["kv_indptr"], b["kv_indices"], None, True, None, b["max_len_extend"], 1.0, 1.0,
        sm_scale=SM_SCALE, sliding_window_size=window,
    )  # fmt: skip
    return o


def reference(b, window):
    return extend_attention_swa_ref(
        b["q"], b["k"], b["v"], b["k_buffer"], b["v_buffer"], b["qo_indptr"], b["kv_indptr"],
        b["kv_indices"], SM_SCALE, window,
    )  # fmt: skip


@pytest.fixture
def tiled(patched):
    ea, spies = patched
    ea.extend_attention_fwd_tiled = eat.PATCH.tiled("extend_attention_fwd", ea.extend_attention_fwd)
    yield ea, spies
    del ea.extend_attention_fwd_tiled


@pytest.mark.parametrize("gqa", [2, 4, 8])
@pytest.mark.parametrize("with_prefix", [False, True], ids=["no_prefix", "prefix"])
@pytest.mark.parametrize("window", [-1, 7], ids=["full", "sliding"])
@pytest.mark.parametrize(
    "entry", ENTRIES, ids=lambda e: f"{e.arch}-bs{e.batch.lo}-{e.tile.label()}"
)
def test_every_shipped_entry_is_exact_in_sglangs_kernel(tiled, entry, window, with_prefix, gqa):
    ea, spies = tiled
    b = batch_for(entry, heads=gqa, kv_heads=1, head_dim=entry.head_dim.hi, with_prefix=with_prefix)
    with eat.forced_arch(entry.arch):
        out = run_extend(ea, b, window)
    launched = spies["extend_attention_fwd"].launches[-1]
    tile = entry.tile
    assert launched == {
        "BLOCK_M": tile.block_m,
        "BLOCK_N": tile.block_n,
        "num_warps": tile.num_warps,
        "num_stages": tile.num_stages,
    }
    torch.testing.assert_close(out, reference(b, window), atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("window", [-1, 7], ids=["full", "sliding"])
def test_head_dim_512_keeps_sglangs_tile_and_is_exact(tiled, window):
    ea, spies = tiled
    b = make_batch([9, 3], [6, 0], heads=2, kv_heads=1, head_dim=512)
    with eat.forced_arch("sm_90"):
        out = run_extend(ea, b, window)
    # SGLang's own choice on this (CPU) build: num_stages 1, its BLOCK_M.
    _, _, _, block_m, block_n, _ = eat.PATCH.block_sizes(lambda lq, lv: (512, 0, 512, 7, 9, 2))(
        512, 512
    )
    assert (block_m, block_n) == (7, 9)  # outside a tiled launch: SGLang's values pass through
    assert spies["extend_attention_fwd"].launches[-1]["num_stages"] == 1
    assert eat.PATCH.launches[("extend_attention_fwd", "sglang")] >= 1
    torch.testing.assert_close(out, reference(b, window), atol=2e-5, rtol=2e-5)


def test_without_a_table_entry_the_launch_is_sglangs(tiled):
    ea, spies = tiled
    b = make_batch([5], [3], heads=2, kv_heads=1, head_dim=256)
    run_extend(ea, b, -1)  # CPU: no arch, nothing looked up
    stock = ea._get_block_sizes_for_extend_attention.__wrapped__(256, 256)
    assert spies["extend_attention_fwd"].launches[-1] == {
        "BLOCK_M": stock[3],
        "BLOCK_N": stock[4],
        "num_warps": stock[5],
        "num_stages": 1,
    }


@pytest.mark.parametrize("window", [-1, 7], ids=["full", "sliding"])
def test_unified_launcher_takes_the_table_tile(patched, window):
    ea, spies = patched
    unified = eat.PATCH.tiled("extend_attention_fwd_unified", ea.extend_attention_fwd_unified)
    b = make_batch([6, 1, 9], [5, 11, 0], heads=4, kv_heads=1, head_dim=256)
    # The unified kernel reads prefix and extend keys from the buffer: append the extend.
    ext_slots = torch.arange(b["k_buffer"].shape[0], b["k_buffer"].shape[0] + b["q"].shape[0])
    k_all, v_all = torch.cat([b["k_buffer"], b["k"]]), torch.cat([b["v_buffer"], b["v"]])
    qo, kvp = b["qo_indptr"].long(), b["kv_indptr"].long()
    indices, indptr = [], [0]
    for r in range(3):
        indices += [b["kv_indices"][kvp[r] : kvp[r + 1]], ext_slots[qo[r] : qo[r + 1]]]
        indptr.append(indptr[-1] + int(kvp[r + 1] - kvp[r] + qo[r + 1] - qo[r]))
    o = torch.full_like(b["q"], float("nan"))
    with eat.forced_arch("sm_90"):
        unified(
            b["q"], o, k_all, v_all, 1.0, 1.0, b["qo_indptr"],
            torch.tensor(indptr, dtype=torch.int32), torch.cat(indices),
            (kvp[1:] - kvp[:-1]).to(torch.int32), b["max_len_extend"],
            sm_scale=SM_SCALE, sliding_window_size=window,
        )  # fmt: skip
    assert spies["extend_attention_fwd_unified"].launches[-1]["num_stages"] == 2
    assert spies["extend_attention_fwd_unified"].launches[-1]["BLOCK_M"] == 32
    torch.testing.assert_close(o, reference(b, window), atol=2e-5, rtol=2e-5)


def test_dense_prefill_launcher_takes_the_table_tile(patched):
    ea, spies = patched
    dense = eat.PATCH.tiled("dense_prefill_attention_fwd", ea.dense_prefill_attention_fwd)
    b = make_batch([7, 12], [4, 0], heads=2, kv_heads=1, head_dim=256)
    qo, kvp = b["qo_indptr"].long(), b["kv_indptr"].long()
    ks, vs, indptr = [], [], [0]
    for r in range(2):
        loc = b["kv_indices"][kvp[r] : kvp[r + 1]]
        ks += [b["k_buffer"][loc], b["k"][qo[r] : qo[r + 1]]]
        vs += [b["v_buffer"][loc], b["v"][qo[r] : qo[r + 1]]]
        indptr.append(indptr[-1] + ks[-2].shape[0] + ks[-1].shape[0])
    o = torch.full_like(b["q"], float("nan"))
    with eat.forced_arch("sm_90"):
        dense(b["q"], torch.cat(ks), torch.cat(vs), o, b["qo_indptr"],
              torch.tensor(indptr, dtype=torch.int32), 12, sm_scale=SM_SCALE)  # fmt: skip
    assert spies["dense_prefill_attention_fwd"].launches[-1]["num_stages"] == 2
    torch.testing.assert_close(o, reference(b, -1), atol=2e-5, rtol=2e-5)


def swa_table(tmp_path, head_dims=(1, 256)):
    doc = {
        "schema": 1,
        "entries": [
            dict(arch="sm_90", head_dim=list(head_dims), window="sliding", kernel="swa_pipelined",
                 block_m=16, block_n=16, num_warps=4, num_stages=2, source="test",
                 gpu_timing="test table: not a measurement"),
            dict(arch="sm_90", head_dim=list(head_dims), window="full", block_m=16, block_n=32,
                 num_warps=4, num_stages=2, source="test"),
        ],
    }  # fmt: skip
    path = tmp_path / "tiles.json"
    path.write_text(json.dumps(doc))
    return path


@pytest.fixture
def swa_table_env(tmp_path, monkeypatch):
    """The swa_pipelined test table, set before the patch is applied (it reads it then)."""
    monkeypatch.setenv(extend_tiles.ENV_TABLE, str(swa_table(tmp_path)))


def test_swa_pipelined_entry_routes_sliding_launches_to_our_kernel(swa_table_env, tiled):
    ea, spies = tiled
    b = make_batch([6, 20], [9, 0], heads=4, kv_heads=2, head_dim=64)
    before = len(spies["extend_attention_fwd"].launches)
    with eat.forced_arch("sm_90"):
        out = run_extend(ea, b, 5)
    assert len(spies["extend_attention_fwd"].launches) == before  # SGLang's kernel not launched
    assert eat.PATCH.launches[("extend_attention_fwd", "(16,16,w4,s2) swa_pipelined")] == 1
    torch.testing.assert_close(out, reference(b, 5), atol=2e-5, rtol=2e-5)


def test_bad_table_fails_the_install_loudly(install_only, tmp_path, monkeypatch):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"schema": 1, "entries": [{"arch": "sm_90", "block_m": 24}]}))
    monkeypatch.setenv(extend_tiles.ENV_TABLE, str(bad))
    row = install_only("extend_attention_tiles")["extend_attention_tiles"]
    assert row["state"] == "failed"
    assert "bad.json" in row["reason"]


def test_only_gemma4_backends_get_tiled_launchers(monkeypatch):
    import types

    calls = []
    init = eat.PATCH.backend_init(lambda backend, runner: calls.append(runner))
    monkeypatch.setattr(eat.PATCH, "bind", lambda backend, head_dim: calls.append(head_dim))

    def runner(arch):
        config = types.SimpleNamespace(architectures=[arch])
        return types.SimpleNamespace(
            model_config=types.SimpleNamespace(hf_config=config, head_dim=256)
        )

    init(object(), runner("LlamaForCausalLM"))
    assert calls[-1] != 256
    init(object(), runner("Gemma4ForConditionalGeneration"))
    assert calls[-1] == 256


@pytest.mark.parametrize("kind", ["tiles", "swa_pipelined"])
def test_real_gemma4_forward_with_table_tiles_matches_stock(
    tiny_families, tmp_path, monkeypatch, kind
):
    """The tiny dense model through SGLang's TritonAttnBackend, every extend launch on a
    table tile (sliding layers on our kernel for ``swa_pipelined``): same logits."""
    if kind == "tiles":
        doc = json.loads(extend_tiles.DEFAULT_TABLE.read_text())
        for entry in doc["entries"]:
            entry["head_dim"] = [1, 256]  # the tiny model's 32 / 64
        path = tmp_path / "tiles.json"
        path.write_text(json.dumps(doc))
    else:
        path = swa_table(tmp_path)
    monkeypatch.setenv(extend_tiles.ENV_TABLE, str(path))
    stock = tiny_families.run("dense", decode_steps=1, count_decode_step=None)
    eat.PATCH.launches.clear()
    with eat.forced_arch("sm_90"):
        run = tiny_families.run(
            "dense", ("extend_attention_tiles",), decode_steps=1, count_decode_step=None, fresh=True
        )
        backend = run.model.runner.attn_backend
        assert getattr(backend.extend_attention_fwd, "gemma4_kernels_tiled", False)
    served = {label for (_, label), n in eat.PATCH.launches.items() if n}
    expected = {"(32,64,w4,s2)"} if kind == "tiles" else {
        "(16,16,w4,s2) swa_pipelined", "(16,32,w4,s2)"}  # fmt: skip
    assert served == expected
    for ours, theirs in zip(run.generation.logits, stock.generation.logits, strict=True):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    assert run.generation.tokens == stock.generation.tokens

"""The extend-attention benchmark and tuner run end to end on CPU in their dry modes
(shapes, candidates and table I/O validated; no timings) and refuse to time without a GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from gemma4_kernels import extend_tiles
from microbench import tune_extend_attention as tune
from microbench.bench_extend_attention import AttnShape, seed_shapes, select_shapes
from tests.microbench.conftest import REPO

NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU behaviour")


def run_module(module, *args):
    return subprocess.run(
        [sys.executable, "-m", f"microbench.{module}", *args],
        capture_output=True, text=True, cwd=REPO, env=dict(os.environ), timeout=300,
    )  # fmt: skip


def test_bench_dry_run_resolves_the_seed_shapes_to_the_seed_tiles(run_bench):
    stdout, rows = run_bench("bench_extend_attention", "--dry-run", "--shapes", "seed")
    assert "no timings" in stdout
    tiles = {row["name"]: row["tile"] for row in rows}
    # Seed 002's H100 winners, per shape (burst's own best was (32,32): the fork's rule
    # gives every bs >= 8 short extend (16,64)).
    assert tiles == {
        "26B-A4B TP2 prefill long": "(32,64,w4,s2)",
        "26B-A4B TP2 prefill chat": "(32,64,w4,s2)",
        "26B-A4B TP2 verify chat": "(16,64,w4,s2)",
        "26B-A4B TP2 verify summ": "(16,64,w4,s2)",
        "26B-A4B TP2 verify burst": "(16,64,w4,s2)",
        "26B-A4B TP2 prefill multi": "(32,64,w4,s2)",
    }
    assert all(row["stock_us"] == "" for row in rows)  # nothing timed


def test_bench_dry_run_for_an_untuned_arch_keeps_sglangs_tiles(run_bench):
    _, rows = run_bench("bench_extend_attention", "--dry-run", "--arch", "sm_100")
    assert {row["tile"] for row in rows} == {"sglang (no entry)"}
    assert len(rows) == len(select_shapes("all"))


def test_model_shapes_cover_31b_e4b_e2b_at_tp1_and_tp2():
    names = {s.name.rsplit(" ", 2)[0] for s in select_shapes("models")}
    assert names == {f"{m} TP{tp}" for m in ("31B", "E4B", "E2B") for tp in (1, 2)}
    with pytest.raises(ValueError, match="--shapes must be one of"):
        select_shapes("huge")


@NO_GPU
@pytest.mark.parametrize("module", ["bench_extend_attention", "tune_extend_attention"])
def test_timing_without_a_gpu_is_refused(module, tmp_path):
    proc = run_module(module, "--out", str(tmp_path / "t.json")) if module.startswith(
        "tune") else run_module(module)  # fmt: skip
    assert proc.returncode == 2
    assert "--dry-run" in proc.stderr


def test_tuner_dry_run_writes_a_table_that_loads_back(tmp_path):
    out = tmp_path / "tuned.json"
    proc = run_module("tune_extend_attention", "--dry-run", "--out", str(out), "--shapes", "seed")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "6 shapes valid" in proc.stdout and "no timings" in proc.stdout
    assert extend_tiles.load_table(out).entries == extend_tiles.load_table().entries


def test_tuner_candidates_are_all_loadable_and_prune_what_cannot_fit():
    tiles = tune.candidates("sm_90", 256)
    labels = {t.label() for t in tiles}
    assert {"(32,64,w4,s2)", "(16,64,w4,s2)", "(64,64,w8,s1)"} <= labels
    assert "(128,128,w8,s3)" not in labels  # 3 x 128 x (K+V) x 256 x 2 B > 227 KiB
    assert len(labels) == len(tiles) < len(tune.BLOCK_M) * len(tune.BLOCK_N) * 2 * 3


def test_tuner_regimes_match_the_table_keys():
    assert [tune.regime_of(s) for s in seed_shapes()] == [0, 0, 1, 1, 1, 0]
    assert tune.regime_of(AttnShape("x", 8, 100, 0, -1, 8, 4)) == 2
    winners = {0: (extend_tiles.Tile(32, 64, 4, 2), 1.4, ["a"]),
               1: (extend_tiles.Tile(16, 64, 4, 2), 3.0, ["b"]),
               2: (extend_tiles.Tile(32, 64, 4, 2), 1.1, ["c"])}  # fmt: skip
    doc = extend_tiles.dump_table(tune.entries_from(winners, "sm_90", [256], "H100"), "t")
    table = extend_tiles.parse_table(json.loads(json.dumps(doc)), "t")
    assert table.lookup("sm_90", 256, 32, 4, True).tile.block_m == 16
    assert table.lookup("sm_90", 256, 32, 100, True).tile.block_m == 32
    assert table.lookup("sm_90", 256, 2, 100, False).tile.label() == "(32,64,w4,s2)"

"""The recorded static sm_90a metrics of the extend-attention tiles are what the code
compiles to today, cover every shipped Hopper entry, and show the pipelining claim."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from gemma4_kernels.extend_tiles import load_table
from microbench.extend_attention_static import DATA, HEAD_DIM
from tests.microbench.conftest import REPO

ROWS = json.loads(DATA.read_text())["rows"]


def test_recorded_metrics_match_a_fresh_compile():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, "-m", "microbench.extend_attention_static", "--check"],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "static metrics match" in proc.stdout


def test_every_shipped_hopper_entry_is_recorded_beside_stock():
    recorded = {(r["source"], r["window"], r["tile"]) for r in ROWS}
    for window in ("full", "sliding"):
        assert ("stock", window, "(64,64,w8,s1)") in recorded
        for entry in load_table().entries:
            if entry.arch == "sm_90" and HEAD_DIM in entry.head_dim:
                assert ("table", window, entry.tile.label()) in recorded


def test_entries_spilling_more_than_stock_carry_a_gpu_timing():
    timed = {e.tile.label() for e in load_table().entries if e.gpu_timing}
    for row in ROWS:
        if row["source"] == "table" and row["spills_more_than_stock"]:
            assert row["tile"] in timed, f"{row['tile']} ({row['window']}) spills more than stock"


@pytest.mark.parametrize("tile", ["(32,64,w4,s2)", "(16,64,w4,s2)"])
def test_sliding_window_loop_pipelines_only_in_our_kernel(tile):
    by = {(r["source"], r["window"], r["tile"]): r for r in ROWS}
    # Two stages pipeline SGLang's full-attention loop (cp.async) but not its sliding one:
    # the loads sit under the out-of-window tile skip.
    assert by[("table", "full", tile)]["async_copies"] > 0
    assert by[("table", "sliding", tile)]["async_copies"] == 0
    # The variant computes the window range up front: its sliding loop pipelines.
    assert by[("variant", "sliding", tile)]["async_copies"] > 0
    assert all(r["mma"] for r in ROWS)  # every configuration uses tensor cores

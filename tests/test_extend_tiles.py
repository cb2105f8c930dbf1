"""The extend-attention tile table: the shipped file, lookups, and load-time refusal of
malformed or unsafe tables (a clear error naming file and entry, never a launch error)."""

from __future__ import annotations

import copy
import json

import pytest

from gemma4_kernels import extend_tiles
from gemma4_kernels.extend_tiles import TileTableError, load_table, parse_table

SHIPPED = json.loads(extend_tiles.DEFAULT_TABLE.read_text())


def table_with(**changes):
    doc = copy.deepcopy(SHIPPED)
    doc["entries"][0].update(changes)
    return doc


def test_shipped_table_holds_the_seed_hopper_entries():
    table = load_table()
    tiles = {
        (batch, max_ext): table.lookup("sm_90", 256, batch, max_ext, sliding).tile.label()
        for batch in (1, 7, 8, 32)
        for max_ext in (4, 1000)
        for sliding in (False, True)
    }
    assert tiles[(1, 1000)] == tiles[(7, 4)] == "(32,64,w4,s2)"  # bs < 8
    assert tiles[(8, 4)] == tiles[(32, 4)] == "(16,64,w4,s2)"  # MTP verify
    assert tiles[(32, 1000)] == "(32,64,w4,s2)"  # bs >= 8, long extends


@pytest.mark.parametrize(
    "arch, head_dim", [("sm_90", 512), ("sm_90", 128), ("sm_100", 256), ("sm_80", 256), (None, 256)]
)
def test_launches_without_an_entry_keep_sglangs_tile(arch, head_dim):
    assert load_table().lookup(arch, head_dim, 1, 100, False) is None


def test_env_variable_replaces_the_table(tmp_path, monkeypatch):
    doc = table_with(block_m=64, block_n=32, num_warps=8, num_stages=3)
    path = tmp_path / "tiles.json"
    path.write_text(json.dumps(doc))
    monkeypatch.setenv(extend_tiles.ENV_TABLE, str(path))
    entry = extend_tiles.active_table().lookup("sm_90", 256, 1, 10, False)
    assert entry.tile.label() == "(64,32,w8,s3)"
    monkeypatch.delenv(extend_tiles.ENV_TABLE)
    assert extend_tiles.active_table().lookup("sm_90", 256, 1, 10, False).tile.block_m == 32


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"block_m": 48}, "block_m must be a power of two"),
        ({"block_n": 256}, "block_n must be a power of two in 16..128"),
        ({"block_m": 8}, "block_m must be a power of two"),
        ({"num_warps": 3}, "num_warps must be one of"),
        ({"num_stages": 0}, "num_stages must be in"),
        ({"arch": "sm_91x"}, "arch 'sm_91x' is not one of"),
        ({"colour": "red"}, "unknown key(s) ['colour']"),
        ({"head_dim": [256, 129]}, "head_dim range"),
        ({"head_dim": [129, None]}, "head_dim needs an upper bound"),
        ({"kernel": "fast"}, "kernel must be one of"),
        ({"kernel": "swa_pipelined"}, "serves only window 'sliding'"),
        ({"kernel": "swa_pipelined", "window": "sliding"}, "only with a gpu_timing"),
        ({"window": "local"}, "window must be one of"),
        ({"source": ""}, "source must say"),
        # 4 stages x 128 x (K+V) x 256 x 2 bytes = 512 KiB: cannot fit Hopper's 227 KiB.
        ({"block_n": 128, "num_stages": 4}, "over sm_90's"),
        ({"batch": [1, 9]}, "overlap"),
    ],
)
def test_bad_tables_are_refused_at_load_naming_the_entry(changes, message):
    with pytest.raises(TileTableError, match="entry 0|entries 0 and") as info:
        parse_table(table_with(**changes), "tiles.json")
    assert message in str(info.value)
    assert "tiles.json" in str(info.value)


@pytest.mark.parametrize(
    "doc, message",
    [
        ([], "must be a JSON object"),
        ({"schema": 2, "entries": []}, "schema must be 1"),
        ({"schema": 1, "entries": {}}, "entries must be a list"),
        ({"schema": 1, "entries": [], "extra": 1}, "unknown top-level key"),
        ({"schema": 1, "entries": [[]]}, "an entry must be an object"),
    ],
)
def test_bad_documents_are_refused(doc, message):
    with pytest.raises(TileTableError, match=message):
        parse_table(doc, "t.json")


def test_unreadable_or_invalid_json_files_are_clear_errors(tmp_path):
    with pytest.raises(TileTableError, match="cannot read"):
        load_table(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(TileTableError, match="not valid JSON"):
        load_table(bad)


def test_window_keys_split_sliding_and_full_launches():
    doc = {
        "schema": 1,
        "entries": [
            dict(arch="sm_90", head_dim=[1, 256], window="sliding", block_m=16, block_n=32,
                 num_warps=4, num_stages=2, source="test"),
            dict(arch="sm_90", head_dim=[1, 256], window="full", block_m=64, block_n=64,
                 num_warps=8, num_stages=1, source="test"),
        ],
    }  # fmt: skip
    table = parse_table(doc, "t")
    assert table.lookup("sm_90", 256, 1, 10, sliding=True).tile.block_m == 16
    assert table.lookup("sm_90", 256, 1, 10, sliding=False).tile.block_m == 64


def test_dump_table_validates_what_the_tuner_writes():
    doc = extend_tiles.dump_table(SHIPPED["entries"], "tuned")
    assert parse_table(doc, "x").entries == load_table().entries
    with pytest.raises(TileTableError):
        extend_tiles.dump_table([{**SHIPPED["entries"][0], "block_m": 3}], "tuned")

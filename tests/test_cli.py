"""The console script and ``python -m gemma4_kernels``: doctor, status --json, demo."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gemma4_kernels.cli import format_table
from sglang_patches.registry import PATCHES
from tests.helpers import default_patch_states

REPO = Path(__file__).resolve().parents[1]
NAMES = [patch.name for patch in PATCHES]
DEFAULT_STATE = default_patch_states()


def run(args: list[str], **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        args, capture_output=True, text=True, cwd=REPO, env={**os.environ, **env}, timeout=600
    )


def test_format_table_aligns_columns():
    text = format_table([{"a": "x", "b": 1}, {"a": "longer", "b": 22}], ("a", "b"))
    lines = text.splitlines()
    assert lines[0].split() == ["a", "b"]
    column_b = lines[0].index("b")
    assert lines[2][column_b:] == "1" and lines[3][column_b:] == "22"


def test_doctor_prints_versions_device_and_the_patch_table():
    proc = run([sys.executable, "-m", "gemma4_kernels", "doctor"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    for key in (
        "python",
        "torch",
        "triton",
        "sglang",
        "flashinfer",
        "transformers",
        "gpu",
        "TRITON_INTERPRET",
    ):
        assert any(line.startswith(key) for line in out.splitlines()), key
    assert "no GPU" in out or "sm_" in out
    header = next(line for line in out.splitlines() if line.startswith("name "))
    assert header.split()[:2] == ["name", "state"]
    for name in NAMES:
        row = next(line for line in out.splitlines() if line.startswith(name + " "))
        assert row.split()[1] == DEFAULT_STATE[name]


def test_status_json_via_console_script_honours_switches():
    script = shutil.which("gemma4-kernels", path=str(Path(sys.executable).parent))
    assert script, "console script gemma4-kernels is not installed next to the interpreter"
    proc = run([script, "status", "--json"], GEMMA4_KERNELS_PATCHES="-dense_chunk_mem")
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {row["name"]: row for row in json.loads(proc.stdout)}
    assert list(rows) == NAMES
    assert rows["dense_chunk_mem"]["state"] == "disabled"
    assert all(rows[n]["state"] == DEFAULT_STATE[n] for n in NAMES if n != "dense_chunk_mem")
    for row in rows.values():
        assert {"name", "state", "target", "reason"} <= set(row)


def test_unknown_patch_name_is_a_clear_cli_error():
    proc = run([sys.executable, "-m", "gemma4_kernels", "status"], GEMMA4_KERNELS_PATCHES="nope")
    assert proc.returncode != 0
    assert "unknown patch 'nope'" in proc.stderr
    for name in NAMES:
        assert name in proc.stderr


@pytest.mark.parametrize("family_label", ["26B-A4B-like", "31B-like", "E2B-like"])
def test_demo_rows(family_label, demo_output):
    assert family_label in demo_output


@pytest.fixture(scope="module")
def demo_output() -> str:
    proc = run([sys.executable, "-m", "gemma4_kernels", "demo"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def _row(output: str, model: str, field: str) -> list[str]:
    line = next(ln for ln in output.splitlines() if ln.startswith(model) and field in ln)
    return line.split(field, 1)[1].split()


def test_demo_shows_each_tune(demo_output):
    assert _row(demo_output, "26B-A4B-like", "swa_full_tokens_ratio")[:3] == [
        "0.8",
        "0.15",
        "changed",
    ]
    assert _row(demo_output, "31B-like", "chunked_prefill_size")[:3] == ["8192", "4096", "changed"]
    assert _row(demo_output, "31B-like", "mem_fraction_static")[1] == "0.88"
    assert _row(demo_output, "E2B-like", "vision/audio towers")[:2] == ["loaded", "skipped"]
    assert _row(demo_output, "31B-like", "prefill CUDA graph")[1] == "disabled"


def test_demo_model_section_shows_stock_defects_and_patched_parity(demo_output):
    section = demo_output.split("\nmodel: ", 1)[1]
    lines = [ln for ln in section.splitlines() if "-like" in ln]
    assert len(lines) == 6, section
    for line in lines:
        fields = line.split()
        if " patched " in line:
            assert fields[-4:-2] == ["yes", "ok"], line
        else:
            assert " stock " in line and fields[-3] == "FAIL", line  # each shows a defect

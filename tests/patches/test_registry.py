"""The real registry against the installed SGLang 0.5.23: records, pins, idempotence,
exact revert, loud skips."""

from __future__ import annotations

import importlib
import logging

import pytest

import gemma4_kernels
from sglang_patches import manager, registry
from sglang_patches.base import Patch, Pin
from tests.helpers import default_patch_states, diff_snapshots, snapshot_sglang

PATCHES = registry.PATCHES
# Patches that change nothing on 0.5.23: they pin a property SGLang already has.
RECORD_ONLY = {"frozen_kv_mtp_swa"}
DEFAULT_STATE = default_patch_states()  # decided before anything is patched


def test_every_patch_is_listed_once_with_a_complete_record():
    names = [patch.name for patch in PATCHES]
    assert len(names) == len(set(names))
    for patch in PATCHES:
        assert isinstance(patch, Patch)
        assert patch.name and patch.purpose and patch.targets
        assert type(patch).check is not Patch.check, f"{patch.name} lacks check()"
        assert type(patch)._apply is not Patch._apply, f"{patch.name} lacks _apply()"
        # One target, one patch file, named after the patch.
        module = importlib.import_module(f"sglang_patches.{patch.name}")
        assert module.PATCH is patch
        for required in patch.requires:
            assert names.index(required) < names.index(patch.name), "requirements come first"


@pytest.mark.parametrize("patch", PATCHES, ids=lambda p: p.name)
def test_check_passes_on_the_supported_sglang(patch):
    """The pins still match 0.5.23: what each patch was written against is unchanged
    (a record-only patch reports the upstream fix it verified instead)."""
    result = patch.check()
    assert result.ok or (result.upstream and patch.name in RECORD_ONLY), result.reason


@pytest.mark.parametrize("patch", PATCHES, ids=lambda p: p.name)
def test_targets_resolve(patch):
    from sglang_patches.base import resolve_target

    for target in patch.targets:
        resolve_target(target)


def test_install_twice_equals_once_and_revert_restores_identity(monkeypatch):
    for patch in PATCHES:  # import every target module before the snapshot
        patch.check()
    before = snapshot_sglang()

    # every patch, the opt-in ones included
    monkeypatch.setenv("GEMMA4_KERNELS_PATCHES", "all")
    upstream = {name for name, state in DEFAULT_STATE.items() if state == "upstream"}
    first = gemma4_kernels.install()
    assert {row["name"] for row in first if row["state"] == "applied"} == {
        p.name for p in PATCHES if p.name not in upstream
    }
    after_first = snapshot_sglang()
    assert diff_snapshots(before, after_first), "install changed nothing"

    second = gemma4_kernels.install()
    assert second == first
    assert diff_snapshots(after_first, snapshot_sglang()) == []

    gemma4_kernels.revert()
    assert diff_snapshots(before, snapshot_sglang()) == []
    after = {row["name"]: row["state"] for row in gemma4_kernels.status()}
    assert after == {p.name: "upstream" if p.name in upstream else "pending" for p in PATCHES}


def test_changed_target_skips_loudly(monkeypatch, caplog):
    from sglang.srt.arg_groups import memory_hook

    def handle_gpu_memory_settings(server_args):  # a "new SGLang" version of the step
        return None

    monkeypatch.setattr(memory_hook, "handle_gpu_memory_settings", handle_gpu_memory_settings)
    with caplog.at_level(logging.WARNING, logger="gemma4_kernels"):
        rows = {row["name"]: row for row in gemma4_kernels.install()}
    row = rows["dense_chunk_mem"]
    assert row["state"] == "skipped"
    assert "changed since the patch was written" in row["reason"]
    assert any("dense_chunk_mem" in r.getMessage() for r in caplog.records)
    others = {name: r["state"] for name, r in rows.items() if name != "dense_chunk_mem"}
    assert others == {name: DEFAULT_STATE[name] for name in others}


def test_missing_target_skips_loudly(monkeypatch):
    from sglang.srt.arg_groups import serving_hook

    monkeypatch.delattr(serving_hook, "handle_multimodal")
    rows = {row["name"]: row for row in gemma4_kernels.install()}
    assert rows["text_only_default"]["state"] == "skipped"
    assert "is missing" in rows["text_only_default"]["reason"]


def test_missing_target_is_an_error_in_strict_mode(monkeypatch):
    from sglang.srt.arg_groups import serving_hook

    for patch in PATCHES:
        patch.check()
    before = snapshot_sglang()
    monkeypatch.delattr(serving_hook, "handle_multimodal")
    monkeypatch.setenv("GEMMA4_KERNELS_STRICT", "1")
    with pytest.raises(manager.PatchError, match="text_only_default"):
        gemma4_kernels.install()
    monkeypatch.undo()
    assert diff_snapshots(before, snapshot_sglang()) == []


def test_a_raising_check_never_takes_sglang_down(monkeypatch):
    from sglang_patches import dense_chunk_mem

    def broken_check():
        raise KeyError("unexpected layout")

    monkeypatch.setattr(dense_chunk_mem.PATCH, "check", broken_check)
    rows = {row["name"]: row for row in gemma4_kernels.install()}
    assert rows["dense_chunk_mem"]["state"] == "failed"
    assert "KeyError" in rows["dense_chunk_mem"]["reason"]
    assert rows["swa_ratio_moe"]["state"] == "applied"


def test_pin_reports_missing_and_changed():
    assert "is missing" in Pin("sglang.srt.no_such_module.fn", "0" * 16).verify()
    changed = Pin("sglang.srt.arg_groups.serving_hook.handle_multimodal", "0" * 16).verify()
    assert "changed since the patch was written" in changed

"""The patch machinery: install/revert/status, failures, strict mode, version gate.

These tests drive stand-in patches on ``tests/patches/fake_targets.py`` so every
path of the framework can be forced; the real patches are tested against SGLang
in the other files of this folder.
"""

from __future__ import annotations

import logging

import pytest

from sglang_patches import manager, registry
from sglang_patches.base import CheckResult, Parallelism, Patch, UndoLog
from tests.patches import fake_importer, fake_targets


def _new_greet() -> str:
    return "patched"


class GreetPatch(Patch):
    name = "greet"
    purpose = "replace greet()"
    targets = ("tests.patches.fake_targets.greet",)

    def __init__(self, check_result=None, check_raises=None, apply_raises=None):
        super().__init__()
        self.check_result = check_result or CheckResult.ready()
        self.check_raises = check_raises
        self.apply_raises = apply_raises
        self.checks = 0
        self.applies = 0

    def check(self):
        self.checks += 1
        if self.check_raises:
            raise self.check_raises
        return self.check_result

    def _apply(self, undo: UndoLog) -> None:
        self.applies += 1
        undo.replace_everywhere(fake_targets, "greet", _new_greet)
        if self.apply_raises:  # fail half-way: the change above must be rolled back
            raise self.apply_raises


class BoxPatch(Patch):
    name = "box"
    purpose = "patch Box"
    targets = ("tests.patches.fake_targets.Box",)
    requires = ("greet",)

    def check(self):
        return CheckResult.ready()

    def _apply(self, undo: UndoLog) -> None:
        undo.set_attr(fake_targets.Box, "describe", lambda self: "patched")
        undo.set_attr(fake_targets.Box, "kind", staticmethod(lambda: "patched"))
        undo.set_attr(fake_targets.Box, "added", "new attribute")
        undo.register_in(
            fake_targets.REGISTRY,
            "existing",
            _new_greet,
            lambda: fake_targets.REGISTRY["existing"].append(_new_greet),
        )
        undo.register_in(
            fake_targets.REGISTRY,
            "fresh",
            _new_greet,
            lambda: fake_targets.REGISTRY.setdefault("fresh", []).append(_new_greet),
        )


@pytest.fixture
def use_patches(monkeypatch):
    def use(*patches):
        monkeypatch.setattr(registry, "PATCHES", list(patches))
        return patches

    return use


def snapshot():
    box = dict(fake_targets.Box.__dict__)
    reg = {k: list(v) for k, v in fake_targets.REGISTRY.items()}
    return fake_targets.greet, fake_importer.greet, box, reg


def assert_same(before, after):
    greet, stale, box, reg = before
    assert after[0] is greet and after[1] is stale
    assert after[2].keys() == box.keys()
    assert all(after[2][k] is v for k, v in box.items())
    assert after[3].keys() == reg.keys()
    for key, items in reg.items():
        assert len(after[3][key]) == len(items)
        assert all(a is b for a, b in zip(after[3][key], items, strict=True))


def states():
    return {row["name"]: row["state"] for row in manager.status()}


def test_install_apply_revert_roundtrip_restores_identity(use_patches):
    use_patches(GreetPatch(), BoxPatch())
    before = snapshot()
    manager.install()
    assert states() == {"greet": "applied", "box": "applied"}
    assert fake_targets.greet() == "patched"
    assert fake_importer.greet() == "patched", "stale from-import copy must be rebound"
    box = fake_targets.Box()
    assert (box.describe(), box.kind(), box.added) == ("patched", "patched", "new attribute")
    assert fake_targets.REGISTRY["fresh"] == [_new_greet]

    manager.revert()
    assert_same(before, snapshot())
    assert "added" not in fake_targets.Box.__dict__
    assert isinstance(fake_targets.Box.__dict__["kind"], staticmethod)
    assert states() == {"greet": "pending", "box": "pending"}


def test_revert_refuses_to_clobber_a_later_rebinding(use_patches):
    use_patches(GreetPatch())
    manager.install()

    def someone_elses():
        return "theirs"

    fake_targets.greet = someone_elses
    try:
        with pytest.raises(RuntimeError, match="replaced after gemma4-kernels patched it"):
            manager.revert()
        assert fake_targets.greet is someone_elses  # their change survives
    finally:
        fake_targets.greet = fake_targets.__dict__.get("greet")
        import importlib

        importlib.reload(fake_targets)
        importlib.reload(fake_importer)


def test_install_twice_is_install_once(use_patches):
    greet, box = use_patches(GreetPatch(), BoxPatch())
    manager.install()
    after_first = snapshot()
    manager.install()
    assert (greet.checks, greet.applies) == (1, 1)
    assert_same(after_first, snapshot())
    greet.apply()  # a direct second apply is a no-op as well
    assert greet.applies == 1


def test_exception_in_check_marks_failed_and_others_proceed(use_patches, caplog):
    class Other(GreetPatch):
        name = "other"

        def _apply(self, undo):
            undo.set_attr(fake_targets.Box, "label", "patched")

    use_patches(GreetPatch(check_raises=RuntimeError("boom")), Other())
    with caplog.at_level(logging.WARNING, logger="gemma4_kernels"):
        rows = {row["name"]: row for row in manager.install()}
    assert rows["greet"]["state"] == "failed"
    assert "check() raised RuntimeError: boom" in rows["greet"]["reason"]
    assert rows["other"]["state"] == "applied"
    assert fake_targets.greet() == "original"
    assert any("greet" in r.getMessage() and "failed" in r.getMessage() for r in caplog.records)


def test_exception_in_apply_rolls_back_partial_changes(use_patches):
    before = snapshot()
    use_patches(GreetPatch(apply_raises=RuntimeError("half-way")))
    rows = manager.install()
    assert rows[0]["state"] == "failed" and "half-way" in rows[0]["reason"]
    assert_same(before, snapshot())


def test_requirement_not_applied_skips_loudly(use_patches, monkeypatch, caplog):
    use_patches(GreetPatch(), BoxPatch())
    monkeypatch.setenv("GEMMA4_KERNELS_PATCHES", "-greet")
    with caplog.at_level(logging.WARNING, logger="gemma4_kernels"):
        rows = {row["name"]: row for row in manager.install()}
    assert rows["greet"]["state"] == "disabled"
    assert rows["box"]["state"] == "skipped"
    assert rows["box"]["reason"] == "requires greet is disabled"
    assert any("requires greet" in r.getMessage() for r in caplog.records)


def test_check_skip_and_upstream_states(use_patches):
    class Upstream(GreetPatch):
        name = "upstream_one"

    use_patches(
        GreetPatch(check_result=CheckResult.skip("target changed")),
        Upstream(check_result=CheckResult.fixed_upstream("SGLang fixed it")),
    )
    rows = {row["name"]: row for row in manager.install()}
    assert (rows["greet"]["state"], rows["greet"]["reason"]) == ("skipped", "target changed")
    assert (rows["upstream_one"]["state"], rows["upstream_one"]["reason"]) == (
        "upstream",
        "SGLang fixed it",
    )
    assert fake_targets.greet() == "original"


def test_strict_mode_raises_and_reverts_this_install(use_patches, monkeypatch):
    class Skipper(GreetPatch):
        name = "skipper"

        def _apply(self, undo):  # pragma: no cover - never reached
            raise AssertionError

    before = snapshot()
    use_patches(GreetPatch(), Skipper(check_result=CheckResult.skip("target missing")))
    monkeypatch.setenv("GEMMA4_KERNELS_STRICT", "1")
    with pytest.raises(manager.PatchError, match="skipper: target missing"):
        manager.install()
    assert_same(before, snapshot())
    assert states()["greet"] == "pending"


def test_version_gate_skips_everything_with_one_warning(use_patches, monkeypatch, caplog):
    use_patches(GreetPatch(), BoxPatch())
    monkeypatch.setattr(manager, "sglang_version", lambda: "0.5.24")
    with caplog.at_level(logging.INFO, logger="gemma4_kernels"):
        rows = manager.install()
    assert {row["state"] for row in rows} == {"skipped"}
    assert all("sglang 0.5.24 is not the supported 0.5.23" in row["reason"] for row in rows)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "all 2 patches skipped" in warnings[0].getMessage()
    assert fake_targets.greet() == "original"

    monkeypatch.setenv("GEMMA4_KERNELS_STRICT", "1")
    with pytest.raises(manager.PatchError, match="0.5.24"):
        manager.install()


def test_sglang_missing_is_a_skip(use_patches, monkeypatch):
    use_patches(GreetPatch())
    monkeypatch.setattr(manager, "sglang_version", lambda: None)
    assert manager.install()[0]["reason"] == "sglang is not installed"


def test_malformed_env_is_an_error_before_any_change(use_patches, monkeypatch):
    before = snapshot()
    use_patches(GreetPatch())
    monkeypatch.setenv("GEMMA4_KERNELS_DISABLE", "sometimes")
    with pytest.raises(ValueError, match="GEMMA4_KERNELS_DISABLE='sometimes'"):
        manager.install()
    assert_same(before, snapshot())


def test_disable_all(use_patches, monkeypatch):
    use_patches(GreetPatch(), BoxPatch())
    monkeypatch.setenv("GEMMA4_KERNELS_DISABLE", "1")
    rows = manager.install()
    assert {(row["state"], row["reason"]) for row in rows} == {
        ("disabled", "GEMMA4_KERNELS_DISABLE=1")
    }


def test_status_before_install_is_pending(use_patches):
    use_patches(GreetPatch())
    (row,) = manager.status()
    assert row["state"] == "pending"
    assert set(row) >= {"name", "state", "target", "reason"}


class _Cfg:
    def __init__(self, **sizes):
        self.__dict__.update({"tp_size": 1, "pp_size": 1, "attn_dp_size": 1, "ep_size": 1, **sizes})


@pytest.mark.parametrize(
    "support, sizes, blocked",
    [
        (Parallelism(), dict(tp_size=8, pp_size=2, attn_dp_size=4, ep_size=8), None),
        (Parallelism(tp=False), dict(tp_size=2), "tp_size=2"),
        (Parallelism(tp=False), dict(tp_size=1), None),
        (Parallelism(pp=False), dict(pp_size=4), "pp_size=4"),
        (Parallelism(dp_attention=False), dict(attn_dp_size=2), "attn_dp_size=2"),
        (Parallelism(ep=False), dict(ep_size=8), "ep_size=8"),
    ],
)
def test_parallelism_declaration(support, sizes, blocked):
    reason = support.unsupported(_Cfg(**sizes))
    if blocked is None:
        assert reason is None
    else:
        assert blocked in reason

"""Environment switches: parsing, precedence and clear errors."""

from __future__ import annotations

import pytest

from sglang_patches.settings import Settings, parse_bool

NAMES = ["alpha", "beta", "gamma"]


@pytest.mark.parametrize("value", ["1", "true", "YES", " on "])
def test_parse_bool_true(value):
    assert parse_bool("X", value) is True


@pytest.mark.parametrize("value", ["0", "false", "No", "off", ""])
def test_parse_bool_false(value):
    assert parse_bool("X", value) is False


def test_parse_bool_unset_uses_default():
    assert parse_bool("X", None) is False
    assert parse_bool("X", None, default=True) is True


@pytest.mark.parametrize("value", ["2", "enable", "tru"])
def test_parse_bool_rejects_garbage_naming_the_variable(value):
    with pytest.raises(ValueError, match=rf"GEMMA4_KERNELS_DISABLE={value!r}"):
        Settings.from_env(NAMES, {"GEMMA4_KERNELS_DISABLE": value})


def decide(env: dict, name: str, default_on: bool = True, switch: str | None = None):
    return Settings.from_env(NAMES, env).decide(name, default_on, switch, env)


def test_defaults():
    assert decide({}, "alpha") == (True, "on by default")
    enabled, why = decide({}, "alpha", default_on=False)
    assert not enabled and "GEMMA4_KERNELS_PATCHES=alpha" in why


def test_disable_all_wins_over_everything():
    env = {"GEMMA4_KERNELS_DISABLE": "1", "GEMMA4_KERNELS_PATCHES": "alpha", "SW": "1"}
    assert decide(env, "alpha", switch="SW")[0] is False


def test_allow_list_enables_listed_and_default_off_patches():
    env = {"GEMMA4_KERNELS_PATCHES": "alpha, gamma"}
    assert decide(env, "alpha")[0] is True
    assert decide(env, "beta")[0] is False
    assert decide(env, "gamma", default_on=False)[0] is True


def test_deny_list_keeps_the_rest_default():
    env = {"GEMMA4_KERNELS_PATCHES": "-beta"}
    assert decide(env, "alpha")[0] is True
    assert decide(env, "beta") == (False, "denied by GEMMA4_KERNELS_PATCHES (-beta)")
    assert decide(env, "gamma", default_on=False)[0] is False


def test_all_with_exceptions():
    env = {"GEMMA4_KERNELS_PATCHES": "all,-gamma"}
    assert decide(env, "beta", default_on=False)[0] is True
    assert decide(env, "gamma")[0] is False


def test_own_switch_beats_allow_list_but_not_deny():
    env = {"GEMMA4_KERNELS_PATCHES": "alpha", "SW": "1"}
    assert decide(env, "beta", switch="SW") == (True, "SW=1")
    env = {"GEMMA4_KERNELS_PATCHES": "-beta", "SW": "1"}
    assert decide(env, "beta", switch="SW")[0] is False
    assert decide({"SW": "0"}, "alpha", switch="SW") == (False, "SW=0")


def test_malformed_own_switch_is_an_error():
    with pytest.raises(ValueError, match="SW='perhaps'"):
        decide({"SW": "perhaps"}, "alpha", switch="SW")


def test_unknown_patch_name_lists_valid_names():
    with pytest.raises(ValueError, match="unknown patch 'delta'.*alpha, beta, gamma"):
        Settings.from_env(NAMES, {"GEMMA4_KERNELS_PATCHES": "alpha,-delta"})


def test_contradiction_is_an_error():
    with pytest.raises(ValueError, match="both allows and denies"):
        Settings.from_env(NAMES, {"GEMMA4_KERNELS_PATCHES": "alpha,-alpha"})


def test_strict_flag():
    assert Settings.from_env(NAMES, {"GEMMA4_KERNELS_STRICT": "1"}).strict is True
    assert Settings.from_env(NAMES, {}).strict is False

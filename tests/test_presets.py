"""Launch presets: the shipped data file, its validation, and detection from configs."""

from __future__ import annotations

import json

import pytest

from gemma4_kernels.harness.tiny_configs import MM_ARCH, TEXT_ARCH
from gemma4_kernels.presets import (
    PRESETS_FILE,
    PresetError,
    detect,
    gemma4_family,
    load_presets,
    read_model_config,
)
from sglang_patches.registry import PATCHES

# Text dimensions of the released checkpoints (DESIGN.md's shape table).
REAL = {
    "26B-A4B": ("moe", 2816, 30),
    "31B": ("dense", 5376, 60),
    "E4B": ("e2b", 2560, 42),
    "E2B": ("e2b", 1536, 35),
}
TINY_FALLBACK = {"moe": "26B-A4B", "dense": "31B", "e2b": "E4B"}


@pytest.fixture(scope="module")
def table():
    return load_presets()


def config_dict(tiny_checkpoint, family, arch=MM_ARCH, **text):
    config = json.loads((tiny_checkpoint(family, arch) / "config.json").read_text())
    config["text_config"].update(text)
    return config


@pytest.mark.parametrize("name", sorted(REAL))
@pytest.mark.parametrize("arch", [MM_ARCH, TEXT_ARCH])
def test_real_sizes_select_their_model(table, tiny_checkpoint, name, arch):
    family, hidden, layers = REAL[name]
    dims = dict(hidden_size=hidden, num_hidden_layers=layers)
    config = config_dict(tiny_checkpoint, family, arch, **dims)
    found = detect(config, table)
    assert found.preset is not None and found.preset.name == name
    assert "unlisted" not in found.message


@pytest.mark.parametrize("family", sorted(TINY_FALLBACK))
def test_tiny_configs_get_their_familys_preset_and_say_so(table, tiny_checkpoint, family):
    model = tiny_checkpoint(family)
    found = detect(read_model_config(str(model)), table)
    assert found.preset.name == TINY_FALLBACK[family]
    assert "unlisted size" in found.message and found.preset.name in found.message


def test_same_size_other_family_is_not_a_match(table, tiny_checkpoint):
    # a dense config with the MoE model's dimensions is not 26B-A4B
    config = config_dict(tiny_checkpoint, "dense", hidden_size=2816, num_hidden_layers=30)
    assert detect(config, table).preset.name == "31B"


def test_unknown_and_unreadable_models_get_no_preset(table, tmp_path):
    llama = {"architectures": ["LlamaForCausalLM"], "hidden_size": 4096}
    found = detect(llama, table)
    assert found.preset is None and "LlamaForCausalLM" in found.message
    assert "no preset" in found.message
    assert read_model_config(str(tmp_path)) is None  # a directory without config.json
    found = detect(None, table)
    assert found.preset is None and "config.json" in found.message
    assert gemma4_family({"architectures": []}) is None


def test_every_value_has_a_source_and_deferrals_name_real_patches(table):
    patch_names = {p.name for p in PATCHES}
    assert set(table.models) == set(REAL)
    for preset in table.models.values():
        for setting in preset.args + preset.with_draft_model:
            assert setting.source.strip()
        for item in preset.decided_at_startup:
            if item.by.startswith("patch:"):
                assert item.by.removeprefix("patch:") in patch_names, item
        # values a server-argument patch decides (conditionally) are never on the command line
        patch_keys = {d.key for d in preset.decided_at_startup if d.by.startswith("patch:")}
        assert not patch_keys & {s.key for s in preset.args + preset.with_draft_model}


def test_draft_shape_is_a_chain(table):
    for preset in table.models.values():
        values = {s.key: s.value for s in preset.with_draft_model}
        assert values["speculative_eagle_topk"] == 1
        assert values["speculative_num_draft_tokens"] == values["speculative_num_steps"] + 1


def write(tmp_path, mutate):
    data = json.loads(PRESETS_FILE.read_text())
    mutate(data)
    path = tmp_path / "presets.json"
    path.write_text(json.dumps(data))
    return path


def _drop_source(d):
    del d["models"]["31B"]["with_draft_model"]["speculative_num_steps"]["source"]


def _overlap(d):
    d["models"]["31B"]["args"]["chunked_prefill_size"] = {"value": 4096, "source": "x"}


@pytest.mark.parametrize(
    "mutate, needle",
    [
        (_drop_source, "models.31B.with_draft_model.speculative_num_steps"),
        (lambda d: d["models"]["31B"].update(extra=1), "models.31B"),
        (lambda d: d["models"]["31B"].update(family="giant"), "models.31B.family"),
        (lambda d: d["models"]["E2B"].update(hidden_size=-1), "models.E2B.hidden_size"),
        (lambda d: d["family_fallback"].update(moe="31B"), "family_fallback.moe"),
        (
            lambda d: d["models"]["31B"]["decided_at_startup"]["attention_backend"].update(by="me"),
            "decided_at_startup.attention_backend",
        ),
        (_overlap, "chunked_prefill_size"),
        (lambda d: d.update(schema=2), "schema"),
    ],
)
def test_malformed_files_fail_at_load_naming_the_entry(tmp_path, mutate, needle):
    with pytest.raises(PresetError, match=needle.replace(".", r"\.")):
        load_presets(write(tmp_path, mutate))


def test_unreadable_file_is_a_preset_error(tmp_path):
    bad = tmp_path / "presets.json"
    bad.write_text("{not json")
    with pytest.raises(PresetError, match="cannot read"):
        load_presets(bad)

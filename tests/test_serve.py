"""``gemma4-kernels serve``: argument precedence, dry run, and the launch itself, with
SGLang 0.5.23's real server-argument parser. ``os.execve`` is the only mock."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from gemma4_kernels import serve
from gemma4_kernels.serve import given_arguments, plan_launch, setting_tokens, sglang_parser

REPO = Path(__file__).resolve().parents[1]
DRAFT = ["--speculative-draft-model-path", "/models/gemma-4-assistant"]


@pytest.fixture(scope="module")
def parser():
    return sglang_parser()


def added(plan):
    return {s.key: tokens for s, tokens in plan.added}


def test_given_arguments_sees_aliases_equals_and_abbreviations(parser):
    argv = ["--model", "m", "--tensor-parallel-size=2", "--mem-frac", "0.7"]
    given = given_arguments(parser, argv)
    assert given == {"model_path": "m", "tp_size": 2, "mem_fraction_static": 0.7}
    # the parser is left as it was
    assert parser.parse_args(["--model-path", "m"]).tp_size == 1


def test_every_shipped_preset_value_parses_back_through_sglang(parser):
    from gemma4_kernels.presets import load_presets

    for preset in load_presets().models.values():
        for setting in preset.args + preset.with_draft_model:
            tokens = setting_tokens(parser, setting)
            parsed = parser.parse_args(["--model-path", "m", *tokens])
            assert getattr(parsed, setting.key) == setting.value, (preset.name, setting)


def test_mtp_values_only_with_a_drafter(parser, tiny_checkpoint):
    model = str(tiny_checkpoint("dense"))
    plain = plan_launch(["--model-path", model], parser=parser)
    assert plain.added == [] and plain.argv == ["--model-path", model]
    assert any("no --speculative-draft-model-path" in n for n in plain.notes)
    mtp = plan_launch(["--model-path", model, *DRAFT], parser=parser)
    assert added(mtp) == {
        "speculative_algorithm": ["--speculative-algorithm", "NEXTN"],
        "speculative_num_steps": ["--speculative-num-steps", "3"],
        "speculative_eagle_topk": ["--speculative-eagle-topk", "1"],
        "speculative_num_draft_tokens": ["--speculative-num-draft-tokens", "4"],
    }
    # what SGLang will parse from the effective command line
    parsed = parser.parse_args(mtp.argv)
    assert (parsed.speculative_num_steps, parsed.speculative_num_draft_tokens) == (3, 4)


def test_moe_preset_uses_the_shallow_draft(parser, tiny_checkpoint):
    plan = plan_launch(["--model-path", str(tiny_checkpoint("moe")), *DRAFT], parser=parser)
    parsed = parser.parse_args(plan.argv)
    assert (parsed.speculative_num_steps, parsed.speculative_num_draft_tokens) == (2, 3)


def test_user_values_always_win(parser, tiny_checkpoint):
    model = str(tiny_checkpoint("dense"))
    argv = ["--model-path", model, *DRAFT, "--speculative-algorithm", "EAGLE"]
    argv += ["--speculative-num-steps", "5"]
    plan = plan_launch(argv, parser=parser)
    parsed = parser.parse_args(plan.argv)
    assert parsed.speculative_algorithm == "EAGLE"
    assert parsed.speculative_num_steps == 5
    # a partial user draft shape is not completed with the preset's (inconsistent) values
    assert parsed.speculative_num_draft_tokens is None and parsed.speculative_eagle_topk is None
    assert {s.key for s, _, _ in plan.overridden} == {
        "speculative_algorithm",
        "speculative_num_steps",
        "speculative_eagle_topk",
        "speculative_num_draft_tokens",
    }
    assert plan.argv[: len(argv)] == argv  # the user's tokens, untouched and first


def test_other_speculative_algorithms_get_no_mtp_values(parser, tiny_checkpoint):
    argv = ["--model-path", str(tiny_checkpoint("dense")), *DRAFT]
    plan = plan_launch(argv + ["--speculative-algorithm", "EAGLE3"], parser=parser)
    assert plan.added == []
    assert any("EAGLE3 is not Gemma 4's MTP path" in n for n in plan.notes)


def test_unknown_model_launches_without_preset(parser, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    plan = plan_launch(["--model-path", str(tmp_path), *DRAFT], parser=parser)
    assert plan.detection.preset is None and plan.added == []
    text = serve.format_plan(plan, parser)
    assert "preset: none (architecture LlamaForCausalLM is not a Gemma 4" in text


def test_no_preset_is_plain_sglang(parser, tiny_checkpoint):
    argv = ["--model-path", str(tiny_checkpoint("dense")), *DRAFT]
    plan = plan_launch(argv, use_preset=False, parser=parser)
    assert plan.argv == argv and plan.detection is None
    assert plan.command[1:3] == ["-m", "sglang.launch_server"]


def test_bad_sglang_argument_fails_before_anything(parser, tiny_checkpoint, capsys):
    with pytest.raises(SystemExit) as err:
        plan_launch(["--model-path", str(tiny_checkpoint("dense")), "--tp-size", "two"])
    assert err.value.code == 2
    assert "--tp-size" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        plan_launch([], parser=parser)  # --model-path is required


def test_dry_run_prints_origins_and_does_not_launch(tiny_checkpoint, capsys, monkeypatch):
    monkeypatch.setattr(os, "execve", lambda *a: pytest.fail("dry run must not launch"))
    model = str(tiny_checkpoint("dense"))
    assert serve.main(["--model-path", model, "--tp", "2", *DRAFT, "--dry-run"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "preset: 31B (Gemma 4 dense (31B family) of an unlisted size" in out
    row = next(line for line in lines if line.strip().startswith("--speculative-num-steps 3"))
    assert "preset 31B: seed 002" in row
    row = next(line for line in lines if line.strip().startswith("--tp 2"))
    assert row.rstrip().endswith("user")
    assert any(
        line.strip().startswith("chunked_prefill_size") and "patch dense_chunk_mem" in line
        for line in lines
    )
    command = next(line for line in lines if line.startswith("command: "))
    assert shlex.split(command.removeprefix("command: "))[1:] == [
        "-m",
        "sglang.launch_server",
        "--model-path",
        model,
        "--tp",
        "2",
        *DRAFT,
        "--speculative-algorithm",
        "NEXTN",
        "--speculative-num-steps",
        "3",
        "--speculative-eagle-topk",
        "1",
        "--speculative-num-draft-tokens",
        "4",
    ]


def test_launch_execs_sglang_with_the_plugin_allowed(tiny_checkpoint, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(os, "execve", lambda path, argv, env: calls.append((path, argv, env)))
    monkeypatch.setenv("SGLANG_PLUGINS", "other_plugin")
    model = str(tiny_checkpoint("moe"))
    assert serve.main(["--model-path", model]) == 0
    [(path, argv, env)] = calls
    assert path == sys.executable
    assert argv == [sys.executable, "-m", "sglang.launch_server", "--model-path", model]
    assert env["SGLANG_PLUGINS"] == "other_plugin,gemma4_kernels"
    assert "did not include gemma4_kernels: added" in capsys.readouterr().out


def test_launch_refuses_without_the_installed_plugin(tiny_checkpoint, monkeypatch, capsys):
    monkeypatch.setattr(os, "execve", lambda *a: pytest.fail("must not launch"))
    monkeypatch.setattr(serve, "plugin_installed", lambda: False)
    assert serve.main(["--model-path", str(tiny_checkpoint("dense"))]) == 2
    assert "plugin is not installed" in capsys.readouterr().err


def test_launch_env_keeps_an_allow_list_that_has_us():
    env, note = serve.launch_env({"SGLANG_PLUGINS": "a, gemma4_kernels"})
    assert env["SGLANG_PLUGINS"] == "a, gemma4_kernels" and note is None
    env, note = serve.launch_env({})
    assert "SGLANG_PLUGINS" not in env and note is None


def test_console_script_dry_run(tiny_checkpoint):
    script = Path(sys.executable).parent / "gemma4-kernels"
    proc = subprocess.run(
        [str(script), "serve", "--model-path", str(tiny_checkpoint("e2b")), "--dry-run"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "preset: E4B" in proc.stdout
    assert "command: " in proc.stdout

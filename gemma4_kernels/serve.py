"""``gemma4-kernels serve``: SGLang's server with our plugin and the model's preset.

``gemma4-kernels serve --model-path M [SGLang server arguments] [--dry-run] [--no-preset]``

1. The SGLang arguments are parsed with SGLang 0.5.23's own parser (so typos fail here,
   with SGLang's message) and the ones the user gave are recorded, however spelled
   (aliases, ``--flag=value``, abbreviations).
2. The model's ``config.json`` selects a preset (``gemma4_kernels.presets``); each preset
   value is added only when the user did not give that argument — user values always win.
   Speculative (MTP) values only when the user gives ``--speculative-draft-model-path``.
3. The effective arguments are printed with their origin (user / preset + source note),
   then what the server decides itself (our server-argument patches, SGLang defaults).
4. Unless ``--dry-run``: ``exec python -m sglang.launch_server <arguments>``. SGLang's
   plugin loader runs our ``sglang.srt.plugins`` entry point in every process it starts,
   so the patches are active everywhere; ``SGLANG_PLUGINS``, if the user set it, gets
   ``gemma4_kernels`` added.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from gemma4_kernels.presets import (
    Deferred,
    Detection,
    PresetError,
    PresetTable,
    Setting,
    detect,
    load_presets,
    read_model_config,
)

LAUNCH_MODULE = "sglang.launch_server"
PLUGIN_GROUP = "sglang.srt.plugins"
PLUGIN_NAME = "gemma4_kernels"
# Algorithms SGLang 0.5.23 turns into FROZEN_KV_MTP for a Gemma 4 assistant drafter.
MTP_ALGORITHMS = ("NEXTN", "EAGLE")
# One draft shape: SGLang checks them together (a chain draft has num_steps + 1 tokens),
# so a user who sets any of them gets none of the preset's.
DRAFT_SHAPE = ("speculative_num_steps", "speculative_eagle_topk", "speculative_num_draft_tokens")
USAGE = "gemma4-kernels serve --model-path PATH [SGLang server arguments] [--dry-run] [--no-preset]"
_UNSET = object()


def sglang_parser() -> argparse.ArgumentParser:
    """SGLang 0.5.23's server-argument parser (the one ``sglang.launch_server`` uses)."""
    from sglang.srt.server_args import ServerArgs

    parser = argparse.ArgumentParser(prog="gemma4-kernels serve", usage=USAGE)
    ServerArgs.add_cli_args(parser)
    return parser


def given_arguments(parser: argparse.ArgumentParser, argv: Sequence[str]) -> dict[str, Any]:
    """``dest -> value`` of every argument present in ``argv`` (SystemExit on a bad one)."""
    defaults = {a.dest: a.default for a in parser._actions}
    try:
        parser.set_defaults(**{dest: _UNSET for dest in defaults})
        namespace = parser.parse_args(list(argv))
    finally:
        parser.set_defaults(**defaults)
    return {k: v for k, v in vars(namespace).items() if v is not _UNSET}


def _action_for(parser: argparse.ArgumentParser, key: str) -> argparse.Action:
    for action in parser._actions:
        if action.dest == key and action.option_strings:
            return action
    raise PresetError(f"preset argument {key!r} is not an SGLang server argument")


def setting_tokens(parser: argparse.ArgumentParser, setting: Setting) -> list[str]:
    """Command-line tokens for a preset value, checked against SGLang's parser."""
    action = _action_for(parser, setting.key)
    flag = next(
        (s for s in action.option_strings if s == "--" + setting.key.replace("_", "-")),
        action.option_strings[0],
    )
    if action.nargs == 0:  # store_true / store_false style switch
        if setting.value is not True or action.const is not True:
            raise PresetError(f"preset argument {setting.key!r}: a switch can only be set to true")
        return [flag]
    text = str(setting.value)
    if action.choices is not None and text not in action.choices:
        raise PresetError(
            f"preset argument {setting.key!r}: {text!r} is not one of {list(action.choices)}"
        )
    return [flag, text]


@dataclass
class LaunchPlan:
    user_args: list[str]
    model_path: str
    detection: Detection | None  # None: --no-preset
    added: list[tuple[Setting, list[str]]] = field(default_factory=list)
    # preset values not used because of what the user gave: (value, tokens, why)
    overridden: list[tuple[Setting, list[str], str]] = field(default_factory=list)
    deferred: list[tuple[Deferred, bool]] = field(default_factory=list)  # (item, user set it)
    notes: list[str] = field(default_factory=list)

    @property
    def argv(self) -> list[str]:
        return self.user_args + [t for _, tokens in self.added for t in tokens]

    @property
    def command(self) -> list[str]:
        return [sys.executable, "-m", LAUNCH_MODULE, *self.argv]


def plan_launch(
    argv: Sequence[str],
    *,
    use_preset: bool = True,
    table: PresetTable | None = None,
    read_config: Callable[[str], dict | None] = read_model_config,
    parser: argparse.ArgumentParser | None = None,
) -> LaunchPlan:
    """What ``serve`` would launch for ``argv`` (the SGLang arguments), and why."""
    parser = parser or sglang_parser()
    given = given_arguments(parser, argv)
    plan = LaunchPlan(list(argv), str(given["model_path"]), None)
    if not use_preset:
        plan.notes.append("presets off (--no-preset): plain SGLang plus the gemma4-kernels plugin")
        return plan
    table = table or load_presets()
    plan.detection = detect(read_config(plan.model_path), table)
    preset = plan.detection.preset
    if preset is None:
        return plan

    settings = list(preset.args)
    if "speculative_draft_model_path" in given:
        algorithm = str(given.get("speculative_algorithm", "NEXTN")).upper()
        if algorithm in MTP_ALGORITHMS:
            settings += preset.with_draft_model
        else:
            plan.notes.append(
                f"--speculative-algorithm {algorithm} is not Gemma 4's MTP path "
                f"({'/'.join(MTP_ALGORITHMS)}): the preset's speculative values are not used"
            )
    elif preset.with_draft_model:
        plan.notes.append(
            "no --speculative-draft-model-path: MTP off (the preset's speculative values "
            "apply when you give a Gemma 4 assistant drafter)"
        )
    user_shape = [k for k in DRAFT_SHAPE if k in given]
    for setting in settings:
        tokens = setting_tokens(parser, setting)
        if setting.key in given:
            plan.overridden.append((setting, tokens, "you set it"))
        elif setting.key in DRAFT_SHAPE and user_shape:
            why = f"you set {', '.join(user_shape)}: the draft shape is yours"
            plan.overridden.append((setting, tokens, why))
        else:
            plan.added.append((setting, tokens))
    plan.deferred = [(item, item.key in given) for item in preset.decided_at_startup]
    return plan


def _user_groups(parser: argparse.ArgumentParser, argv: Sequence[str]) -> list[list[str]]:
    """The user's tokens grouped per option (an option and the values after it)."""
    groups: list[list[str]] = []
    for token in argv:
        is_option = token.startswith("--") or token.split("=")[0] in parser._option_string_actions
        if is_option or not groups:
            groups.append([token])
        else:
            groups[-1].append(token)
    return groups


def _decider(by: str) -> str:
    return "SGLang's default" if by == "sglang" else by.replace("patch:", "patch ")


def format_plan(plan: LaunchPlan, parser: argparse.ArgumentParser | None = None) -> str:
    parser = parser or sglang_parser()
    lines = ["gemma4-kernels serve", f"model: {plan.model_path}"]
    if plan.detection is None:
        lines.append("preset: off (--no-preset)")
    elif plan.detection.preset is None:
        lines.append(f"preset: none ({plan.detection.message})")
    else:
        lines.append(f"preset: {plan.detection.preset.name} ({plan.detection.message})")

    rows = [(shlex.join(g), "user") for g in _user_groups(parser, plan.user_args)]
    name = plan.detection.preset.name if plan.detection and plan.detection.preset else ""
    rows += [(shlex.join(t), f"preset {name}: {s.source}") for s, t in plan.added]
    width = max(len(r[0]) for r in rows)
    lines.append("\neffective arguments:")
    lines += [f"  {arg.ljust(width)}  {origin}" for arg, origin in rows]
    if plan.overridden:
        lines.append("\npreset values not used (your arguments win):")
        width = max(len(shlex.join(t)) for _, t, _ in plan.overridden)
        lines += [f"  {shlex.join(t).ljust(width)}  {why}" for _, t, why in plan.overridden]
    if plan.deferred:
        lines.append("\ndecided inside the server, not on the command line:")
        width = max(len(item.key) for item, _ in plan.deferred)
        for item, user_set in plan.deferred:
            who = "you set it" if user_set else _decider(item.by)
            lines.append(f"  {item.key.ljust(width)}  {who}: {item.source}")
    lines += [f"\nnote: {n}" for n in plan.notes]
    lines.append(
        f"\nplugin: {PLUGIN_NAME} ({PLUGIN_GROUP} entry point) installs the patches in "
        "every SGLang process"
    )
    lines.append(f"command: {shlex.join(plan.command)}")
    return "\n".join(lines)


def plugin_installed() -> bool:
    from importlib.metadata import entry_points

    return any(ep.name == PLUGIN_NAME for ep in entry_points(group=PLUGIN_GROUP))


def launch_env(environ: dict[str, str]) -> tuple[dict[str, str], str | None]:
    """The server's environment: SGLang's plugin allow-list, if set, includes ours."""
    env = dict(environ)
    allowed = env.get("SGLANG_PLUGINS")
    if allowed is None:
        return env, None
    names = [n.strip() for n in allowed.split(",") if n.strip()]
    if PLUGIN_NAME in names:
        return env, None
    env["SGLANG_PLUGINS"] = ",".join(names + [PLUGIN_NAME])
    return env, f"SGLANG_PLUGINS={allowed!r} did not include {PLUGIN_NAME}: added"


def main(argv: Sequence[str]) -> int:
    ours = argparse.ArgumentParser(
        prog="gemma4-kernels serve", usage=USAGE, add_help=False, allow_abbrev=False
    )
    ours.add_argument("--dry-run", action="store_true", help="print the launch and exit")
    ours.add_argument("--no-preset", action="store_true", help="plain SGLang plus the plugin")
    ours.add_argument("-h", "--help", action="store_true", help="this help")
    options, rest = ours.parse_known_args(list(argv))
    if options.help:
        ours.print_help()
        print(
            "\nEvery other argument is SGLang's (python -m sglang.launch_server --help); "
            "arguments you give always win over the preset."
        )
        return 0

    parser = sglang_parser()
    plan = plan_launch(rest, use_preset=not options.no_preset, parser=parser)
    print(format_plan(plan, parser), flush=True)
    if options.dry_run:
        return 0
    if not plugin_installed():
        print(
            f"error: the {PLUGIN_NAME} plugin is not installed as a package (no "
            f"{PLUGIN_GROUP} entry point), so SGLang's processes would run without the "
            "patches. Install it (pip install gemma4-kernels, or pip install -e . in a "
            "checkout) and run again.",
            file=sys.stderr,
        )
        return 2
    env, note = launch_env(dict(os.environ))
    if note:
        print(f"note: {note}", flush=True)
    os.execve(sys.executable, plan.command, env)
    return 0  # not reached: exec replaced this process

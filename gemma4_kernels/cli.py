"""``gemma4-kernels`` / ``python -m gemma4_kernels``: doctor, status, demo, serve."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

PATCH_COLUMNS = ("name", "state", "default", "parallel", "target", "reason")


def format_table(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """Left-aligned text table; every cell is ``str()`` of the row value."""
    cells = [[str(row.get(col, "")) for col in columns] for row in rows]
    widths = [max([len(col)] + [len(r[i]) for r in cells]) for i, col in enumerate(columns)]
    lines = ["  ".join(col.ljust(w) for col, w in zip(columns, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines)


def patch_rows() -> list[dict]:
    """Install in this process (that is what SGLang's processes do) and report."""
    from gemma4_kernels import install

    return install()


def display_rows(rows: Sequence[dict]) -> list[dict]:
    """Rows for the text table: short targets, on/off defaults."""
    shown = []
    for row in rows:
        row = dict(row)
        row["default"] = "on" if row["default_on"] else "off"
        row["target"] = row["target"].replace("sglang.srt.", "")
        shown.append(row)
    return shown


def cmd_doctor(args: argparse.Namespace) -> int:
    from gemma4_kernels.env_report import collect, format_report

    report = collect()
    rows = patch_rows()
    if args.json:
        print(json.dumps({"environment": report, "patches": rows}, indent=2))
        return 0
    print("gemma4-kernels doctor\n")
    print(format_report(report))
    print("\npatches (installed into this process, as SGLang's plugin loader would):\n")
    print(format_table(display_rows(rows), PATCH_COLUMNS))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    rows = patch_rows()
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(format_table(display_rows(rows), PATCH_COLUMNS))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    import os

    import torch

    # Without a GPU the model section runs Triton kernels in the interpreter, which
    # must be chosen before triton is first imported.
    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
    from gemma4_kernels.demo import run_demo

    return run_demo(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gemma4-kernels", description="Gemma 4 kernels and SGLang patches"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log patch decisions")
    sub = parser.add_subparsers(dest="command", required=True)
    doctor = sub.add_parser("doctor", help="versions, device and every patch's state")
    doctor.add_argument("--json", action="store_true", help="machine-readable output")
    doctor.set_defaults(func=cmd_doctor)
    status = sub.add_parser("status", help="every patch's state and reason")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=cmd_status)
    demo = sub.add_parser("demo", help="doctor, then stock vs patched on tiny Gemma 4 models")
    demo.set_defaults(func=cmd_demo)
    # serve's own options and every SGLang argument are parsed by gemma4_kernels.serve.
    serve = sub.add_parser(
        "serve",
        add_help=False,
        help="launch SGLang's server with the plugin and the model's preset (--help for more)",
    )
    serve.set_defaults(func=None)
    # bench's options are parsed by microbench.bench (same pass-through as serve).
    bench = sub.add_parser(
        "bench", add_help=False, help="every fused op and shape: CSV + JSON (--help for more)"
    )
    bench.set_defaults(func=None)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "serve":
        from gemma4_kernels.serve import main as serve_main

        # Everything after "serve", in order, untouched (SGLang's parser sees it as typed).
        return serve_main(argv[argv.index("serve") + 1 :])
    if args.command == "bench":
        from microbench.bench import main as bench_main

        return bench_main(argv[argv.index("bench") + 1 :])
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    return args.func(args)

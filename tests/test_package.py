"""Packaging: import boundaries, entry points, the two install spellings."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_python(code: str, **env) -> subprocess.CompletedProcess:
    import os

    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, **env},
        timeout=300,
    )


def test_import_does_not_import_sglang():
    code = (
        "import sys, gemma4_kernels, gemma4_kernels.ops, sglang_patches, sglang_patches.registry\n"
        "bad = sorted(m for m in sys.modules if m == 'sglang' or m.startswith('sglang.'))\n"
        "assert not bad, bad\n"
    )
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr


def test_plugin_entry_point_is_registered():
    eps = importlib.metadata.entry_points(group="sglang.srt.plugins")
    ours = [ep for ep in eps if ep.name == "gemma4_kernels"]
    assert len(ours) == 1 and ours[0].value == "gemma4_kernels.plugin:load"
    assert ours[0].dist.name == "gemma4-kernels"


def test_console_script_is_registered():
    scripts = importlib.metadata.entry_points(group="console_scripts")
    assert any(
        ep.name == "gemma4-kernels" and ep.value == "gemma4_kernels.cli:main" for ep in scripts
    )


def test_import_install_installs_and_install_stays_callable():
    code = (
        # expectations first: a check() after install may see our own fix as upstream's
        "from tests.helpers import default_patch_states\n"
        "expected = default_patch_states()\n"
        "import gemma4_kernels.install\n"
        "import gemma4_kernels\n"
        "states = {r['name']: r['state'] for r in gemma4_kernels.status()}\n"
        "assert states == expected, states\n"
        "again = gemma4_kernels.install()\n"  # the module is callable; twice = once
        "assert [r['state'] for r in again] == list(states.values())\n"
        "gemma4_kernels.revert()\n"
        "after = {r['name']: r['state'] for r in gemma4_kernels.status()}\n"
        "assert after == {k: 'pending' if v == 'applied' else v for k, v in expected.items()}\n"
    )
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_strict_refusal_stops_the_plugin_loader():
    """load_plugins() swallows plugin exceptions; strict mode must still stop the process."""
    code = (
        "import sglang_patches.manager as m\n"
        "m.sglang_version = lambda: '9.9.9'\n"
        "import sglang.srt.plugins as p\n"
        "p.load_plugins()\n"
        "print('STARTED')\n"
    )
    proc = run_python(code, GEMMA4_KERNELS_STRICT="1")
    assert proc.returncode != 0
    assert "STARTED" not in proc.stdout
    assert "strict mode" in proc.stderr and "9.9.9" in proc.stderr

#!/usr/bin/env bash
# Create .venv at the repo root with the package (editable, test extra) and the
# real SGLang 0.5.23 with its dependencies (torch 2.14.1, triton 3.8.0).
# Works on a machine with no GPU. Idempotent: when pyproject.toml and this
# script are unchanged since the last successful run, it only re-checks imports.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
venv="$repo/.venv"
stamp="$venv/.gemma4-kernels-setup"
python="${PYTHON:-python3}"

want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)"

if [[ -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    if "$venv/bin/python" -c "import sglang, gemma4_kernels, sglang_patches, pytest, transformers" 2>/dev/null; then
        echo "setup: .venv is up to date"
        exit 0
    fi
    echo "setup: .venv is stamped but imports fail; reinstalling"
fi

if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
    echo "setup: need Python >= 3.10, got $("$python" --version 2>&1)" >&2
    exit 1
fi

if [[ ! -x "$venv/bin/python" ]]; then
    echo "setup: creating $venv"
    "$python" -m venv "$venv"
fi

export PIP_DISABLE_PIP_VERSION_CHECK=1
start=$SECONDS
# sglang==0.5.23 pins torch==2.14.1, which pins triton~=3.8.0; pip takes the
# torch wheel from the local wheel cache where one exists, else from PyPI.
"$venv/bin/python" -m pip install --quiet -e ".[test]"
"$venv/bin/python" -c "import sglang, gemma4_kernels, sglang_patches, pytest, transformers"
echo "$want" > "$stamp"
echo "setup: done in $((SECONDS - start)) s ($("$venv/bin/python" -c 'import sglang, torch, triton; print(f"sglang {sglang.__version__}, torch {torch.__version__}, triton {triton.__version__}")'))"

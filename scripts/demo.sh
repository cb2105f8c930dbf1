#!/usr/bin/env bash
# The main job: `python -m gemma4_kernels demo` (doctor, then stock vs patched
# on tiny Gemma 4 models). Runs on CPU; uses the GPU when one is present.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
bash scripts/setup.sh
exec "$repo/.venv/bin/python" -m gemma4_kernels demo "$@"

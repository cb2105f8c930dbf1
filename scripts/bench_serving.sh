#!/usr/bin/env bash
# End-to-end serving benchmark: SGLang with and without gemma4-kernels on one model.
#
#   scripts/bench_serving.sh --model-path PATH [--tp N] [--num-prompts N] [--port P]
#                            [--max-concurrency N] [--workloads IN/OUT,...] [--out DIR]
#                            [-- extra server args]
#
# For each variant (stock: GEMMA4_KERNELS_DISABLE=1; patched: the plugin as installed)
# it launches `python -m sglang.launch_server`, waits for /health, runs
# `python -m sglang.benchmark.serving` on random prompts for each workload (default: the
# seed's 3000/100, 1000/1000, 8000/1000 and 7000/10 for prefill), stops the server, and
# writes one JSONL per run plus comparison.md and comparison.json (output throughput,
# median TTFT, median TPOT). Same seed and prompts for both variants.
# Needs a GPU; refuses clearly without one or without a model path.
set -euo pipefail

usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "bench_serving: $1" >&2; exit "${2:-2}"; }

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-$repo/.venv/bin/python}"
model="" tp=1 prompts=200 port=30123 concurrency=""
workloads="3000/100,1000/1000,8000/1000,7000/10"
out="$repo/microbench/results/serving-$(date +%Y-%m-%d)"
extra=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --model-path) model="${2:-}"; shift 2 || die "--model-path needs a value" ;;
        --tp) tp="${2:-}"; shift 2 || die "--tp needs a value" ;;
        --num-prompts) prompts="${2:-}"; shift 2 || die "--num-prompts needs a value" ;;
        --port) port="${2:-}"; shift 2 || die "--port needs a value" ;;
        --max-concurrency) concurrency="${2:-}"; shift 2 || die "--max-concurrency needs a value" ;;
        --workloads) workloads="${2:-}"; shift 2 || die "--workloads needs a value" ;;
        --out) out="${2:-}"; shift 2 || die "--out needs a value" ;;
        -h|--help) usage; exit 0 ;;
        --) shift; extra=("$@"); break ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done

[[ -n "$model" ]] || die "--model-path is required (a local Gemma 4 checkpoint directory or hub id)"
for value in "$tp" "$prompts" "$port" ${concurrency:+"$concurrency"}; do
    [[ "$value" =~ ^[1-9][0-9]*$ ]] || die "--tp, --num-prompts, --port and --max-concurrency take positive integers, got '$value'"
done
bench_extra=()
[[ -n "$concurrency" ]] && bench_extra=(--max-concurrency "$concurrency")
IFS=',' read -r -a pairs <<< "$workloads"
for pair in "${pairs[@]}"; do
    [[ "$pair" =~ ^[1-9][0-9]*/[1-9][0-9]*$ ]] || die "--workloads takes IN/OUT token pairs like 3000/100, got '$pair'"
done
[[ -x "$python" ]] || die "no Python at $python (run scripts/setup.sh or set PYTHON)"
"$python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
    || die "no GPU visible to torch: this benchmark serves a real model and needs one" 3

mkdir -p "$out"
server_pid=""
stop_server() { [[ -n "$server_pid" ]] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null; server_pid=""; }
trap stop_server EXIT

for variant in stock patched; do
    env_disable=0; [[ "$variant" == stock ]] && env_disable=1
    echo "bench_serving: starting the $variant server (GEMMA4_KERNELS_DISABLE=$env_disable)"
    GEMMA4_KERNELS_DISABLE=$env_disable "$python" -m sglang.launch_server --model-path "$model" \
        --tp "$tp" --port "$port" "${extra[@]}" > "$out/$variant-server.log" 2>&1 &
    server_pid=$!
    for _ in $(seq 600); do
        curl -sf "http://127.0.0.1:$port/health" > /dev/null && break
        kill -0 "$server_pid" 2>/dev/null || die "the $variant server exited; see $out/$variant-server.log" 4
        sleep 1
    done
    curl -sf "http://127.0.0.1:$port/health" > /dev/null || die "the $variant server did not become healthy in 600 s" 4
    for pair in "${pairs[@]}"; do
        "$python" -m sglang.benchmark.serving --backend sglang --port "$port" \
            --dataset-name random --random-input-len "${pair%/*}" --random-output-len "${pair#*/}" \
            --num-prompts "$prompts" --seed 1 "${bench_extra[@]}" \
            --output-file "$out/$variant-${pair/\//x}.jsonl"
    done
    stop_server
done

"$python" - "$out" "${pairs[@]}" <<'PY'
import json, sys
from pathlib import Path
out, pairs = Path(sys.argv[1]), sys.argv[2:]
keys = ("output_throughput", "median_ttft_ms", "median_tpot_ms")
lines = ["| workload | metric | stock | patched | patched / stock |", "|---|---|---|---|---|"]
table = []
for pair in pairs:
    runs = {v: json.loads((out / f"{v}-{pair.replace('/', 'x')}.jsonl").read_text().splitlines()[-1]) for v in ("stock", "patched")}
    for key in keys:
        s, p = runs["stock"][key], runs["patched"][key]
        lines.append(f"| {pair} | {key} | {s:.2f} | {p:.2f} | {p / s:.3f} |")
        table.append({"workload": pair, "metric": key, "stock": s, "patched": p})
(out / "comparison.md").write_text("\n".join(lines) + "\n")
(out / "comparison.json").write_text(json.dumps(table, indent=1) + "\n")
print("\n".join(lines))
PY
echo "bench_serving: wrote $out"

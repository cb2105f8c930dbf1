"""Prefill throughput of E2B / E4B with and without YOCO fast prefill, on a GPU.

Seed 002's workload: 30 prompts of 7000 random tokens, 1 output token each (prefill
only), radix cache off. Each mode runs in its own process (the plugin decides at
startup) through SGLang's offline ``Engine`` on a random-weight checkpoint built from
the model's config (``layer_kernels/ple_*.json``; ``load_format=dummy``, no hub): stock
= ``SGLANG_GEMMA4_YOCO=0``, patched = the default. Reports wall seconds and input
tokens/s per mode and the speedup (CSV). Logits are not compared here (random weights);
exactness is the CPU tests' job.

    python -m microbench.bench_yoco [--models E2B,E4B] [--prompts 30 --prompt-len 7000]
    python -m microbench.bench_yoco --dry-run      # CPU: writes the configs, plans the runs

Without a GPU it refuses (exit 2) unless ``--dry-run``. Not run on a GPU yet.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from microbench.layer_model import load
from microbench.yoco_model import MODELS

MODES = {"stock": {"SGLANG_GEMMA4_YOCO": "0"}, "yoco": {"SGLANG_GEMMA4_YOCO": "1"}}

# Run inside the child process: one Engine, the whole workload, wall time as JSON.
_CHILD = """
import json, sys, time, random
import sglang as sgl
model_dir = sys.argv[1]
prompts, prompt_len, tp = (int(a) for a in sys.argv[2:5])
rng = random.Random(0)
ids = [[rng.randrange(10, 200000) for _ in range(prompt_len)] for _ in range(prompts)]
engine = sgl.Engine(model_path=model_dir, load_format="dummy", skip_tokenizer_init=True,
                    disable_radix_cache=True, tp_size=tp, context_length=prompt_len + 16)
params = {"max_new_tokens": 1, "temperature": 0}
engine.generate(input_ids=ids[:2], sampling_params=params)  # warm-up
start = time.perf_counter()
engine.generate(input_ids=ids, sampling_params=params)
print("RESULT " + json.dumps({"seconds": time.perf_counter() - start}))
engine.shutdown()
"""


def write_checkpoint_config(model: str, directory: Path) -> Path:
    """config.json of a full-size text-only Gemma 4 (random weights are loaded as dummy)."""
    from transformers import Gemma4Config

    text = dict(load(model)["config"])
    config = Gemma4Config(text_config=text, vision_config=None)
    config.architectures = ["Gemma4ForCausalLM"]
    directory.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(directory)
    return directory


def run_mode(model_dir: Path, mode: str, prompts: int, prompt_len: int, tp: int) -> float:
    env = {**os.environ, **MODES[mode]}
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(model_dir), str(prompts), str(prompt_len), str(tp)],
        capture_output=True, text=True, env=env, timeout=3600,
    )  # fmt: skip
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{mode} run failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])["seconds"]


def plan(models: list[str], prompts: int, prompt_len: int, tp: int) -> list[dict[str, Any]]:
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}; choose from {sorted(MODELS)}")
    if prompts < 1 or prompt_len < 2 or tp < 1:
        raise ValueError("prompts >= 1, prompt_len >= 2 and tp >= 1 are required")
    return [
        {"model": m, "mode": mode, "prompts": prompts, "prompt_len": prompt_len, "tp": tp}
        for m in models
        for mode in MODES
    ]


def main(argv: list[str] | None = None) -> int:
    import torch

    from microbench.common import report

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="E2B,E4B")
    parser.add_argument("--prompts", type=int, default=30)
    parser.add_argument("--prompt-len", type=int, default=7000)
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--dry-run", action="store_true", help="configs + plan, no runs")
    parser.add_argument("--csv", default=None)
    args = parser.parse_args(argv)
    rows = plan([m for m in args.models.split(",") if m], args.prompts, args.prompt_len, args.tp)
    if not args.dry_run and not torch.cuda.is_available():
        print("bench_yoco: needs a CUDA GPU (SGLang Engine); on CPU use --dry-run", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="gemma4-yoco-") as tmp:
        for row in rows:
            model_dir = write_checkpoint_config(row["model"], Path(tmp) / row["model"])
            if args.dry_run:
                row["config_layers"] = json.loads((model_dir / "config.json").read_text())[
                    "text_config"
                ]["num_hidden_layers"]
                continue
            seconds = run_mode(model_dir, row["mode"], args.prompts, args.prompt_len, args.tp)
            row["seconds"] = round(seconds, 3)
            row["input_tok_per_s"] = round(args.prompts * args.prompt_len / seconds, 1)
    if not args.dry_run:
        stock = {r["model"]: r["seconds"] for r in rows if r["mode"] == "stock"}
        for row in rows:
            row["speedup_vs_stock"] = round(stock[row["model"]] / row["seconds"], 3)
    kind = "dry run: configs written, no runs" if args.dry_run else "GPU prefill throughput"
    report(rows, "yoco-prefill", kind, args.csv)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Delivery to every SGLang process: a child started with multiprocessing *spawn* (how
SGLang starts scheduler ranks) calls SGLang's own ``load_plugins()`` and reports the
patches it got, through ``gemma4_kernels.status()``."""

from __future__ import annotations

import multiprocessing as mp


def _child(queue, env: dict) -> None:
    import os

    os.environ.update(env)
    try:
        import sglang.srt.plugins

        sglang.srt.plugins.load_plugins()
        import gemma4_kernels

        queue.put(("ok", gemma4_kernels.status()))
    except BaseException as exc:  # report, never hang the parent
        queue.put(("error", repr(exc)))


def run_child(env: dict | None = None):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(queue, env or {}))
    proc.start()
    try:
        kind, payload = queue.get(timeout=240)
    finally:
        proc.join(timeout=60)
    assert kind == "ok", payload
    return {row["name"]: row for row in payload}


def test_spawned_child_gets_the_patches_through_the_entry_point():
    rows = run_child()
    for name in ("swa_ratio_moe", "dense_chunk_mem", "prefill_graph_gate", "text_only_default"):
        assert rows[name]["state"] == "applied", rows[name]


def test_spawned_child_honours_the_kill_switch():
    rows = run_child({"GEMMA4_KERNELS_DISABLE": "1"})
    assert {row["state"] for row in rows.values()} == {"disabled"}

"""Entry point of SGLang's ``sglang.srt.plugins`` group.

SGLang's ``load_plugins()`` calls :func:`load` in every process that loads plugins
(main/tokenizer, each scheduler rank, detokenizer, DP controller). Multi-tokenizer
workers do not call ``load_plugins``; none of our patches acts there (server
arguments are resolved in the main process and travel resolved; model and kernel
patches act in the scheduler ranks).
"""

from __future__ import annotations

import logging

logger = logging.getLogger("gemma4_kernels")


def load() -> None:
    """Install the patches. Under ``GEMMA4_KERNELS_STRICT=1`` a refusal stops the process.

    ``load_plugins`` logs and swallows ordinary exceptions from plugins, so a strict
    refusal is raised as ``SystemExit`` to actually stop SGLang from starting.
    """
    from sglang_patches.manager import PatchError, install

    try:
        install()
    except PatchError as exc:
        logger.error("gemma4-kernels: %s", exc)
        raise SystemExit(f"gemma4-kernels strict mode: {exc}") from exc

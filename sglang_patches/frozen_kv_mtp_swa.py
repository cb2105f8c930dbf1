"""frozen_kv_mtp_swa — seed 002's "Patch E", reported ``upstream`` on SGLang 0.5.23.

The fork fixed attention backends that cached *non-SWA* pool state for the FROZEN_KV_MTP
draft worker while its pool view was swapped to the target's SWA pool (trtllm_mha read
out-of-range SWA pages and crashed). SGLang 0.5.23 resolves the SWA pool differently
(map §8): ``TRTLLMHAAttnBackend`` / ``FlashInferAttnBackend._resolve_swa_kv_pool`` return
the shared allocator's SWA pool for a FROZEN_KV_MTP draft — the very object the
``frozen_kv_target_view`` / ``target_kv_pool_view`` swaps put in — and trtllm_mha's
``init_cuda_graph_state`` allocates the SWA page tables from it before capture. The
regression tests (tests/patches/test_frozen_kv_mtp_swa.py) pin that on the real classes.

Triton keeps ``use_sliding_window_kv_pool`` from the draft's own (dense) pool, so that
flag is stale while the view is swapped; it gates only KV *writes* and their graph
buffer, and the frozen draft writes no KV (``bind_frozen_kv_context`` marks every
assistant layer KV-shared); reads go through the live pool's own mapping. Pinned too.

Nothing is patched: ``check()`` reports ``upstream`` while the code we verified is
unchanged, and skips loudly (re-verify) when it changes.
"""

from __future__ import annotations

from sglang_patches.base import CheckResult, Patch, Pin, UndoLog, verify_pins

ATTN = "sglang.srt.layers.attention"
SPEC = "sglang.srt.speculative.frozen_kv_mtp_utils"


class FrozenKvMtpSwa(Patch):
    name = "frozen_kv_mtp_swa"
    purpose = (
        "FROZEN_KV_MTP draft: attention backends keep the target's SWA pool and page "
        "tables while reading it (seed 002 Patch E; upstream in 0.5.23)"
    )
    targets = (
        f"{ATTN}.trtllm_mha_backend.TRTLLMHAAttnBackend._resolve_swa_kv_pool",
        f"{ATTN}.flashinfer_backend.FlashInferAttnBackend._resolve_swa_kv_pool",
        f"{SPEC}.frozen_kv_target_view",
    )

    pins = (
        Pin(
            f"{ATTN}.trtllm_mha_backend.TRTLLMHAAttnBackend._resolve_swa_kv_pool",
            "527991746628b171",
        ),
        Pin(
            f"{ATTN}.flashinfer_backend.FlashInferAttnBackend._resolve_swa_kv_pool",
            "9225ad47e23a76e2",
        ),
        Pin(
            f"{ATTN}.trtllm_mha_backend.TRTLLMHAAttnBackend._alloc_swa_page_table",
            "bf3899928e8b7ae5",
        ),
        Pin(
            f"{ATTN}.trtllm_mha_backend.TRTLLMHAAttnBackend.init_cuda_graph_state",
            "61461405ed7b79f2",
        ),
        Pin(f"{SPEC}.frozen_kv_target_view", "460d32f35dffd940"),
        Pin(f"{SPEC}.target_kv_pool_view", "3a5e526d34b4cb52"),
        Pin(
            "sglang.srt.models.gemma4_mtp.Gemma4AssistantForCausalLM.bind_frozen_kv_context",
            "b2bf0737c71b884c",
        ),
    )

    def check(self) -> CheckResult:
        result = verify_pins(self.pins)
        if not result.ok:
            return CheckResult.skip(f"{result.reason}: re-verify the frozen-KV SWA property")
        return CheckResult.fixed_upstream(
            "0.5.23 resolves the draft's SWA pool from the shared allocator (verified by "
            "tests; the code is unchanged)"
        )

    def _apply(self, undo: UndoLog) -> None:
        raise RuntimeError("frozen_kv_mtp_swa patches nothing: check() reports upstream")


PATCH = FrozenKvMtpSwa()

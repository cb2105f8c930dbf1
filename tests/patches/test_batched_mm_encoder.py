"""batched_mm_encoder on SGLang's real tiny Gemma 4 multimodal model (CPU harness):
the vision tower and embedder built and loaded by SGLang, stock per-item loop vs ours."""

from __future__ import annotations

import types

import pytest
import torch

from sglang_patches import batched_mm_encoder

PATCH_PIXELS = 3 * 4 * 4  # tiny vision config: patch_size 4
# fp32 on both sides; only GEMM batch shapes differ, so rounding-level differences
TOL = dict(rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def mm_model(tiny_families):
    from gemma4_kernels.harness.runtime import SGLangCpuRuntime
    from gemma4_kernels.harness.session import patches_installed

    path, _, weights = tiny_families.get("dense")
    with patches_installed([]):  # towers built and loaded (no text-only patches)
        model = SGLangCpuRuntime.get().load(path, weights).model
    assert model.vision_tower is not None
    return model


@pytest.fixture(scope="module")
def stock():
    from sglang.srt.models.gemma4_mm import Gemma4ForConditionalGeneration

    return types.SimpleNamespace(
        image=Gemma4ForConditionalGeneration.__dict__["get_image_feature"],
        video=Gemma4ForConditionalGeneration.__dict__["get_video_feature"],
    )


def image(width, height, patches=16, seed=0):
    """Pre-patchified pixels and (x, y) positions, padded to ``patches`` with -1."""
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randn(patches, PATCH_PIXELS, generator=g)
    positions = torch.full((patches, 2), -1, dtype=torch.long)
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    positions[: width * height] = torch.stack([xs.flatten(), ys.flatten()], -1)
    pixels[width * height :] = 0
    return pixels, positions


def image_item(*images):
    return types.SimpleNamespace(
        feature=torch.stack([p for p, _ in images]),
        image_position_ids=torch.stack([q for _, q in images]),
    )


@pytest.fixture
def tower_calls(mm_model, monkeypatch):
    calls = []
    forward = mm_model.vision_tower.forward

    def counting(pixels, positions):
        calls.append(tuple(pixels.shape))
        return forward(pixels, positions)

    monkeypatch.setattr(mm_model.vision_tower, "forward", counting)
    return calls


def test_mixed_sizes_match_per_item_in_order_with_fewer_tower_calls(
    mm_model, stock, install_only, tower_calls
):
    small = [image(4, 2, patches=8, seed=s) for s in range(3)]  # 8 patches, 2 tokens
    large = [image(4, 4, seed=10 + s) for s in range(3)]  # 16 patches, 4 tokens
    padded = image(2, 2, seed=20)  # 16 patches, 4 valid -> 1 token
    precomputed = torch.randn(3, mm_model.config.text_config.hidden_size)
    items = [
        image_item(small[0]),
        image_item(large[0], padded),
        types.SimpleNamespace(feature=precomputed, image_position_ids=None),
        image_item(small[1], small[2]),
        image_item(large[1]),
        image_item(large[2]),
    ]
    expected = stock.image(mm_model, items)
    stock_calls = len(tower_calls)
    install_only("batched_mm_encoder")
    tower_calls.clear()
    got = mm_model.get_image_feature(items)
    assert got.shape == expected.shape == (2 + 4 + 1 + 3 + 2 + 2 + 4 + 4, precomputed.shape[1])
    torch.testing.assert_close(got, expected, **TOL)
    assert torch.equal(got[7:10], precomputed)  # passed through, in place
    assert stock_calls == 5 and len(tower_calls) == 2  # one per patch-count bucket
    assert sorted(tower_calls) == [(3, 8, PATCH_PIXELS), (4, 16, PATCH_PIXELS)]


def test_patch_budget_chunks_buckets(mm_model, stock, install_only, tower_calls, monkeypatch):
    items = [image_item(image(4, 4, seed=s)) for s in range(5)]
    expected = stock.image(mm_model, items)
    install_only("batched_mm_encoder")
    monkeypatch.setenv("GEMMA4_KERNELS_MM_ENCODER_PATCHES", "32")  # two 16-patch images
    tower_calls.clear()
    torch.testing.assert_close(mm_model.get_image_feature(items), expected, **TOL)
    assert [shape[0] for shape in tower_calls] == [2, 2, 1]
    monkeypatch.setenv("GEMMA4_KERNELS_MM_ENCODER_PATCHES", "0")
    with pytest.raises(ValueError, match="GEMMA4_KERNELS_MM_ENCODER_PATCHES"):
        mm_model.get_image_feature(items)


def test_video_frames_are_batched_across_videos(mm_model, stock, install_only, tower_calls):
    def video(frames, seed):
        parts = [image(4, 4, seed=seed + f) for f in range(frames)]
        return types.SimpleNamespace(
            feature=torch.stack([p for p, _ in parts]).unsqueeze(0),  # [1, frames, P, D]
            video_position_ids=torch.stack([q for _, q in parts]).unsqueeze(0),
        )

    items = [video(2, 0), video(3, 10)]
    expected = stock.video(mm_model, items)
    install_only("batched_mm_encoder")
    tower_calls.clear()
    torch.testing.assert_close(mm_model.get_video_feature(items), expected, **TOL)
    assert tower_calls == [(5, 16, PATCH_PIXELS)]


def test_empty_input_and_missing_positions(mm_model, stock, install_only):
    expected = stock.image(mm_model, [])
    install_only("batched_mm_encoder")
    got = mm_model.get_image_feature([])
    assert got.shape == expected.shape and got.dtype == expected.dtype
    pixels, _ = image(4, 4)
    broken = [types.SimpleNamespace(feature=pixels, image_position_ids=None)]
    with pytest.raises(ValueError, match="has no matching image_position_ids"):
        mm_model.get_image_feature(broken)


def test_revert_restores_the_stock_methods(stock, install_only):
    from sglang.srt.models.gemma4_mm import Gemma4ForConditionalGeneration as Model

    import gemma4_kernels

    install_only("batched_mm_encoder")
    assert Model.__dict__["get_image_feature"] is not stock.image
    gemma4_kernels.revert()
    assert Model.__dict__["get_image_feature"] is stock.image
    assert Model.__dict__["get_video_feature"] is stock.video
    assert batched_mm_encoder.patch_budget() == batched_mm_encoder.DEFAULT_BUDGET

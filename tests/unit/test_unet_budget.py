"""The UNet's share of a memory budget (zoodip.memory_plan.unet_bytes, check_unet) on stand-in models: its weights
and its activations, which grow with the image (the weight check alone let 912 px on SD1.5 pass a budget that its
UNet steps then went over)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from zoodip.errors import ZoodipError
from zoodip.memory_plan import (UNET_ATTENTION_QUERY_CHUNKS, UNET_LARGEST_LAYER_WEIGHTS, check_unet,
                                unet_attention_bytes, unet_bytes)

FACTOR = 8
MIB = 1 << 20


def fake_model(unet_bytes_: int = 820 * MIB) -> SimpleNamespace:
    return SimpleNamespace(vae_scale_factor=FACTOR, weights_bytes=lambda names: unet_bytes_ if names == ("unet",) else 0)


def test_the_estimate_is_the_weights_and_grows_with_the_image():
    model = fake_model()
    sides = [8, 32, 64, 80, 96, 114, 128]
    needs = [unet_bytes(model, side, side) for side in sides]
    assert needs == sorted(needs) and len(set(needs)) == len(needs)
    assert all(need > 820 * MIB for need in needs)
    assert unet_bytes(model, 64, 96) == unet_bytes(model, 96, 64)  # only the positions count
    assert unet_bytes(model, 64, 64) < unet_bytes(model, 64, 65) < unet_bytes(model, 65, 65)
    # The attention grows with the positions' square, the maps with the positions: the activations past the
    # weights and their dequantized copy more than double from 640 to 912 px (1.6x the positions).
    fixed = 820 * MIB + UNET_LARGEST_LAYER_WEIGHTS * 4
    assert unet_bytes(model, 114, 114) - fixed > 2 * (unet_bytes(model, 80, 80) - fixed)


def test_query_chunks_divide_the_attention():
    positions = 114 * 114
    full = unet_attention_bytes(114, 114, 1)
    assert full == 2 * 8 * positions * positions * 4  # scores and softmax, 8 heads, every query at once
    assert unet_attention_bytes(114, 114, UNET_ATTENTION_QUERY_CHUNKS) == 2 * 8 * -(-positions // 32) * positions * 4
    counts = [unet_attention_bytes(114, 114, chunks) for chunks in (1, 2, 8, 32, 128)]
    assert counts == sorted(counts, reverse=True)
    model = fake_model()
    assert unet_bytes(model, 114, 114, chunks=1) - unet_bytes(model, 114, 114) == full - counts[3]


def test_a_small_unets_weight_copy_is_at_most_its_weights_in_fp32():
    tiny = fake_model(2 * MIB)
    assert unet_bytes(tiny, 1, 1) < 2 * MIB + 8 * 2 * MIB + 1 * MIB
    assert unet_bytes(fake_model(), 1, 1) > 820 * MIB + UNET_LARGEST_LAYER_WEIGHTS * 4


def test_a_budget_below_the_unets_need_is_refused_in_one_line_with_the_budget_that_holds():
    model = fake_model()
    need_mb = -(-unet_bytes(model, 114, 114) // MIB)
    assert check_unet(model, 114, 114, need_mb) == unet_bytes(model, 114, 114)
    assert check_unet(model, 114, 114, None) == unet_bytes(model, 114, 114)  # no budget: nothing refused
    with pytest.raises(ZoodipError) as info:
        check_unet(model, 114, 114, need_mb - 1)
    message = str(info.value)
    assert "\n" not in message and f"needs about {need_mb} MB" in message and "912x912" in message
    assert f"memory_budget_mb of {need_mb - 1} MB" in message and "raise the budget" in message

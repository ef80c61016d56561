"""The UNet's share of a memory budget (zoodip.memory_plan.unet_bytes, check_unet) on stand-in models: its weights
and its activations, which grow with the image (the weight check alone let 912 px on SD1.5 pass a budget that its
UNet steps then went over)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from zoodip.errors import ZoodipError
from zoodip.denoising_loss import loss_batched
from zoodip.memory_plan import (UNET_ATTENTION_QUERY_CHUNKS, UNET_LARGEST_LAYER_WEIGHTS, check_encode, check_training,
                                check_unet, text_encoder_bytes, training_bytes, unet_attention_bytes,
                                unet_bytes)

FACTOR = 8
MIB = 1 << 20


def fake_model(unet_bytes_: int = 820 * MIB, text_bytes: int = 0) -> SimpleNamespace:
    sizes = {("unet",): unet_bytes_, ("text_encoder",): text_bytes}
    return SimpleNamespace(vae_scale_factor=FACTOR, weights_bytes=lambda names: sizes.get(tuple(names), 0))


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


def test_a_batch_multiplies_the_activations_not_the_weights():
    model = fake_model()
    one, three = unet_bytes(model, 64, 64), unet_bytes(model, 64, 64, batch=3)
    fixed = 820 * MIB + UNET_LARGEST_LAYER_WEIGHTS * 4
    assert three - fixed == 3 * (one - fixed)
    assert unet_bytes(model, 64, 64, batch=1) == one


def sd15_text(text_bytes: int = 120 * MIB) -> SimpleNamespace:
    model = fake_model(text_bytes=text_bytes)
    model.hidden_size, model.max_length, model.clip_skip_layers = 768, 77, 11  # SD1.x's CLIP ViT-L/14
    return model


def test_the_text_encoder_counts_its_widest_layer_and_each_candidates_states():
    model = sd15_text()
    per_candidate = (12 * 77 * 768 + 2 * 4 * 77 * 768 + 2 * 12 * 77 * 77) * 4  # states, MLP maps, scores + softmax
    assert text_encoder_bytes(model, 1) == 120 * MIB + 4 * 768 * 768 * 4 + per_candidate
    assert text_encoder_bytes(model, 3) - text_encoder_bytes(model, 1) == 2 * per_candidate
    assert text_encoder_bytes(fake_model(text_bytes=120 * MIB), 3) == 120 * MIB  # no width said: its weights
    assert text_encoder_bytes(sd15_text(MIB), 0) == MIB + 8 * MIB  # a tiny encoder's copy: its weights in fp32


def test_training_counts_the_open_text_encoder_and_its_unet_calls_batch():
    """personalize --memory-budget counted the weights alone at its resolution (at 512 px on SD1.5 it accepted 907 MB
    while its steps run the UNet's 512 px activations beside both graphs' weights); now its steps' phase is checked."""
    model = sd15_text()
    assert training_bytes(model, 64, 64, 3) == text_encoder_bytes(model, 3) + unet_bytes(model, 64, 64)
    assert training_bytes(model, 64, 64, 3, batched=True) == text_encoder_bytes(model, 3) + unet_bytes(
        model, 64, 64, batch=3)
    need = check_training(model, 512, 3, False, None)
    assert need == max(training_bytes(model, 64, 64, 3), check_encode(model, 64, 64, None))
    need_mb = -(-need // MIB)
    assert check_training(model, 512, 3, False, need_mb) == need
    with pytest.raises(ZoodipError) as info:
        check_training(model, 512, 3, False, need_mb - 1)
    message = str(info.value)
    assert "\n" not in message and f"resolution=512 needs about {need_mb} MB" in message
    assert f"memory_budget_mb of {need_mb - 1} MB" in message and "lower resolution" in message
    # A batched loss (never under a budget: PersonalizeConfig sets batched=False) runs its 1 + n candidates at once.
    assert check_training(model, 512, 3, True, None) > need


def test_the_photos_encoding_sets_the_floor_where_it_needs_more():
    model = sd15_text()
    assert check_encode(model, 96, 96, None) > training_bytes(model, 96, 96, 3)  # 768 px: the VAE encoder's maps
    with pytest.raises(ZoodipError, match="encoding the photos"):
        check_training(model, 768, 3, False, -(-training_bytes(model, 96, 96, 3) // MIB))


def test_the_loss_batches_its_candidates_where_told_or_for_a_small_unet():
    small = SimpleNamespace(weights_bytes=lambda names: MIB)  # auto_batched: a small UNet batches
    assert loss_batched(small, None) and not loss_batched(small, False) and loss_batched(fake_model(), True)
    assert not loss_batched(fake_model(), None)

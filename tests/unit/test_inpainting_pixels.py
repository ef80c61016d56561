"""Inpainting's pixel-side options: the mask blur, the "only masked" crop region and the paste-back."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from zoodip.errors import ZoodipError
from zoodip.inpainting import InpaintOptions, PasteBack, blur_mask, crop_region, inpainting_views


def _mask(size: tuple[int, int], box: tuple[int, int, int, int], level: int = 255) -> Image.Image:
    array = np.zeros((size[1], size[0]), np.uint8)
    left, top, right, bottom = box
    array[top:bottom, left:right] = level
    return Image.fromarray(array)


def test_crop_region_matches_diffusers_get_crop_region() -> None:
    """Random masks, paddings and target aspects: the same box as diffusers' padding_mask_crop computes."""
    processor = pytest.importorskip("diffusers.image_processor").VaeImageProcessor(do_normalize=False, do_binarize=True)
    rng = np.random.default_rng(0)
    for _ in range(300):
        size = (int(rng.integers(16, 200)), int(rng.integers(16, 200)))
        x0, y0 = int(rng.integers(0, size[0])), int(rng.integers(0, size[1]))
        box = (x0, y0, int(rng.integers(x0 + 1, size[0] + 1)), int(rng.integers(y0 + 1, size[1] + 1)))
        mask = _mask(size, box, level=int(rng.integers(1, 256)))
        target = (int(rng.integers(1, 9)) * 8, int(rng.integers(1, 9)) * 8)
        pad = int(rng.integers(0, 40))
        assert crop_region(mask, target, pad) == processor.get_crop_region(mask, target[0], target[1], pad), (size, box)


def test_crop_region_is_the_padded_box_grown_to_the_aspect_inside_the_image() -> None:
    mask = _mask((100, 80), (40, 30, 50, 40))
    assert crop_region(mask, (64, 64), 5) == (35, 25, 55, 45)  # already square: the box and its padding
    assert crop_region(mask, (128, 64), 5) == (25, 25, 65, 45)  # twice as wide as high
    assert crop_region(_mask((100, 80), (0, 0, 10, 10)), (64, 64), 5) == (0, 0, 15, 15)  # clipped at the corner
    assert crop_region(_mask((100, 80), (0, 0, 10, 10)), (64, 32), 5) == (0, 0, 30, 15)  # grown, moved inside
    assert crop_region(_mask((100, 80), (0, 0, 0, 0)), (64, 64), 5) is None


def test_paste_back_keeps_the_original_where_the_mask_is_black() -> None:
    rng = np.random.default_rng(1)
    original = Image.fromarray(rng.integers(0, 256, (60, 90, 3), dtype=np.uint8))
    generated = Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    mask = _mask((90, 60), (30, 20, 50, 40))
    box = crop_region(mask, (32, 32), 6)
    out = np.asarray(PasteBack(original, mask.crop(box), box)([generated])[0]).astype(int)
    assert out.shape == (60, 90, 3)
    kept = np.asarray(mask) == 0
    assert np.array_equal(out[kept], np.asarray(original).astype(int)[kept])
    left, top, right, bottom = box
    placed = np.asarray(generated.resize((right - left, bottom - top), Image.Resampling.LANCZOS)).astype(int)
    inside = ~kept[top:bottom, left:right]
    assert np.array_equal(out[top:bottom, left:right][inside], placed[inside])


def test_paste_back_blends_through_a_gray_mask_as_diffusers_apply_overlay() -> None:
    processor = pytest.importorskip("diffusers.image_processor").VaeImageProcessor()
    rng = np.random.default_rng(2)
    original = Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    generated = Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    mask = blur_mask(_mask((64, 48), (20, 10, 40, 30)), 4)
    assert 0 < np.asarray(mask).min() < 255 or len(np.unique(np.asarray(mask))) > 2  # gray levels to blend through
    ours = np.asarray(PasteBack(original, mask)([generated])[0]).astype(int)
    theirs = np.asarray(processor.apply_overlay(mask, original, generated)).astype(int)
    assert np.abs(ours - theirs).max() <= 2


def test_blur_softens_the_edge_only_when_asked() -> None:
    mask = _mask((40, 40), (10, 10, 30, 30))
    assert blur_mask(mask, 0) is mask
    assert np.array_equal(np.asarray(blur_mask(mask, np.float64(3))), np.asarray(blur_mask(mask, 3)))  # NumPy numbers
    soft = np.asarray(blur_mask(mask, 3))
    assert 0 < soft[20, 9] < 255 and soft[20, 20] == 255 and soft[0, 0] == 0


def test_views_crop_the_image_and_mask_and_fall_back_to_the_whole_image_for_a_black_mask() -> None:
    picture = Image.new("RGB", (100, 80), (10, 20, 30))
    view, seen, paste = inpainting_views(picture, _mask((50, 40), (20, 15, 25, 20)), InpaintOptions(padding_mask_crop=4),
                                         (32, 32))
    assert paste is not None and paste.box is not None
    left, top, right, bottom = paste.box  # around the mask stretched to (40, 30, 50, 40), 4 px more, square
    assert left <= 36 and top <= 26 and right >= 54 and bottom >= 44 and right - left == bottom - top
    assert view.size == seen.size == (right - left, bottom - top)
    assert paste.mask.size == view.size  # the box's part of the mask, stretched to the image's size first
    view, seen, paste = inpainting_views(picture, _mask((100, 80), (0, 0, 0, 0)), InpaintOptions(padding_mask_crop=4),
                                         (32, 32))
    assert view is picture and paste is not None and paste.box is None  # nothing to redraw: the photo back whole
    assert [im.size for im in paste([Image.new("RGB", (32, 32))])] == [(100, 80)]
    assert np.array_equal(np.asarray(paste([Image.new("RGB", (32, 32))])[0]), np.asarray(picture))


@pytest.mark.parametrize("options, words", [
    (InpaintOptions(mask_blur=-1), "mask_blur must be a number of pixels"),
    (InpaintOptions(mask_blur=float("nan")), "mask_blur must be a number of pixels"),
    (InpaintOptions(mask_blur=1e9), "mask_blur must be a number of pixels"),
    (InpaintOptions(mask_blur=True), "mask_blur must be a number of pixels"),
    (InpaintOptions(padding_mask_crop=-1), "padding_mask_crop must be a whole number"),
    (InpaintOptions(padding_mask_crop=3.5), "padding_mask_crop must be a whole number"),
    (InpaintOptions(paste_back="yes"), "paste_back must be True or False"),
])
def test_bad_options_are_one_line(options: InpaintOptions, words: str) -> None:
    with pytest.raises(ZoodipError, match=words):
        options.check(with_mask=True)


def test_options_without_a_mask_are_refused() -> None:
    InpaintOptions().check(with_mask=False)
    for options in (InpaintOptions(mask_blur=4), InpaintOptions(padding_mask_crop=0), InpaintOptions(paste_back=True)):
        with pytest.raises(ZoodipError, match=r"(mask_blur|padding_mask_crop|paste_back) applies to inpainting: pass "
                                              r"mask_image too, or drop it"):
            options.check(with_mask=False)


def test_only_masked_reads_a_photo_again_to_paste_rather_than_holding_it(tmp_path) -> None:
    """A 48 MP photo held through the sampling would break a memory budget: only its box is kept."""
    picture = Image.fromarray(np.random.default_rng(3).integers(0, 256, (80, 100, 3), dtype=np.uint8))
    reads = []

    def reopen() -> Image.Image:
        reads.append(1)
        return picture

    view, seen, paste = inpainting_views(picture, _mask((100, 80), (40, 30, 50, 40)),
                                         InpaintOptions(padding_mask_crop=4), (32, 32), reopen)
    assert paste is not None and paste.original is reopen and reads == []
    generated = [Image.new("RGB", (32, 32), (255, 0, 0)), Image.new("RGB", (32, 32), (0, 255, 0))]
    out = paste(generated)
    assert reads == [1] and [im.size for im in out] == [(100, 80)] * 2  # read once for all the images
    assert np.array_equal(np.asarray(out[1])[0, 0], np.asarray(picture)[0, 0])

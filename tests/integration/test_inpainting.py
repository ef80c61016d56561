"""generate(image=, mask_image=) and ``zoodip generate --image --mask`` on the tiny export: what is kept, what is
redrawn, the defaults, and bad masks. (Parity with diffusers' inpainting pipeline: tests/integration/test_samplers.py.)"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from PIL import Image

from cli_helpers import assert_one_line_error, run_cli
from zoodip.errors import ZoodipError
from zoodip.generate import generate
from zoodip.model import ExportedModel, RuntimeOptions
from zoodip.sampling import SAMPLERS

SETTINGS = dict(steps=6, seed=5, guidance_scale=4.0)
SIDE = 128  # the tiny model's native size


@pytest.fixture(scope="module")
def picture(tmp_path_factory):
    rng = np.random.default_rng(1)
    path = tmp_path_factory.mktemp("inpaint") / "start.png"
    Image.fromarray(rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)).save(path)
    return path


def mask_image(left: int, right: int, size: tuple[int, int] = (SIDE, SIDE)) -> Image.Image:
    """White (redraw) in the columns [left, right), black elsewhere."""
    array = np.zeros((size[1], size[0]), np.uint8)
    array[:, left:right] = 255
    return Image.fromarray(array)


def final_latents(model, prompt, picture, mask, **options):
    seen = []
    images = generate(model, prompt, image=picture, mask_image=mask, callback=lambda i, n, x: seen.append(x.copy()),
                      **{**SETTINGS, **options})
    return images, seen


def pixels(images) -> np.ndarray:
    return np.stack([np.asarray(image) for image in images]).astype(int)


def test_the_kept_part_ends_as_the_images_latents_and_only_the_masked_part_follows_the_prompt(model, picture):
    mask = mask_image(0, SIDE // 2)
    _, red = final_latents(model, "a red star", picture, mask, strength=0.7)
    _, blue = final_latents(model, "a blue circle on grass", picture, mask, strength=0.7)
    cells = SIDE // 2 // model.vae_scale_factor  # the latent columns the mask redraws
    assert np.array_equal(red[-1][..., cells:], blue[-1][..., cells:])  # kept: the image's latents, whatever the prompt
    assert not np.allclose(red[-1][..., :cells], blue[-1][..., :cells], atol=1e-2)
    # Before the last step the kept part is the image's latents noised with the start's noise: the same for both.
    assert np.array_equal(red[2][..., cells:], blue[2][..., cells:])


def test_a_white_mask_is_image_to_image_and_a_black_one_keeps_the_image(model, picture):
    white, black = mask_image(0, SIDE), mask_image(0, 0)
    for sampler in SAMPLERS:
        options = dict(strength=0.6, sampler=sampler, **SETTINGS)
        plain = generate(model, "a red star", image=picture, **options)
        assert np.array_equal(pixels(generate(model, "a red star", image=picture, mask_image=white, **options)),
                              pixels(plain)), sampler
    with pytest.warns(UserWarning, match="black everywhere"):
        kept = [generate(model, prompt, image=picture, mask_image=black, strength=0.6, **SETTINGS)
                for prompt in ("a red star", "a blue circle")]
    assert np.array_equal(pixels(kept[0]), pixels(kept[1]))


def test_numpy_numbers_are_numbers(model, picture):
    options = dict(image=picture, mask_image=mask_image(0, 64), num_images=1, steps=2, seed=1)
    as_numpy = generate(model, "a star", strength=np.float32(0.5), guidance_scale=np.float32(4.0), **options)
    assert np.array_equal(pixels(as_numpy), pixels(generate(model, "a star", strength=0.5, guidance_scale=4.0,
                                                            **options)))


def test_strength_defaults_to_diffusers_inpainting_one_which_starts_from_noise_alone(model, picture):
    """With a mask the default strength is 1.0 (all steps), started from the seed's noise alone (diffusers'
    inpainting pipelines), so a white mask gives text-to-image's images; without a mask, img2img's 0.8."""
    totals = []
    generate(model, "a star", image=picture, mask_image=mask_image(0, 64), callback=lambda i, n, x: totals.append(n),
             **SETTINGS)
    generate(model, "a star", image=picture, callback=lambda i, n, x: totals.append(n), **SETTINGS)
    assert (totals[0], totals[-1]) == (6, 4)  # int(6 * 0.8)
    for sampler in ("dpmpp_2m", "euler"):
        text_to_image = pixels(generate(model, "a star", sampler=sampler, **SETTINGS))
        assert np.array_equal(pixels(generate(model, "a star", image=picture, mask_image=mask_image(0, SIDE),
                                              sampler=sampler, **SETTINGS)), text_to_image), sampler


def test_a_mask_as_a_path_or_pil_image_alpha_ignored_and_of_another_shape_warned(model, picture, tmp_path):
    mask = mask_image(0, SIDE // 2)
    path = tmp_path / "mask.png"
    mask.save(path)
    from_pil = pixels(generate(model, "a star", image=picture, mask_image=mask, strength=0.5, **SETTINGS))
    assert np.array_equal(pixels(generate(model, "a star", image=picture, mask_image=path, strength=0.5, **SETTINGS)),
                          from_pil)
    rgba = mask.convert("RGBA")
    rgba.putalpha(0)  # fully transparent: its gray levels still say what to redraw, as diffusers reads a mask
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.array_equal(pixels(generate(model, "a star", image=picture, mask_image=rgba, strength=0.5,
                                              **SETTINGS)), from_pil)
    wide = mask_image(0, SIDE, size=(2 * SIDE, SIDE))
    with pytest.warns(UserWarning, match=r"the mask is 256x128 px and the image 128x128: the mask is stretched"):
        generate(model, "a star", image=picture, mask_image=wide, strength=0.5, steps=2)


def test_bad_masks_are_one_line_and_write_nothing(model, picture, tiny_export, tmp_path, capsys):
    with pytest.raises(ZoodipError, match="mask_image applies to inpainting, which redraws a part of a picture: pass the picture"):
        generate(model, "a star", mask_image=mask_image(0, 8), steps=2)
    with pytest.raises(ZoodipError, match="mask_image must be a file path or a PIL image"):
        generate(model, "a star", image=picture, mask_image=np.ones((SIDE, SIDE)), steps=2)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    out = tmp_path / "x.png"
    common = ["generate", "--model", tiny_export, "--prompt", "a star", "--steps", "2", "--out", out]
    for extra, needle in ((["--mask", broken], "--mask applies to inpainting, which redraws a part of a picture: add --image PATH, or drop --mask"),
                          (["--image", picture, "--mask", broken], "cannot read image"),
                          (["--image", picture, "--mask", tmp_path / "missing.png"], "black-and-white PNG"),
                          (["--image", picture, "--mask_image", broken], "cannot read image")):
        assert_one_line_error(*run_cli(common + extra, capsys)[::2], needle)
    assert not out.exists()
    with pytest.raises(ZoodipError, match="the mask is 0x5 px, empty"):
        generate(model, "a star", image=picture, mask_image=Image.new("L", (0, 5)), steps=2)
    with pytest.raises(ZoodipError, match="the start image is 5x0 px, empty"):
        generate(model, "a star", image=Image.new("RGB", (5, 0)), steps=2)
    for extra, needle in ((["--image", picture, "--mask", ""], "an empty path was given for an image"),
                          (["--image", picture, "--mask", tmp_path], "is a folder, not an image")):
        assert_one_line_error(*run_cli(common + extra, capsys)[::2], needle)
    mask_image(0, 4, size=(8, 8)).save(tmp_path / "small.png")  # drawn on the latent grid: stretched, as any mask
    code, _, err = run_cli(common + ["--image", picture, "--mask", tmp_path / "small.png"], capsys)
    assert code == 0 and err == "", err
    mask_image(0, 64).save(tmp_path / "mask.png")
    code, _, err = run_cli(common + ["--image", picture, "--mask-image", tmp_path / "mask.png"], capsys)
    assert code == 0 and err == "" and Image.open(out).size == (SIDE, SIDE), err


def test_inpainting_within_a_memory_budget(tiny_export, picture):
    options = dict(image=picture, mask_image=mask_image(32, 96), strength=0.7, num_images=2, **SETTINGS)
    budgeted = generate(ExportedModel.load(tiny_export, RuntimeOptions(memory_budget_mb=4000)), "a red star", **options)
    plain = generate(ExportedModel.load(tiny_export), "a red star", **options)
    assert np.abs(pixels(budgeted) - pixels(plain)).max() <= 1


def test_only_masked_inpainting_of_a_photo_past_the_budget_is_refused_before_the_work(tiny_export, tmp_path):
    """The whole photo is decoded (and, only masked, pasted into), which no budget check counted: a 24 MP photo took
    462 MB under a 60 MB one."""
    photo, mask = tmp_path / "large.png", tmp_path / "mask.png"
    Image.new("RGB", (4000, 3000), (90, 120, 150)).save(photo)
    mask_image(1000, 1200, (4000, 3000)).save(mask)
    model = ExportedModel.load(tiny_export, RuntimeOptions(memory_budget_mb=100))
    calls = []
    with pytest.raises(ZoodipError, match=r"decoding and pasting into the whole 4000x3000 start photo takes about "
                                          r"161 MB, more than the memory_budget_mb of 100 MB"):
        generate(model, "a red star", image=photo, mask_image=mask, padding_mask_crop=8,
                 callback=lambda *step: calls.append(step), **SETTINGS)
    small_budget = ExportedModel.load(tiny_export, RuntimeOptions(memory_budget_mb=60))
    for extra in ({}, {"mask_image": mask, "paste_back": True}):  # decoded whole all the same (a PNG has no draft)
        with pytest.raises(ZoodipError, match=r"decoding the whole 4000x3000 start photo takes about 92 MB"):
            generate(small_budget, "a red star", image=photo, callback=lambda *step: calls.append(step),
                     **extra, **SETTINGS)
    assert not calls
    small = tmp_path / "small.png"
    Image.new("RGB", (1000, 750), (90, 120, 150)).save(small)
    mask_image(100, 200, (1000, 750)).save(mask)
    made = generate(model, "a red star", image=small, mask_image=mask, padding_mask_crop=8, **SETTINGS)
    assert made[0].size == (1000, 750)


def test_only_masked_and_paste_back_keep_the_originals_pixels_outside_the_mask(model, tiny_export, tmp_path, capsys):
    """--padding-mask-crop redraws the box around the mask at the native size and pastes it into the whole photo,
    which keeps its size; --paste-back keeps the black part's pixels exactly (not through the VAE)."""
    rng = np.random.default_rng(3)
    photo = tmp_path / "photo.png"
    Image.fromarray(rng.integers(0, 256, (2 * SIDE, 3 * SIDE, 3), dtype=np.uint8)).save(photo)
    drawn = np.zeros((2 * SIDE, 3 * SIDE), np.uint8)
    drawn[100:140, 200:260] = 255
    Image.fromarray(drawn).save(tmp_path / "mask.png")
    original = np.asarray(Image.open(photo)).astype(int)
    out = tmp_path / "out.png"
    common = ["generate", "--model", tiny_export, "--prompt", "a star", "--steps", "3", "--out", out,
              "--image", photo, "--mask", tmp_path / "mask.png"]
    code, _, err = run_cli(common + ["--padding-mask-crop", "16"], capsys)
    assert code == 0 and err == "", err
    result = np.asarray(Image.open(out)).astype(int)
    assert result.shape == original.shape
    assert np.array_equal(result[drawn == 0], original[drawn == 0])
    assert np.abs(result[drawn > 0] - original[drawn > 0]).mean() > 10  # redrawn
    code, _, err = run_cli(common + ["--paste-back"], capsys)
    kept = np.asarray(Image.fromarray(drawn).resize(Image.open(out).size, Image.Resampling.LANCZOS)) == 0
    start = np.asarray(Image.open(photo).resize(Image.open(out).size, Image.Resampling.BICUBIC)).astype(int)
    assert code == 0 and np.array_equal(np.asarray(Image.open(out)).astype(int)[kept], start[kept])
    plain = pixels(generate(model, "a star", image=photo, mask_image=tmp_path / "mask.png", steps=3))[0]
    assert not np.array_equal(plain[kept], start[kept])  # without it, the kept part is the VAE's copy
    out.unlink()
    for extra, needle in ((["--mask-blur", "-1"], "--mask-blur must be a number of pixels from 0"),
                          (["--padding-mask-crop", "-4"], "--padding-mask-crop must be a whole number of pixels"),
                          (["--inpaint_full_res"], "is --padding-mask-crop PX")):
        assert_one_line_error(*run_cli(common + extra, capsys)[::2], needle)
    bare = ["generate", "--model", tiny_export, "--prompt", "a star", "--steps", "3", "--out", out]
    assert_one_line_error(*run_cli(bare + ["--paste-back"], capsys)[::2], "--paste-back applies to inpainting: pass --mask too, or drop it")
    assert not out.exists()

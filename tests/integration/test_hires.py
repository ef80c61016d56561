"""The hires fix (``zoodip.hires.generate_hires``, ``zoodip generate --hires-scale``) on the tiny export: what it is
made of, its progress, and its refusals before any step."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cli_helpers import assert_one_line_error, run_cli
from zoodip.errors import ZoodipError
from zoodip.generate import generate
from zoodip.hires import generate_hires, hires_size

SIDE = 128  # the tiny model's native size


def test_hires_is_text_to_image_then_image_to_image_of_the_upscaled_picture(model) -> None:
    """Its definition: the first pass's images, upscaled by Lanczos, redrawn with the seed of their place in the batch."""
    options = dict(steps=4, guidance_scale=5.0, negative_prompt="blurry")
    ours = generate_hires(model, "a red star", hires_scale=1.5, hires_strength=0.5, seed=3, num_images=2, **options)
    first = generate(model, "a red star", seed=3, num_images=2, **options)
    size = hires_size((SIDE, SIDE), 1.5, 64)
    assert size == (192, 192) and [image.size for image in ours] == [size, size]
    for i, (image, start) in enumerate(zip(ours, first)):
        again = generate(model, "a red star", seed=3 + i, image=start.resize(size, Image.Resampling.LANCZOS),
                         strength=0.5, height=size[1], width=size[0], **options)[0]
        assert np.array_equal(np.asarray(image), np.asarray(again))


def test_hires_progress_counts_both_passes(model) -> None:
    seen: list[tuple[int, int]] = []
    generate_hires(model, "a star", steps=5, hires_steps=4, hires_strength=0.5, num_images=2,
                   callback=lambda step, total, latents: seen.append((step, total)))
    assert seen == [(step, 5 + 2 * 2) for step in range(1, 10)]


def test_hires_sizes_round_down_to_sizes_the_unet_runs_at() -> None:
    assert hires_size((512, 768), 1.3, 64) == (640, 960) and hires_size((64, 64), 1.01, 64) == (64, 64)
    # The scale as written: 360 * 1.4 in floats is 503.99999999999994, which rounded down to 8 px lost a step.
    assert hires_size((360, 360), 1.4, 8) == (504, 504) and hires_size((512, 200), 1.15, 8) == (584, 224)


@pytest.mark.parametrize("settings, words", [
    (dict(hires_scale=1), "hires_scale must be a number above 1 and at most 4"),
    (dict(hires_scale=4.5), "hires_scale must be a number above 1 and at most 4"),
    (dict(hires_scale="2"), "hires_scale must be a number above 1 and at most 4"),
    (dict(hires_scale=True), "hires_scale must be a number above 1 and at most 4"),
    (dict(hires_strength=0), "hires_strength must be a number in"),
    (dict(hires_strength=0.1, hires_steps=4), "leaves no step to run: raise hires_strength"),
    (dict(hires_steps=0), "steps must be an integer"),
    (dict(steps="3"), "steps must be an integer"),
    (dict(width=100), "width must be a positive multiple of 8"),
    (dict(width=8192, height=8192), r"the hires fix's 16384x16384 image \(hires_scale=2\.0\) needs at least"),
    (dict(hires_scale=1.05), r"leaves 128x128 as it is \(sides are rounded down to multiples of 8\)"),
    (dict(strength=0.5), "the hires fix is for text-to-image"),
    (dict(image=Image.new("RGB", (64, 64))), "the hires fix is for text-to-image"),
    (dict(callback=5), "callback must be callable"),
])
def test_bad_hires_settings_are_refused_before_any_step(model, settings, words) -> None:
    steps: list[int] = []
    options = {"steps": 4, "callback": lambda step, total, latents: steps.append(step), **settings}
    with pytest.raises(ZoodipError, match=words):
        generate_hires(model, "a star", **options)
    assert steps == []


def test_cli_hires_flags(tiny_export, tmp_path, capsys) -> None:
    out = tmp_path / "big.png"
    common = ["generate", "--model", tiny_export, "--prompt", "a star", "--steps", "3", "--out", out]
    code, _, err = run_cli(common + ["--hires-scale", "2", "--hires-strength", "0.7"], capsys)
    assert code == 0 and err == "" and Image.open(out).size == (2 * SIDE, 2 * SIDE), err
    out.unlink()
    Image.new("RGB", (SIDE, SIDE)).save(tmp_path / "start.png")
    for extra, needle in ((["--hires-steps", "5"], "--hires-steps sets the hires fix's second pass: add --hires-scale"),
                          (["--hires-scale", "2", "--image", tmp_path / "start.png"], "--hires-scale is for text-to-image"),
                          (["--enable_hr"], "A1111's hires fix is --hires-scale X"),
                          (["--hires-scale", "0.5"], "--hires-scale must be a number above 1"),
                          (["--hires-scale", "2", "--paste-back"], "--paste-back applies to inpainting: pass --mask too")):
        assert_one_line_error(*run_cli(common + extra, capsys)[::2], needle)
    assert not out.exists()


def test_under_a_budget_the_second_pass_encode_is_checked_before_the_first_pass(tiny_export) -> None:
    """It was refused after all of the first pass's steps, with advice naming a start image the user never gave."""
    from zoodip.memory_plan import check_encode
    from zoodip.model import ExportedModel, RuntimeOptions

    budget = 200  # (the second pass's UNet fits it: its own check is below)
    model = ExportedModel.load(tiny_export, RuntimeOptions(memory_budget_mb=budget))
    factor = model.vae_scale_factor
    check_encode(model, SIDE // factor, SIDE // factor, budget)  # the first pass's size fits
    with pytest.raises(ZoodipError):
        check_encode(model, 4 * SIDE // factor, 4 * SIDE // factor, budget)  # four times the side does not
    steps: list[int] = []
    with pytest.raises(ZoodipError, match=r"the hires fix's second pass: encoding a 512x512 start image .* or a "
                                          r"smaller hires_scale"):
        generate_hires(model, "a star", hires_scale=4, steps=2, callback=lambda s, n, x: steps.append(s))
    assert steps == []


def test_under_a_budget_the_second_pass_unet_is_checked_before_the_first_pass(tiny_export) -> None:
    """The budget counted the UNet's weights, not its activations at the larger size (memory_plan.check_unet)."""
    from zoodip.memory_plan import unet_bytes
    from zoodip.model import ExportedModel, RuntimeOptions

    model = ExportedModel.load(tiny_export, RuntimeOptions(memory_budget_mb=1000))
    factor = model.vae_scale_factor
    budget = -(-unet_bytes(model, 4 * SIDE // factor, 4 * SIDE // factor) // (1 << 20)) - 1
    assert unet_bytes(model, SIDE // factor, SIDE // factor) < budget << 20  # the first pass's size fits
    model = ExportedModel.load(tiny_export, RuntimeOptions(memory_budget_mb=budget))
    steps: list[int] = []
    with pytest.raises(ZoodipError, match=r"the hires fix's second pass: the UNet at a 512x512 image needs about "
                                          rf"{budget + 1} MB .* or a smaller hires_scale"):
        generate_hires(model, "a star", hires_scale=4, steps=2, callback=lambda s, n, x: steps.append(s))
    assert steps == []


def test_without_a_budget_the_second_pass_decode_is_checked_before_the_first_pass(model, monkeypatch) -> None:
    """A machine whose memory holds the first pass's whole decode but not the second's: refused before any step."""
    from zoodip import limits
    from zoodip.memory_plan import unbudgeted_decode_bytes

    factor = model.vae_scale_factor
    memory = unbudgeted_decode_bytes(model, 2 * SIDE // factor, 2 * SIDE // factor)
    monkeypatch.setattr(limits, "machine_memory_bytes", lambda: memory)
    assert limits.attention_bytes(4 * SIDE // factor, 4 * SIDE // factor) < memory  # the floor lets 512 px pass
    steps: list[int] = []
    with pytest.raises(ZoodipError, match=r"the hires fix's second pass: decoding a 512x512 image whole .* use at "
                                          r"most 256 px, or give memory_budget_mb=MB .* or a smaller hires_scale"):
        generate_hires(model, "a star", hires_scale=4, steps=2, callback=lambda s, n, x: steps.append(s))
    assert steps == []

"""generate(image=, strength=) and ``zoodip generate --image --strength`` on the tiny export: sizes, inputs, errors.
(Parity with diffusers' img2img pipeline: tests/integration/test_samplers.py.)"""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cli_helpers import assert_one_line_error, run_cli
from zoodip.errors import ZoodipError
from zoodip.generate import generate
from zoodip.model import ExportedModel, RuntimeOptions

SETTINGS = dict(steps=4, seed=2, guidance_scale=3.0)


@pytest.fixture(scope="module")
def picture(tmp_path_factory):
    """A 200 x 100 picture: wider than the tiny model's 128 px."""
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("img2img") / "start.png"
    Image.fromarray(rng.integers(0, 256, (100, 200, 3), dtype=np.uint8)).save(path)
    return path


def pixels(images) -> np.ndarray:
    return np.stack([np.asarray(image) for image in images])


def test_a_path_and_a_pil_image_give_the_same_images_at_the_images_aspect(model, picture):
    from_path = generate(model, "a red star", image=picture, strength=0.6, num_images=2, **SETTINGS)
    with Image.open(picture) as opened:
        from_pil = generate(model, "a red star", image=opened.convert("RGBA"), strength=0.6, num_images=2, **SETTINGS)
    assert from_path[0].size == (128, 64)  # the longer side the model's native 128 px, the aspect kept
    assert np.array_equal(pixels(from_path), pixels(from_pil))
    assert not np.array_equal(pixels(from_path)[0], pixels(from_path)[1])  # each image its own noise


def test_strength_sets_how_much_of_the_image_stays(model, picture):
    """A weak strength stays closer to the start than a strong one (the start resized as generate resizes it)."""
    with Image.open(picture) as opened:
        start = np.asarray(opened.convert("RGB").resize((128, 64), Image.Resampling.BICUBIC), dtype=np.float64)
    distance = {strength: np.abs(pixels(generate(model, "a red star", image=picture, strength=strength, steps=10,
                                                 seed=2))[0] - start).mean() for strength in (0.2, 0.9)}
    assert distance[0.2] < distance[0.9]


def test_image_to_image_within_a_memory_budget(tiny_export, picture):
    budgeted = ExportedModel.load(tiny_export, RuntimeOptions(memory_budget_mb=4000))
    plain = ExportedModel.load(tiny_export)
    a = generate(budgeted, "a red star", image=picture, strength=0.7, **SETTINGS)
    b = generate(plain, "a red star", image=picture, strength=0.7, **SETTINGS)
    assert np.abs(pixels(a).astype(int) - pixels(b).astype(int)).max() <= 1


def test_a_start_image_too_large_to_encode_within_the_budget_is_refused_before_any_work(tiny_export, picture):
    """The VAE encoder is not tiled: its estimate (full-resolution maps and attention) must fit the budget too.
    At 256 px on this model (about 170 MB to encode) the attention floor fits 80 MB, the encoder's maps do not."""
    budgeted = ExportedModel.load(tiny_export, RuntimeOptions(memory_budget_mb=80))
    with pytest.raises(ZoodipError, match="encoding a 256x256 start image needs about .* MB .* memory_budget_mb of 80 MB"):
        generate(budgeted, "a star", image=picture, width=256, height=256, steps=2)
    generate(budgeted, "a star", width=256, height=256, steps=1)  # text-to-image at that size: decoded in tiles


def test_a_strength_without_an_image_is_refused_by_the_api_as_by_the_cli(model):
    """generate(strength=0.5) without an image ran text-to-image and dropped the strength unsaid (the CLI refused it)."""
    with pytest.raises(ZoodipError, match=r"^strength applies to image-to-image only \(how much of the picture is "
                                          r"redrawn\): pass the picture to start from too \(image=\.\.\.\), or "
                                          r"drop strength$"):
        generate(model, "a star", strength=0.5, steps=2)


def test_a_strength_too_small_for_any_allowed_steps_is_not_told_to_give_more_steps(model, picture) -> None:
    """strength 0.0005 of 3 steps said 'give steps=2000 or more', which the model's 1000-step schedule refuses (and
    strength 0.01 with the lcm sampler 'steps=100', past its 50)."""
    with pytest.raises(ZoodipError) as refused:
        generate(model, "a star", image=picture, strength=0.0005, steps=3)
    said = str(refused.value)
    assert "steps=2000" not in said and "at most 1000" in said, said
    with pytest.raises(ZoodipError) as refused:
        generate(model, "a star", image=picture, strength=0.01, steps=3, sampler="lcm", guidance_scale=1.0)
    assert "steps=100" not in str(refused.value) and "at most 50" in str(refused.value), str(refused.value)
    with pytest.raises(ZoodipError, match=r": raise it, or give steps=10 or more$"):  # (where they are allowed: said)
        generate(model, "a star", image=picture, strength=0.1, steps=4)


def test_bad_image_to_image_inputs_are_one_line(model, picture, tiny_export, tmp_path, capsys):
    for strength in (0, 1.5, float("nan"), True, "0.5"):
        with pytest.raises(ZoodipError, match="strength must be a number in"):
            generate(model, "a star", image=picture, strength=strength, steps=2)
    with pytest.raises(ZoodipError, match="strength 0.1 of 4 steps leaves no step"):
        generate(model, "a star", image=picture, strength=0.1, steps=4)
    with pytest.raises(ZoodipError, match="image must be a file path or a PIL image"):
        generate(model, "a star", image=np.zeros((64, 64, 3)), steps=2)
    with pytest.raises(ZoodipError, match="needs at least .* GB of memory"):  # refused before the picture is resized
        generate(model, "a star", image=picture, width=800_000, steps=2)
    common = ["generate", "--model", tiny_export, "--prompt", "a star", "--steps", "2", "--out", tmp_path / "x.png"]
    for extra, needle in ((["--strength", "0.5"], "--strength applies to image-to-image only"),
                          (["--image", tmp_path / "missing.png"], "pass a JPEG or PNG file"),
                          (["--image", picture, "--save-latents", tmp_path / "n.npy"], "--latents and --save-latents"),
                          (["--image", picture, "--width", "100"], "width must be a positive multiple of 8")):
        assert_one_line_error(*run_cli(common + extra, capsys)[::2], needle)
    assert not (tmp_path / "x.png").exists()
    code, out, _ = run_cli(common + ["--image", picture, "--strength", "0.5", "--sampler", "euler_a"], capsys)
    assert code == 0 and Image.open(tmp_path / "x.png").size == (128, 64), out


def test_a_strength_needing_exactly_the_most_steps_is_not_told_or_more() -> None:
    """strength 0.001 of 3 steps said 'give steps=1000 or more' on a 1000-step schedule, where more is refused (and
    strength 0.02 with the lcm sampler 'steps=50 or more', its most)."""
    from zoodip.sampling import steps_run

    for strength, most in ((0.001, 1000), (0.02, 50)):
        with pytest.raises(ZoodipError, match=rf": raise it, or give steps={most}$"):
            steps_run(3, strength, most)
    with pytest.raises(ZoodipError, match=r": raise it, or give steps=10 or more$"):
        steps_run(4, 0.1, 1000)

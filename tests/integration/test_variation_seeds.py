"""A1111's variation seeds (--variation-seed, --variation-strength): another seed's noise mixed into the seed's."""
from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

from cli_helpers import assert_one_line_error, run_cli
from zoodip.generate import generate, initial_latents
from zoodip.hires import generate_hires
from zoodip.image_parameters import read_parameters
from zoodip.model import ExportedModel
from zoodip.pipeline import ZoodipPipeline


def _pixels(images) -> list[np.ndarray]:
    return [np.asarray(image, dtype=np.int16) for image in images]


def test_the_ends_are_the_two_seeds_images_and_between_them_the_seeds_layout(tiny_export):
    model = ExportedModel.load(tiny_export)
    common = dict(steps=3, num_images=2, sampler="euler_a")  # euler_a: the seed's own noise goes on being drawn
    own, other = _pixels(generate(model, "a star", seed=1, **common)), _pixels(generate(model, "a star", seed=2, **common))
    # With euler_a the rest of the run's noise stays the seed's: strength 1 is seed 1's start, not seed 1's image.
    swapped = _pixels(generate(model, "a star", seed=2, variation_seed=1, variation_strength=1.0, **common))
    assert not all(np.array_equal(a, b) for a, b in zip(swapped, own))
    ends = _pixels(generate(model, "a star", seed=1, variation_seed=2, variation_strength=1.0, sampler="dpmpp_2m",
                            steps=3, num_images=2))
    assert all(np.array_equal(a, b) for a, b in zip(ends, _pixels(generate(model, "a star", seed=2, steps=3,
                                                                           num_images=2))))
    near = _pixels(generate(model, "a star", seed=1, variation_seed=2, variation_strength=0.1, **common))
    for mine, theirs, mixed in zip(own, other, near):
        assert not np.array_equal(mixed, mine)
        assert np.abs(mixed - mine).mean() < np.abs(mixed - theirs).mean()


def test_the_command_line_records_the_variation_and_its_text_makes_the_image_again(tiny_export, tmp_path, capsys):
    out = tmp_path / "v.png"
    code, said, err = run_cli(["generate", "--model", tiny_export, "--prompt", "a star", "--steps", "2", "--seed", "4",
                               "--variation-seed", "-1", "--variation-strength", "0.25", "--out", out], capsys)
    assert code == 0, err
    drawn = int(re.search(r"\(--variation-seed (\d+)\)", said).group(1))  # -1: a random one, said
    text = read_parameters(out)
    assert f"Variation seed: {drawn}, Variation seed strength: 0.25" in text
    again = generate(ExportedModel.load(tiny_export), "a star", steps=2, seed=4, variation_seed=drawn,
                     variation_strength=0.25)
    assert np.array_equal(np.asarray(again[0]), np.asarray(Image.open(out)))
    saved = tmp_path / "noise.npy"  # --save-latents writes the mixed noise, which --latents then gives back
    assert run_cli(["generate", "--model", tiny_export, "--prompt", "a star", "--steps", "2", "--seed", "4",
                    "--variation-seed", str(drawn), "--variation-strength", "0.25", "--out", tmp_path / "w.png",
                    "--save-latents", saved], capsys)[0] == 0
    np.testing.assert_array_equal(np.load(saved), initial_latents(ExportedModel.load(tiny_export), 4, 1, None, None,
                                                                  drawn, 0.25))
    assert np.array_equal(np.asarray(Image.open(tmp_path / "w.png")), np.asarray(Image.open(out)))
    assert "Variation" not in read_parameters(_run(tiny_export, tmp_path, capsys))  # none asked: none said


def _run(export, tmp_path, capsys, *extra):
    out = tmp_path / "plain.png"
    code, _, err = run_cli(["generate", "--model", export, "--prompt", "a star", "--steps", "1", "--out", out, *extra],
                           capsys)
    assert code == 0, err
    return out


@pytest.mark.parametrize("flags, words", [
    (["--variation-strength", "0.3"], "--variation-strength mixes in another seed's noise"),
    (["--variation-seed", "3"], "--variation-seed changes nothing without a variation strength"),
    (["--variation-seed", "3", "--variation-strength", "2"], "--variation-strength must be a number from 0 to 1"),
    (["--variation-seed", "3", "--variation-strength", "0.2", "--latents", "x.npy"], "--latents are the noise"),
    (["--subseed", "3"], "A1111's variation seed is --variation-seed"),
    (["--variation-seed", "3", "--variation-strength", "0.2", "--hires-scale", "1.5", "--save-latents", "n.npy"],
     "--latents cannot give back"),
])
def test_a_variation_that_cannot_be_made_is_one_line(tiny_export, tmp_path, capsys, flags, words):
    out = tmp_path / "never.png"
    code, _, err = run_cli(["generate", "--model", tiny_export, "--prompt", "a star", "--steps", "1", "--out", out,
                            *flags], capsys)
    assert_one_line_error(code, err, words)
    assert not out.exists()


def test_the_hires_fix_and_the_pipeline_take_a_variation(tiny_export):
    model = ExportedModel.load(tiny_export)
    settings = dict(steps=2, seed=3, hires_scale=1.5, hires_steps=2)
    plain = _pixels(generate_hires(model, "a star", **settings))
    varied = _pixels(generate_hires(model, "a star", variation_seed=8, variation_strength=0.3, **settings))
    assert varied[0].shape == plain[0].shape and not np.array_equal(varied[0], plain[0])
    pipe = ZoodipPipeline(model)
    image = pipe("a star", num_inference_steps=2, seed=3, variation_seed=8, variation_strength=0.3).images[0]
    assert np.array_equal(np.asarray(image), np.asarray(generate(model, "a star", steps=2, seed=3, variation_seed=8,
                                                                 variation_strength=0.3)[0]))


def test_initial_latents_checks_what_generate_checks(tiny_export):
    from zoodip.errors import ZoodipError

    model = ExportedModel.load(tiny_export)
    for seed, count, words in ((None, 1, "seed must be"), (-1, 1, "seed must be"), (1.0, 1, "seed must be"),
                               (0, 0, "num_images"), (0, 10**6, "num_images"), (0, "2", "num_images")):
        with pytest.raises(ZoodipError, match=words):
            initial_latents(model, seed, count)


def test_an_images_variation_seed_without_a_strength_is_left_out_unless_a_flag_gives_one(tiny_export, tmp_path,
                                                                                            capsys):
    """Found by sweeps: refused with advice (--variation-seed) that gave the same refusal; then, once left out in the
    reading, lost where --variation-strength asked for it."""
    from PIL.PngImagePlugin import PngInfo

    for strength in ("", ", Variation seed strength: 0"):
        info = PngInfo()
        info.add_text("parameters", f"a red star\nSteps: 2, Seed: 1, Size: 64x64, Variation seed: 5{strength}")
        Image.new("RGB", (8, 8)).save(tmp_path / "v.png", pnginfo=info)
        base = ["generate", "--model", tiny_export, "--parameters-from", tmp_path / "v.png"]
        code, _, err = run_cli([*base, "--out", tmp_path / "a.png"], capsys)
        assert code == 0 and "Variation seed" not in read_parameters(tmp_path / "a.png"), err
        code, _, err = run_cli([*base, "--variation-strength", "0.5", "--out", tmp_path / "b.png"], capsys)
        assert code == 0 and "Variation seed: 5, Variation seed strength: 0.5" in read_parameters(tmp_path / "b.png")
    info = PngInfo()  # found by a sweep: a strength that does not read dropped the variation without a word
    info.add_text("parameters", "a red star\nSteps: 2, Seed: 1, Size: 64x64, Variation seed: 5, Variation seed strength: x")
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png", pnginfo=info)
    assert_one_line_error(*run_cli(["generate", "--model", tiny_export, "--parameters-from", tmp_path / "x.png", "--out",
                                    tmp_path / "c.png"], capsys)[::2], "its Variation seed strength 'x' does not read")

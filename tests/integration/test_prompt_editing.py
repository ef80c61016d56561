"""generate(prompt_weighting="a1111") with A1111's prompt editing, alternation and AND, on the tiny export."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from zoodip.cli import main
from zoodip.errors import ZoodipError
from zoodip.generate import generate
from zoodip.model import ExportedModel, RuntimeOptions
from model_spies import ConditioningSpy

SETTINGS = dict(seed=3, guidance_scale=3.0, prompt_weighting="a1111")



def states(model, text: str) -> np.ndarray:
    return np.asarray(model.encode_text(model.tokenizer([text])), np.float32)[0]


def pixels(images) -> np.ndarray:
    return np.asarray(images[0])


def test_each_step_is_conditioned_on_its_phase(model):
    spy = ConditioningSpy(model)
    generate(spy, "a [red:blue:2] star", negative_prompt="[plain|blurry]", steps=5, batch_cfg=False, **SETTINGS)
    red, blue = states(model, "a red star"), states(model, "a blue star")
    plain, blurry = states(model, "plain"), states(model, "blurry")
    # Each step: the negative prompt's pass, then the prompt's (batch_cfg=False), one image each.
    seen = [(spy.states[2 * i][0], spy.states[2 * i + 1][0]) for i in range(5)]
    assert len(spy.states) == 10
    expected = [(plain, red), (plain, red), (blurry, red), (plain, blue), (blurry, blue)]  # A1111's steps 0..4
    for step, ((negative, prompt), (want_negative, want_prompt)) in enumerate(zip(seen, expected)):
        assert np.allclose(negative, want_negative, atol=1e-6) and np.allclose(prompt, want_prompt, atol=1e-6), step


def test_a_phase_that_holds_all_through_gives_the_unedited_image(model):
    for steps, sampler in ((4, "dpmpp_2m"), (3, "euler_a"), (3, "ddim")):
        for edited, plain in (("a [red star:blue moon:1.0]", "a red star"), ("a [red star:blue moon:0]", "a blue moon"),
                              ("a [red star|red star] ", "a red star ")):
            kwargs = dict(steps=steps, sampler=sampler, num_images=2, **SETTINGS)
            assert np.array_equal(pixels(generate(model, edited, **kwargs)), pixels(generate(model, plain, **kwargs)))
    switched = generate(model, "a [red star:blue moon:0.5]", steps=4, **SETTINGS)
    assert not np.array_equal(pixels(switched), pixels(generate(model, "a red star", steps=4, **SETTINGS)))
    assert not np.array_equal(pixels(switched), pixels(generate(model, "a blue moon", steps=4, **SETTINGS)))


def test_phases_of_different_lengths_run_apart(model):
    spy = ConditioningSpy(model)
    generate(spy, "[a red star BREAK on blue:a red star:1]", negative_prompt="blurry", steps=3, **SETTINGS)
    # Steps 0-1: a 2-chunk prompt against a 1-chunk negative one, two passes; step 2: one batched pass.
    assert [s.shape[:2] for s in spy.states] == [(1, 77), (1, 154), (1, 77), (1, 154), (2, 77)]


def test_image_to_image_lays_the_schedule_over_the_steps_that_run(model, tmp_path):
    from PIL import Image

    start = tmp_path / "start.png"
    Image.fromarray(np.full((32, 32, 3), 120, np.uint8)).save(start)
    spy = ConditioningSpy(model)
    generate(spy, "a [red:blue:0.5] star", image=start, strength=0.5, steps=8, guidance_scale=1.0, seed=0,
             prompt_weighting="a1111")
    red, blue = states(model, "a red star"), states(model, "a blue star")
    assert len(spy.states) == 4  # int(8 * 0.5) steps run; the switch at int(0.5 * 4) = 2
    assert [np.allclose(s[0], red, atol=1e-6) for s in spy.states] == [True, True, True, False]
    assert np.allclose(spy.states[3][0], blue, atol=1e-6)


def test_a_memory_budget_gives_the_same_edited_image(tiny_export):
    prompt, settings = "a [red:[blue|green]:1] star", dict(steps=3, negative_prompt="[dots::2]", **SETTINGS)
    whole = generate(ExportedModel.load(tiny_export), prompt, batch_cfg=False, **settings)
    budgeted = generate(ExportedModel.load(tiny_export, RuntimeOptions(memory_budget_mb=2000)), prompt, **settings)
    assert np.array_equal(pixels(whole), pixels(budgeted))


def test_progress_is_still_reported_step_by_step(model):
    seen = []
    generate(model, "[a|b] star", steps=3, callback=lambda step, total, latents: seen.append((step, total)), **SETTINGS)
    assert seen == [(1, 3), (2, 3), (3, 3)]


def test_read_as_plain_text_without_a1111_and_said(model):
    with pytest.warns(UserWarning, match=r"uses A1111's prompt editing or alternation .* read here as plain text"):
        generate(model, "a [red:blue:0.5] star", steps=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        generate(model, "a [red:blue:0.5] star", steps=1, prompt_weighting="a1111")
        generate(model, "a red star, 3:2", steps=1)  # a ratio is no syntax (brackets alone: test_prompt_weighting)
        generate(model, "a red star", negative_prompt="blurry AND dark", steps=1)  # A1111 reads that AND as a word
    with pytest.warns(UserWarning, match=r"uses A1111's AND \(composable diffusion\), read here as plain text"):
        generate(model, "a red star AND a blue moon", steps=1)
    with pytest.warns(UserWarning, match=r"uses A1111's BREAK \(a new 75-token chunk\), read here as plain text"):
        generate(model, "a red star BREAK a blue moon", steps=1)


def test_a_learned_token_that_a1111s_reading_splits_is_said(model):
    """'<BREAK>' and '<x-AND-y>' hold A1111's keywords: under its reading the prompt is split there and the token is
    never read whole, so its vectors would be silently ignored."""
    vectors = np.ones((1, model.hidden_size), np.float32)
    for token, keyword in (("<BREAK>", "BREAK"), ("<cat-AND-dog>", "AND")):
        with pytest.warns(UserWarning) as record:
            generate(model, f"a {token} star", steps=1, prompt_weighting="a1111", added_embeddings={token: vectors})
        said = [str(warning.message) for warning in record]
        assert any(f"the learned token '{token}' holds {keyword}, which A1111's reading" in line for line in said), said
        assert not any("does not appear in the prompt" in line for line in said), said  # why it is not read: said
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            generate(model, f"a {token} star", steps=1, added_embeddings={token: vectors})  # read whole under none
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        generate(model, "a <BREAKFAST> star", steps=1, prompt_weighting="a1111",
                 added_embeddings={"<BREAKFAST>": vectors})


def test_the_cli_reads_it_and_refuses_too_many_phases_in_one_line(tiny_export, tmp_path, capsys):
    common = ["generate", "--model", str(tiny_export), "--threads", "1", "--prompt-weighting", "a1111"]
    out = tmp_path / "edited.png"
    assert main(common + ["--steps", "3", "--prompt", "a [red:blue:0.5] star", "--out", str(out)]) == 0
    assert out.is_file()
    crowded = ["--steps", "100", "--prompt", "[a|b|c|d|e|f|g] [h|i|j|k|l|m|n|o|p|q|r]", "--out", str(tmp_path / "x.png")]
    assert main(common + crowded) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "77 different prompts over 100 steps" in err[0] and not (tmp_path / "x.png").exists()


def final_latents(model, prompt: str, **kwargs) -> np.ndarray:
    seen = []
    generate(model, prompt, callback=lambda step, total, latents: seen.append(np.array(latents)), **kwargs)
    return seen[-1]


def test_and_adds_one_guidance_term_per_part(model):
    spy = ConditioningSpy(model)
    generate(spy, "a red star AND [a blue moon|dots]:0.5", negative_prompt="blurry AND dark", steps=3, batch_cfg=False,
             **SETTINGS)
    negative, red = states(model, "blurry AND dark"), states(model, "a red star")  # a negative prompt's AND is a word
    moon, dots = states(model, " a blue moon"), states(model, " dots")
    assert len(spy.states) == 9  # the negative prompt, then each part, every step
    for step, want in enumerate([moon, moon, dots]):  # the second part alternates on its own
        got = [s[0] for s in spy.states[3 * step : 3 * step + 3]]
        assert all(np.allclose(a, b, atol=1e-6) for a, b in zip(got, [negative, red, want])), step
    batched = ConditioningSpy(model)
    generate(batched, "a red star AND a blue moon", steps=2, num_images=2, **SETTINGS)
    assert [s.shape[0] for s in batched.states] == [6, 6]  # one call a step: (negative + 2 parts) x 2 images


def test_and_weights_scale_the_guidance_as_a1111s_sum(model):
    settings = dict(steps=3, seed=1, prompt_weighting="a1111", num_images=2)
    plain = final_latents(model, "a red star", guidance_scale=4.0, **settings)
    # One part weighted w is guidance g * w; two equal halves sum to the whole term.
    assert np.array_equal(plain, final_latents(model, "a red star:2", guidance_scale=2.0, **settings))
    halves = final_latents(model, "a red star :0.5 AND a red star:0.5", guidance_scale=4.0, **settings)
    assert np.allclose(plain, halves, atol=1e-5) and not np.array_equal(
        plain, final_latents(model, "a red star AND a blue moon", guidance_scale=4.0, **settings))
    spy = ConditioningSpy(model)
    generate(spy, "a red star AND a blue moon", guidance_scale=1.0, steps=1, prompt_weighting="a1111")
    assert len(spy.states) == 1 and spy.states[0].shape[0] == 3  # at guidance 1 two parts still need the negative


def test_and_is_refused_with_guidance_rescale_before_any_work(model):
    spy = ConditioningSpy(model)
    with pytest.raises(ZoodipError, match="guidance_rescale rescales toward one prompt's prediction"):
        generate(spy, "a red star AND a blue moon", guidance_rescale=0.7, steps=2, prompt_weighting="a1111")
    assert spy.states == []
    with pytest.warns(UserWarning, match="AND"):  # "none": one prompt, 'and' a word (and a warning)
        generate(spy, "a red star AND a blue moon", guidance_rescale=0.7, steps=1)


def test_personalize_previews_read_the_validation_prompt_as_asked(tiny_export, photos, tmp_path, capsys):
    from cli_helpers import personalize_args

    for weighting, said in (("none", True), ("a1111", False)):
        out = tmp_path / weighting
        args = personalize_args(tiny_export, photos, out, "--validation_prompt", "a [red:blue:0.5] <striped-star>",
                                "--validation_steps", "3", "--num_validation_images", "1", "--prompt_weighting", weighting)
        assert main([str(a) for a in args]) == 0
        err = capsys.readouterr().err
        assert ("prompt editing or alternation" in err) == said and (out / "validation-steps-3.png").is_file()
    args = personalize_args(tiny_export, photos, tmp_path / "bad", "--prompt-weighting", "compel")
    assert main([str(a) for a in args]) == 2 and "invalid choice: 'compel'" in capsys.readouterr().err

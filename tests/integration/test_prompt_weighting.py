"""generate(prompt_weighting="a1111") and ``zoodip generate --prompt-weighting``: A1111's emphasis on the tiny export."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from PIL import Image

from zoodip.cli import main
from zoodip.errors import ZoodipError
from zoodip.generate import generate
from model_spies import ConditioningSpy

SETTINGS = dict(steps=2, seed=5, guidance_scale=3.0)



def pixels(images) -> np.ndarray:
    return np.asarray(images[0])


def test_a_prompt_without_emphasis_gives_the_same_images(model):
    plain = pixels(generate(model, "a red star", negative_prompt="blurry", **SETTINGS))
    for prompt, negative in (("a red star", "blurry"), ("a (red:1) star", "(blurry:1.0)")):  # weight 1: no emphasis
        assert np.array_equal(plain, pixels(generate(model, prompt, negative_prompt=negative,
                                                     prompt_weighting="a1111", **SETTINGS)))
    for prompt, negative in (("a (red) star", "blurry"), ("a red star", "[blurry]")):  # 1.1, 1/1.1
        assert not np.array_equal(plain, pixels(generate(model, prompt, negative_prompt=negative,
                                                         prompt_weighting="a1111", **SETTINGS)))


def test_the_unet_sees_the_weighted_rescaled_states(model):
    spy = ConditioningSpy(model)
    generate(spy, "a photo of a (red:1.5) star", guidance_scale=1.0, steps=1, seed=0, prompt_weighting="a1111")
    ids = model.tokenizer(["a photo of a red star"])
    states = np.asarray(model.encode_text(ids), np.float32)[0]
    red = 1 + len(model.tokenizer.encode("a photo of a"))  # after the start token
    weights = np.ones(states.shape[0], np.float32)
    weights[red] = 1.5
    expected = states * weights[:, None]
    expected *= states.mean(dtype=np.float64) / expected.mean(dtype=np.float64)
    assert len(spy.states) == 1 and np.allclose(spy.states[0][0], expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(spy.states[0][0], states, rtol=1e-3, atol=1e-4)


def test_learned_tokens_can_be_weighted(model):
    rng = np.random.default_rng(1)
    added = {"<thing>": rng.standard_normal((2, model.hidden_size)).astype(np.float32)}  # two vectors
    spy = ConditioningSpy(model)
    generate(spy, "a (<thing>:2) on a table", guidance_scale=1.0, steps=1, added_embeddings=added,
             prompt_weighting="a1111")
    plain = ConditioningSpy(model)
    generate(plain, "a <thing> on a table", guidance_scale=1.0, steps=1, added_embeddings=added)
    ratio = spy.states[0][0] / plain.states[0][0]
    scale = ratio[0, 0]  # the start token: weight 1, times the rescale
    assert np.allclose(ratio[2:4], 2 * scale, rtol=1e-4) and np.allclose(ratio[4:], scale, rtol=1e-4)


def test_what_cannot_be_honoured_is_said(model):
    for prompt in ("a (red:1.3) star", "a ((red)) star", "a [red] star"):  # (brackets alone weigh in A1111 too)
        with pytest.warns(UserWarning, match=r"uses A1111's emphasis syntax '\(words:1.3\)', '\(\(words\)\)', "
                                             r"'\[words\]', read here as plain text"):
            generate(model, prompt, steps=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        generate(model, "a (red:1.3) star", steps=1, prompt_weighting="a1111")  # honoured: nothing to say
        generate(model, "a red star BREAK blue", steps=1, prompt_weighting="a1111")
    with pytest.raises(ZoodipError, match="unknown prompt_weighting"):
        generate(model, "a star", steps=1, prompt_weighting="A1111")
    with pytest.raises(ZoodipError, match="cannot read the emphasis weight"):
        generate(model, "a (star:1..2)", steps=1, prompt_weighting="a1111")


def test_the_cli_flag(tiny_export, tmp_path, capsys):
    common = ["generate", "--model", str(tiny_export), "--steps", "2", "--threads", "1"]
    for name, flags in (("plain", ["--prompt", "a red star"]),
                        ("none", ["--prompt", "a (red:1.6) star"]),
                        ("a1111", ["--prompt", "a (red:1.6) star", "--prompt_weighting", "a1111"])):
        assert main(common + flags + ["--out", str(tmp_path / f"{name}.png")]) == 0, capsys.readouterr().err
    assert "read here as plain text" in capsys.readouterr().err
    images = {name: np.asarray(Image.open(tmp_path / f"{name}.png")) for name in ("plain", "none", "a1111")}
    assert not np.array_equal(images["plain"], images["a1111"]) and not np.array_equal(images["none"], images["a1111"])
    assert main(common + ["--prompt", "a star", "--prompt-weighting", "compel", "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "invalid choice: 'compel'" in err and not (tmp_path / "x.png").exists()


class Fixed77(ConditioningSpy):
    """The model as an export made before the UNet took text states of any length (77 only)."""

    text_length_free = False


LONG = "a photo of a red star on a blue background, " * 9  # 99 tokens: two chunks


def test_a_long_prompt_is_read_in_chunks_encoded_apart(model):
    spy = ConditioningSpy(model)
    generate(spy, LONG + "(yellow:1.3)", guidance_scale=1.0, steps=1, prompt_weighting="a1111")
    tokens = model.tokenizer.encode(LONG + "yellow")
    assert len(spy.states) == 1 and spy.states[0].shape == (1, 2 * 77, model.hidden_size)
    # Each chunk is [start, its tokens, end, padding] through the text encoder on its own; a comma ends the first.
    comma = model.tokenizer.encode(",")[0]
    cut = max(k for k in range(75) if tokens[k] == comma) + 1
    assert 75 - cut < 20  # within A1111's comma backtrack
    rows = np.full((2, 77), model.tokenizer.pad_id)
    for row, part in enumerate((tokens[:cut], tokens[cut:])):
        rows[row, : len(part) + 2] = [model.tokenizer.bos_id, *part, model.tokenizer.eos_id]
    states = np.asarray(model.encode_text(rows), np.float32)
    assert np.allclose(spy.states[0][0, :77], states[0], rtol=1e-5, atol=1e-6)  # no emphasis in the first chunk
    weighted = states[1] * np.where(np.arange(77) == 1 + len(tokens) - 1 - cut, 1.3, 1.0)[:, None].astype(np.float32)
    weighted *= states[1].mean(dtype=np.float64) / weighted.mean(dtype=np.float64)  # rescaled within its chunk
    assert np.allclose(spy.states[0][0, 77:], weighted, rtol=1e-5, atol=1e-6)


def test_prompts_of_different_lengths_run_apart(model):
    spy = ConditioningSpy(model)
    images = generate(spy, LONG, negative_prompt="blurry", steps=2, seed=3, prompt_weighting="a1111")
    assert [len(s[0]) for s in spy.states] == [77, 154, 77, 154]  # unconditional first, as diffusers orders them
    assert np.isfinite(np.asarray(images[0], np.float32)).all()
    even = ConditioningSpy(model)  # both long: one batch, as before
    generate(even, LONG, negative_prompt=LONG.replace("red", "green"), steps=1, prompt_weighting="a1111")
    assert [s.shape[:2] for s in even.states] == [(2, 154)]


def test_break_starts_a_chunk_and_matches_the_chunk_written_alone(model):
    spy = ConditioningSpy(model)
    generate(spy, "a red star BREAK on a blue background", guidance_scale=1.0, steps=1, prompt_weighting="a1111")
    expected = np.asarray(model.encode_text(model.tokenizer(["a red star", "on a blue background"])), np.float32)
    assert np.allclose(spy.states[0][0], expected.reshape(-1, model.hidden_size), rtol=1e-5, atol=1e-6)


def test_an_export_reading_77_states_keeps_its_old_reading(model):
    """Older exports: a long prompt is cut (with the re-export hint) and BREAK is a word, each said once."""
    with pytest.warns(UserWarning) as said:
        generate(Fixed77(model), LONG + "BREAK blue", steps=1, prompt_weighting="a1111")
    messages = [str(w.message) for w in said]
    assert any("cut off" in m and "re-export" in m for m in messages) and any("BREAK" in m for m in messages)
    spy = Fixed77(model)
    with pytest.warns(UserWarning):
        generate(spy, LONG, guidance_scale=1.0, steps=1, prompt_weighting="a1111")
    assert spy.states[0].shape == (1, 77, model.hidden_size)
    with pytest.warns(UserWarning, match="cut off: shorten it$"):  # diffusers' reading: no hint, whatever the export
        generate(model, LONG, steps=1)


def test_a_learned_token_past_the_first_chunk_counts_as_used(model):
    added = {"<thing>": np.random.default_rng(1).standard_normal((2, model.hidden_size)).astype(np.float32)}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        generate(model, LONG + "<thing>", steps=1, added_embeddings=added, prompt_weighting="a1111")
    with pytest.warns(UserWarning) as said:
        generate(model, LONG + "<thing>", steps=1, added_embeddings=added)
    assert any("comes after the prompt's 75-token limit" in str(w.message) for w in said)


def test_too_long_a_prompt_is_one_clear_error(model):
    with pytest.raises(ZoodipError, match="takes 5 chunks of 75 tokens; at most 4 are read"):
        generate(model, "star " * 301, steps=1, prompt_weighting="a1111")

"""generate(clip_skip=k), ``zoodip generate --clip-skip`` and ``personalize --clip-skip``: the UNet conditioned on an
inner layer of the text encoder (its agreement with diffusers' ``clip_skip``: tests/integration/test_export.py)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from zoodip.cli import main
from zoodip.errors import ZoodipError
from zoodip.generate import generate
from zoodip.model import ExportedModel
from model_spies import ConditioningSpy



def test_the_unet_sees_the_skipped_layers_states(model):
    assert model.clip_skip_layers == 1  # the tiny text encoder has 2 layers
    ids = model.tokenizer(["a red star", "blurry"])
    last, inner = model.encode_text(ids), model.encode_text(ids, clip_skip=1)
    assert inner.shape == last.shape and not np.allclose(inner, last, atol=1e-3)
    spy = ConditioningSpy(model)
    generate(spy, "a red star", negative_prompt="blurry", steps=1, clip_skip=1)
    assert np.array_equal(spy.states[0], inner[::-1])  # unconditional first
    plain = ConditioningSpy(model)
    generate(plain, "a red star", negative_prompt="blurry", steps=1)
    assert np.array_equal(plain.states[0], last[::-1])


def test_clip_skip_with_long_prompts_and_emphasis(model):
    spy = ConditioningSpy(model)
    generate(spy, "a red star BREAK (blue:1.2)", guidance_scale=1.0, steps=1, clip_skip=1, prompt_weighting="a1111")
    inner = model.encode_text(model.tokenizer(["a red star", "blue"]), clip_skip=1)
    assert spy.states[0].shape == (1, 154, model.hidden_size)
    assert np.allclose(spy.states[0][0, :77], inner[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bad", [2, -1, 1.0, True, "1"])
def test_a_skip_the_text_encoder_cannot_make_is_one_line(model, bad):
    with pytest.raises(ZoodipError, match=r"clip_skip must be an integer from 0 to 1 \(.*A1111's 'Clip skip' N is N - 1"):
        generate(model, "a star", steps=1, clip_skip=bad)


def test_an_export_without_inner_states_says_to_re_export(model):
    with pytest.raises(ZoodipError, match=r"made before clip skip\): re-export the model"):
        generate(ConditioningSpy(model, clip_skip_layers=0), "a star", steps=1, clip_skip=1)
    generate(ConditioningSpy(model, clip_skip_layers=0), "a star", steps=1)  # no skip: as before


def test_the_cli_flag_in_both_spellings(tiny_export, tmp_path, capsys):
    common = ["generate", "--model", str(tiny_export), "--prompt", "a red star", "--steps", "2", "--threads", "1"]
    for name, flags in (("plain", []), ("skip", ["--clip-skip", "1"]), ("diffusers", ["--clip_skip", "1"])):
        assert main(common + flags + ["--out", str(tmp_path / f"{name}.png")]) == 0, capsys.readouterr().err
    images = {name: np.asarray(Image.open(tmp_path / f"{name}.png")) for name in ("plain", "skip", "diffusers")}
    assert np.array_equal(images["skip"], images["diffusers"]) and not np.array_equal(images["plain"], images["skip"])
    assert main(common + ["--clip-skip", "2", "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--clip-skip must be an integer from 0 to 1" in err and not (tmp_path / "x.png").exists()


def test_info_on_an_export_folder_says_what_it_offers(tiny_export, tmp_path, capsys):
    assert main(["info", str(tiny_export)]) == 0
    out = capsys.readouterr().out
    assert "clip skip: up to 1" in out and "long prompts: A1111's 75-token chunks" in out and "text width 32" in out
    (tmp_path / "x.safetensors").write_bytes(b"")
    assert main(["info", str(tmp_path)]) == 2  # a folder that is not an export: one line, not a traceback
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'zoodip info' reads one embedding file, an export folder or an image" in err


@pytest.mark.parametrize("entry", [5, None, {"shape": "x"}, {"shape": ["batch", "n", 77, 32]}, {"shape": ["batch", 0, 77, 32]}])
def test_a_manifest_that_does_not_say_means_no_clip_skip(tiny_export, entry):
    """Whatever a (hand-edited) manifest holds where the inner states are described, it reads as 'none', not a crash."""
    model = ExportedModel.load(tiny_export)
    model.manifest = {**model.manifest, "graphs": {**model.manifest["graphs"]}}
    model.manifest["graphs"]["text_encoder"] = {**model.manifest["graphs"]["text_encoder"],
                                                "outputs": {"clip_skip_states": entry}}
    model.manifest["graphs"]["unet"] = {**model.manifest["graphs"]["unet"], "inputs": entry}
    assert model.clip_skip_layers == 0 and model.text_length_free is False
    with pytest.raises(ZoodipError, match="made before clip skip"):
        generate(model, "a star", steps=1, clip_skip=1)


def test_the_training_loss_reads_the_skipped_layer(model):
    from zoodip.denoising_loss import DenoisingLoss

    ids = model.tokenizer(["a photo of a star"])[0]
    star = int(ids[4])  # the "star" token stands in for a placeholder
    rng = np.random.default_rng(0)
    candidates = model.token_embeddings[[star, star]] + 0.01 * rng.standard_normal((2, model.hidden_size))
    x_t = rng.standard_normal((model.latent_channels, model.sample_size, model.sample_size)).astype(np.float32)
    target = rng.standard_normal(x_t.shape).astype(np.float32)
    skipped = DenoisingLoss(model, star, clip_skip=1)
    inputs = skipped.text_inputs(ids, candidates)
    cond = model.text_encoder(inputs, clip_skip=1)
    pred = model.unet(np.stack([x_t, x_t]), np.full(2, 700, np.float32), cond)
    want = np.mean(np.square(pred - target[None], dtype=np.float64), axis=(1, 2, 3))
    assert np.allclose(skipped(ids, candidates, x_t, 700, target), want, rtol=1e-6)
    assert not np.allclose(DenoisingLoss(model, star)(ids, candidates, x_t, 700, target), want, rtol=1e-3)


def test_personalize_with_clip_skip_records_it_and_resumes_only_with_it(tiny_export, photos, tmp_path, capsys):
    from cli_helpers import personalize_args, run_cli
    from zoodip.embeddings import read_embedding_metadata

    out = tmp_path / "run"
    code, _, err = run_cli(personalize_args(tiny_export, photos, out, "--clip-skip", "1"), capsys)
    assert code == 0, err
    settings = read_embedding_metadata(out / "learned_embeds.safetensors")["settings"]
    assert '"clip_skip": 1' in settings
    code, _, err = run_cli(personalize_args(tiny_export, photos, out, "--resume", "--max_train_steps", "5"), capsys)
    assert code == 2 and "belongs to a run with other settings" in err  # without it: another run
    code, _, err = run_cli(personalize_args(tiny_export, photos, out, "--clip_skip", "1", "--resume",
                                            "--max_train_steps", "5"), capsys)
    assert code == 0, err
    # Generation with the embedding says where its layer differs from the one it learned.
    common = ["generate", "--model", tiny_export, "--embedding", out / "learned_embeds.safetensors", "--steps", "1",
              "--prompt", "a photo of <striped-star>", "--threads", "1", "--out", tmp_path / "x.png"]
    code, _, err = run_cli(common, capsys)
    assert code == 0 and "was trained at --clip-skip 1 and is used at --clip-skip 0: pass --clip-skip 1" in err
    code, _, err = run_cli(common + ["--clip-skip", "1"], capsys)
    assert code == 0 and "clip-skip" not in err


@pytest.mark.parametrize("skip, message", [("2", "--clip-skip must be an integer from 0 to 1"),
                                           ("-1", "--clip-skip must be a whole number of layers")])
def test_a_skip_the_text_encoder_cannot_make_is_refused_before_training(tiny_export, photos, tmp_path, capsys,
                                                                        skip, message):
    from cli_helpers import assert_one_line_error, personalize_args, run_cli

    out = tmp_path / "run"
    code, _, err = run_cli(personalize_args(tiny_export, photos, out, "--clip-skip", skip), capsys)
    assert_one_line_error(code, err, message)
    assert not any(out.glob("*.safetensors"))


def test_a_job_generates_at_the_clip_skip_it_learned(tiny_export, photos, tmp_path):
    from zoodip.api import PersonalizationJob
    from zoodip.embeddings import load_embedding_file
    from zoodip.model import RuntimeOptions
    from zoodip.trainer import PersonalizeConfig

    job = PersonalizationJob(PersonalizeConfig(
        export_dir=tiny_export, images=photos, output_dir=tmp_path / "job", placeholder_token="<striped-star>",
        initializer_token="star", max_train_steps=3, eval_every=3, eval_timesteps=1, tau=4, threads=1, clip_skip=1))
    job.start().wait(120)
    token, vectors = load_embedding_file(job.result.embedding_path)
    same = ExportedModel.load(tiny_export, RuntimeOptions(threads=1))
    prompt = "a photo of <striped-star>"

    def image(images):
        return np.asarray(images[0])

    def at(skip):
        return image(generate(same, prompt, steps=2, added_embeddings={token: vectors}, clip_skip=skip))

    assert np.array_equal(image(job.generate(prompt, steps=2)), at(1)) and not np.array_equal(at(1), at(0))
    assert np.array_equal(image(job.generate(prompt, steps=2, clip_skip=0)), at(0))

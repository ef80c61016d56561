"""An SD2.x-shaped model end to end: export, personalize, generate (v-prediction, pad "!", linear projections).

The tiny SD2 folder (zoodip_export.tiny, flavor "sd2") differs from the SD1 one where SD2.x folders differ
from SD1.x ones: the UNet predicts v, the tokenizer pads with "!", the UNet's transformers use linear
projections and per-block head counts, the text encoder uses gelu and DDIM is the shipped scheduler.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from cli_helpers import TOKEN, personalize_args, run_cli
from benchmarks._fidelity import finite_difference_fidelity
from zoodip.embeddings import load_embedding_file
from zoodip.model import ExportedModel, RuntimeOptions
from zoodip.trainer import PersonalizeConfig, Personalizer

pytest.importorskip("torch")


@pytest.fixture(scope="module")
def sd2_folder(tmp_path_factory):
    from zoodip_export.tiny import build_tiny_sd_folder

    return build_tiny_sd_folder(tmp_path_factory.mktemp("sd2") / "tiny-sd2", seed=0, flavor="sd2")


@pytest.fixture(scope="module")
def sd2_export(sd2_folder, tmp_path_factory):
    """Exported as a user would (``zoodip export``), with the export's parity check against the torch model."""
    from zoodip.cli import main

    out = tmp_path_factory.mktemp("sd2-export") / "sd2-int8"
    assert main(["export", str(sd2_folder), str(out), "--curvature-samples", "2", "--quiet"]) == 0
    return out


def test_the_export_records_what_makes_it_sd2(sd2_export):
    manifest = json.loads((sd2_export / "manifest.json").read_text())
    model = ExportedModel.load(sd2_export, RuntimeOptions(threads=1))
    assert model.schedule.prediction_type == "v_prediction"
    ids = model.tokenizer("a photo of a star")[0]
    # After the prompt and its end marker, SD2 pads with the bare "!" (id 0 in CLIP's vocabulary), not
    # with the end marker as SD1 does.
    assert model.tokenizer.pad_id == 0 and ids[-1] == 0 and ids[6] == 49407 and ids[5] != 0
    parity = manifest.get("parity") or {}
    assert parity, "the export ran its parity check"


def test_training_targets_the_velocity(sd2_export, photos, tmp_path):
    config = PersonalizeConfig(export_dir=sd2_export, images=photos, output_dir=tmp_path / "run", placeholder_token=TOKEN,
                               initializer_token="star", threads=1, tau=4)
    trainer = Personalizer(config)
    sample = trainer.draw_inputs(np.random.default_rng(5))
    x0 = trainer.latents[sample.photo, sample.view]
    schedule, when = trainer.model.schedule, np.array([sample.t])
    velocity = schedule.velocity(x0[None], sample.noise[None], when)[0]
    np.testing.assert_allclose(sample.target, velocity, rtol=0, atol=1e-6)
    assert not np.allclose(sample.target, sample.noise, atol=1e-2)  # not the epsilon target


def test_finite_differences_are_smooth_on_sd2(sd2_export, sd2_folder, photos):
    correlation, slope = finite_difference_fidelity(sd2_export, sd2_folder, photos)
    assert correlation >= 0.9 and 0.5 < slope < 1.5, (correlation, slope)


def test_personalize_then_generate(sd2_export, photos, tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, err = run_cli(personalize_args(sd2_export, photos, out, "--max_train_steps", "6", "--eval-every", "3"), capsys)
    assert code == 0, err
    token, vectors = load_embedding_file(out / "learned_embeds.safetensors")
    initial = ExportedModel.load(sd2_export, RuntimeOptions(threads=1))
    star = initial.token_embeddings[initial.tokenizer.token_ids_for_word("star")[0]]
    assert token == TOKEN and vectors.shape == (1, 32) and not np.allclose(vectors[0], star)
    image = tmp_path / "gen.png"
    code, _, err = run_cli(["generate", "--model", sd2_export, "--prompt", f"a photo of {TOKEN}", "--embedding",
                            out / "learned_embeds.safetensors", "--steps", "3", "--out", image, "--threads", "1"], capsys)
    assert code == 0, err
    from PIL import Image

    assert Image.open(image).size == (128, 128)


def test_long_prompts_and_clip_skip_on_sd2(sd2_export):
    """SD2's tokenizer pads with '!' rather than the end token: each A1111 chunk is laid out as diffusers lays out
    one prompt (start, tokens, end, padding), which is also A1111's layout for SD2."""
    from zoodip.emphasis import chunked_token_ids
    from zoodip.generate import generate

    model = ExportedModel.load(sd2_export, RuntimeOptions(threads=1))
    tokenizer = model.tokenizer
    assert tokenizer.pad_id != tokenizer.eos_id
    ids, _ = chunked_token_ids(tokenizer, "dog " * 80)
    assert np.array_equal(ids[1], tokenizer(["dog " * 5])[0])  # the second chunk: the last 5 words
    assert model.clip_skip_layers >= 1 and model.text_length_free
    image = generate(model, "dog " * 80 + "BREAK a star", steps=2, prompt_weighting="a1111", clip_skip=1)[0]
    assert image.size == (128, 128) and np.isfinite(np.asarray(image, float)).all()

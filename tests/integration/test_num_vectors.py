"""Several vectors per token (``--num_vectors``, issue 20): training, both file formats, loading, resuming,
and the one-vector path left as it was."""
from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np
import pytest

from zoodip.config import PersonalizeConfig
from zoodip.embeddings import load_embedding_file, load_embeddings, read_embedding_metadata
from zoodip.generate import generate
from zoodip.model import ExportedModel
from zoodip.search_space import block_diagonal
from zoodip.trainer import EMBEDDING_NAME, Personalizer, personalize

from cli_helpers import TOKEN, assert_one_line_error, personalize_args, run_cli

WIDTH = 32  # the tiny export's text width


def two_vector_config(export, photos, out, **overrides) -> PersonalizeConfig:
    settings = dict(export_dir=export, images=photos, output_dir=out, placeholder_token=TOKEN, initializer_token="star",
                    num_vectors=2, max_train_steps=4, eval_every=0, checkpoint_every=2, tau=4, threads=1)
    return PersonalizeConfig(**{**settings, **overrides})


@pytest.fixture(scope="module")
def two_vector_run(tiny_export, photos, tmp_path_factory):
    """A finished 2-vector run with an A1111 copy of its embedding."""
    out = tmp_path_factory.mktemp("nv") / "run"
    personalize(two_vector_config(tiny_export, photos, out, a1111=True))
    return out


def test_the_token_is_trained_as_two_vectors_and_saved_as_diffusers_does(tiny_export, two_vector_run):
    token, vectors = load_embedding_file(two_vector_run / EMBEDDING_NAME)
    assert token == TOKEN and vectors.shape == (2, WIDTH) and vectors.dtype == np.float32
    assert read_embedding_metadata(two_vector_run / EMBEDDING_NAME)["num_vectors"] == "2"
    model = ExportedModel.load(tiny_export)
    start = model.token_embeddings[model.tokenizer.token_ids_for_word("star")[0]]
    assert np.all(np.linalg.norm(vectors - start, axis=1) > 0)  # each vector was searched and moved


def test_the_search_space_is_one_basis_per_vector(tiny_export, photos, tmp_path):
    trainer = Personalizer(two_vector_config(tiny_export, photos, tmp_path / "run"))
    per_vector = trainer.curvature.basis(trainer.config.curvature_fraction)
    k = per_vector.shape[1]
    assert trainer.estimator.basis.shape == (2 * WIDTH, 2 * k) and trainer.estimator.search_dim == 2 * k
    np.testing.assert_array_equal(trainer.estimator.basis[WIDTH:, k:], per_vector)
    assert not trainer.estimator.basis[:WIDTH, k:].any() and not trainer.estimator.basis[WIDTH:, :k].any()
    assert trainer.optimizer.dim == trainer.projector.dim == 2 * WIDTH and trainer.v.shape == (2 * WIDTH,)
    # Both vectors start at the initializer word; the training prompts hold the two ids in order.
    np.testing.assert_array_equal(trainer.v[:WIDTH], trainer.v[WIDTH:])
    ids = list(trainer.model.tokenizer(trainer.prompts.eval_prompt())[0])
    first = ids.index(trainer.placeholder_ids[0])
    assert ids[first : first + 2] == trainer.placeholder_ids and trainer.loss.placeholder_ids == tuple(ids[first : first + 2])


def test_block_diagonal_keeps_one_vector_as_it_was():
    basis = np.linalg.qr(np.random.default_rng(0).standard_normal((6, 3)))[0].astype(np.float32)
    assert block_diagonal(basis, 1) is basis
    block = block_diagonal(basis, 3)
    assert block.shape == (18, 9) and block.dtype == basis.dtype
    np.testing.assert_allclose(block.T @ block, np.eye(9), atol=1e-6)


def test_generation_uses_both_vectors(tiny_export, two_vector_run):
    model = ExportedModel.load(tiny_export)
    added, groups = load_embeddings([two_vector_run / EMBEDDING_NAME], model.tokenizer, model.hidden_size)
    tokenizer = copy.deepcopy(model.tokenizer)
    ids = tokenizer.add_placeholder(TOKEN, len(added[TOKEN]))
    assert len(ids) == 2 and [i for i in tokenizer.encode(f"a photo of {TOKEN}") if i in ids] == ids
    settings = dict(steps=2, seed=3, guidance_scale=1.0, token_groups=groups)
    unet = model.unet

    def conditioning(embeddings: dict) -> np.ndarray:
        # What the UNet is given, not the 8-bit image: the tiny random UNet hardly reads its text, so a
        # vector's effect on the image can be smaller than one level of a pixel.
        seen = []

        def spy(sample, timestep, encoder_hidden_states):
            seen.append(np.array(encoder_hidden_states))
            return unet(sample, timestep, encoder_hidden_states)

        model.unet = spy
        try:
            generate(model, f"a photo of {TOKEN}", added_embeddings=embeddings, **settings)
        finally:
            model.unet = unet
        return seen[-1][0]

    reference = conditioning(added)
    changed = added[TOKEN].copy()
    # Only the second vector, along a direction that is not constant: CLIP's pre-LayerNorm layers remove a shift
    # of all of a vector's numbers by one constant (adding 1.0 everywhere changes nothing but rounding).
    changed[1] += np.random.default_rng(0).standard_normal(changed.shape[1]).astype(np.float32)
    other = conditioning({TOKEN: changed})
    second = list(tokenizer([f"a photo of {TOKEN}"])[0]).index(ids[1])  # the second vector's position
    # CLIP's causal attention: the states before the second vector stay, from it on they change.
    np.testing.assert_array_equal(other[:second], reference[:second])
    assert np.abs(other[second] - reference[second]).max() > 1e-2


def test_a1111_file_round_trips_and_answers_to_its_file_name(tiny_export, two_vector_run, tmp_path, capsys):
    a1111 = two_vector_run / "striped-star.safetensors"
    _, diffusers_vectors = load_embedding_file(two_vector_run / EMBEDDING_NAME)
    token, vectors = load_embedding_file(a1111)
    assert token == TOKEN and np.array_equal(vectors, diffusers_vectors)
    assert read_embedding_metadata(a1111)["num_vectors"] == "2"
    from zoodip.safetensors_io import read_file

    tensors, _ = read_file(a1111)
    assert list(tensors) == ["emb_params"] and tensors["emb_params"].shape == (2, WIDTH)
    out = tmp_path / "a.png"
    code, stdout, err = run_cli(["generate", "--model", tiny_export, "--embedding", a1111, "--prompt",
                                 "a photo of striped-star", "--steps", "1", "--out", out], capsys)
    assert code == 0 and out.is_file() and "warning" not in err, err


def test_cli_trains_several_vectors_and_refuses_resuming_with_another_count(tiny_export, photos, tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, err = run_cli(personalize_args(tiny_export, photos, out, "--num_vectors", "3", "--a1111"), capsys)
    assert code == 0, err
    assert f"A1111 embedding: {out / 'striped-star.safetensors'}" in stdout
    assert load_embedding_file(out / EMBEDDING_NAME)[1].shape == (3, WIDTH)
    for count in ("1", "2"):
        code, _, err = run_cli(personalize_args(tiny_export, photos, out, "--num_vectors", count, "--resume"), capsys)
        assert_one_line_error(code, err, "holds 3 vectors per token but this run asks for --num_vectors " + count)


@pytest.mark.parametrize("extra,needle", [
    (["--num_vectors", "0"], "--num_vectors must be an integer from 1 to 75"),
    (["--num_vectors", "76"], "--num_vectors must be an integer from 1 to 75"),
    # 75 vectors and a template's words do not fit in the text encoder's 75 tokens.
    (["--num_vectors", "75"], "use a smaller --num_vectors"),
    (["--placeholder_token", "<a/b>", "--a1111"], "--a1111: the token '<a/b>' makes no A1111 file name"),
    (["--placeholder_token", "<learned_embeds>", "--a1111"], "like the run's diffusers files"),
])
def test_bad_values_are_refused_in_one_line_before_any_output(tiny_export, photos, tmp_path, capsys, extra, needle):
    out = tmp_path / "run"
    code, _, err = run_cli(personalize_args(tiny_export, photos, out, *extra), capsys)
    assert_one_line_error(code, err, needle)
    assert not out.exists()


def test_fingerprint_of_one_vector_is_unchanged():
    # Computed by the code before --num_vectors existed: a one-vector checkpoint still resumes.
    config = PersonalizeConfig(export_dir=Path("e"), images=Path("p"), output_dir=Path("o"),
                               placeholder_token="<striped-star>", initializer_token="star")
    assert config.fingerprint() == "c5f81a0f7bfc414b"
    assert dataclasses.replace(config, a1111=True).fingerprint() == "c5f81a0f7bfc414b"  # output only
    assert dataclasses.replace(config, num_vectors=2).fingerprint() != "c5f81a0f7bfc414b"


def test_the_tau_warning_counts_all_vectors(tiny_export, photos, tmp_path):
    """With K vectors the history must stay below K x width: the warning names that length, not the width."""
    config = PersonalizeConfig(export_dir=tiny_export, images=photos, output_dir=tmp_path / "run", placeholder_token="<k2>",
                               initializer_token="star", num_vectors=2, tau=64, threads=1)
    with pytest.warns(UserWarning, match=r"tau=64 >= 64 numbers learned \(2 vectors\)"):
        Personalizer(config)

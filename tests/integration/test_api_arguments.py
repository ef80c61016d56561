"""An app backend's mistakes with generate() and the embedding loaders: each one ZoodipError line before any work,
not an AttributeError, a NumPy ValueError, an OverflowError or a call that never returns (a sweep's finds)."""
from __future__ import annotations

import time

import numpy as np
import pytest
from PIL import Image

from zoodip.embeddings import load_embedding_file, load_embeddings
from zoodip.errors import ZoodipError
from zoodip.generate import generate
from zoodip.hires import generate_hires


@pytest.mark.parametrize("model_given, needle", [
    (None, "model must be an ExportedModel (ExportedModel.load(path)), got NoneType"),
    ("an export folder", "model must be a loaded model, got the path 'an export folder'"),
    (object(), "model must be an ExportedModel"),
])
def test_what_is_not_a_loaded_model_is_refused(model_given, needle):
    for run in (generate, generate_hires):
        with pytest.raises(ZoodipError) as caught:
            run(model_given, "a photo")
        assert str(caught.value).startswith(needle)


def test_a_closed_pil_image_is_one_line(model, tmp_path):
    Image.new("RGB", (64, 64)).save(tmp_path / "start.png")
    closed = Image.open(tmp_path / "start.png")
    closed.close()
    with pytest.raises(ZoodipError, match=r"^image cannot be read \(Operation on closed image\): pass it before"):
        generate(model, "a photo", steps=1, image=closed, strength=0.5)
    with pytest.raises(ZoodipError, match=r"^mask_image cannot be read"):
        generate(model, "a photo", steps=1, image=Image.new("RGB", (64, 64)), mask_image=closed)


def test_added_embeddings_of_ragged_rows_or_more_vectors_than_a_prompt_holds(model):
    hidden = model.hidden_size
    with pytest.raises(ZoodipError, match="its rows differ in length"):
        generate(model, "a <q>", steps=1, added_embeddings={"<q>": [[1.0] * hidden, [1.0] * (hidden - 1)]})
    started = time.monotonic()  # 10^5 rows were registered one by one, each rebuilding the tables: no end in sight
    with pytest.raises(ZoodipError, match="has 100000 vectors, more than a prompt's 75 tokens can hold"):
        generate(model, "a <q>", steps=1, added_embeddings={"<q>": np.zeros((10**5, hidden), np.float32)})
    assert time.monotonic() - started < 10


def test_token_groups_must_name_the_given_embeddings(model):
    vector = np.zeros((1, model.hidden_size), np.float32)
    for added in ({"<q>": vector}, None):  # a stray name was said as unused, or (no embeddings) read as words
        with pytest.raises(ZoodipError, match="token_groups names '<zzz>', which added_embeddings does not hold"):
            generate(model, "a <zzz>", steps=1, added_embeddings=added, token_groups=[["<zzz>"]])
    assert len(generate(model, "a <q>", steps=1, added_embeddings={"<q>": vector}, token_groups=[["<q>"]])) == 1


def test_embedding_loaders_refuse_what_is_not_a_path():
    with pytest.raises(ZoodipError, match="path must be a file path .*got NoneType"):
        load_embedding_file(None)
    with pytest.raises(ZoodipError, match="does not exist"):  # bytes are a path, as the OS decodes them
        load_embedding_file(b"missing.safetensors")
    with pytest.raises(ZoodipError, match="an embedding spec must be a file path .*got NoneType"):
        load_embeddings([None])
    with pytest.raises(ZoodipError, match=r"an embedding spec as a tuple is \(PATH, TOKEN or None\)"):
        load_embeddings([("a.safetensors",)])
    with pytest.raises(ZoodipError, match="hidden must be the text encoder's width"):
        load_embeddings(["missing.safetensors"], hidden=True)


@pytest.mark.parametrize("given", [[5], [None], (3.5,)])
def test_load_textual_inversion_refuses_a_list_entry_that_is_no_path_in_one_line(tiny_export, given):
    """A list holding a number or None was os.fspath's TypeError ('expected str, bytes or os.PathLike object, not
    int'), a traceback where a path that is no path is a ZoodipError everywhere else."""
    from zoodip.pipeline import ZoodipPipeline

    with ZoodipPipeline.from_pretrained(tiny_export) as pipe:
        with pytest.raises(ZoodipError, match=f"an embedding spec must be a file path .*got {type(given[0]).__name__}"):
            pipe.load_textual_inversion(given)


def test_a_model_closes_its_sessions_and_refuses_use_after(tiny_export):
    """An app could free a model's onnxruntime sessions only by dropping every reference to it."""
    from zoodip.model import ExportedModel
    from zoodip.pipeline import ZoodipPipeline

    with ExportedModel.load(tiny_export) as model:
        generate(model, "a photo", steps=1)
        assert model._sessions and not model.closed
    assert model.closed and not model._sessions
    model.close()  # twice: nothing more to do
    for use in (lambda: generate(model, "a photo", steps=1), lambda: model.session("unet")):
        with pytest.raises(ZoodipError, match=r"^this model was closed \(close\(\)\): open the export again"):
            use()
    with ZoodipPipeline.from_pretrained(tiny_export) as pipe:
        pipe("a photo", num_inference_steps=1)
    assert pipe.model.closed
    with pytest.raises(ZoodipError, match=r"this model was closed.*ZoodipPipeline\.from_pretrained"):
        pipe("a photo", num_inference_steps=1)  # (a pipeline's user is sent to the pipeline's opening)


@pytest.mark.parametrize("given, needle", [
    (dict(num_inference_steps=2), r"{name}\(\) takes steps=, not diffusers' num_inference_steps="),
    (dict(num_images_per_prompt=2), r"{name}\(\) takes num_images=, not diffusers' num_images_per_prompt="),
    (dict(generator=object()), r"{name}\(\) does not take generator=: pass seed=INT"),
    (dict(stepz=2), r"{name}\(\) does not take stepz=: it takes .*steps"),
])
def test_diffusers_names_given_to_generate_are_one_line_naming_its_own(model, given, needle):
    """generate(model, prompt, num_inference_steps=...) was Python's TypeError, which named no zoodip name (and
    generate_hires named generate(), which it passes them to)."""
    for run in (generate, generate_hires):
        with pytest.raises(ZoodipError, match=needle.format(name=run.__name__)) as caught:
            run(model, "a photo", **given)
        assert isinstance(caught.value, TypeError) and "\n" not in str(caught.value)


def test_a_misspelt_hires_setting_is_answered_with_the_hires_names(model):
    """generate_hires(model, prompt, hires_scal=2) listed generate()'s settings only, leaving out its own hires_scale,
    hires_strength and hires_steps (the names the user was after)."""
    with pytest.raises(ZoodipError, match=r"generate_hires\(\) does not take hires_scal=: it takes .*hires_scale") as caught:
        generate_hires(model, "a photo", hires_scal=2)
    assert all(name in str(caught.value) for name in ("hires_strength", "hires_steps", "variation_seed"))

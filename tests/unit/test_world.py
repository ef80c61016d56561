"""The procedural world (reference/world.py): deterministic, distinguishable, tokenizable, valid concepts."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from reference import world  # noqa: E402


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from zoodip.tokenizer import CLIPTokenizer
    from zoodip_export.clip_vocab import write_clip_tokenizer_files

    folder = tmp_path_factory.mktemp("world_tok")
    write_clip_tokenizer_files(folder)
    return CLIPTokenizer.from_folder(folder)


def test_api_shape():
    assert set(world.ATTRIBUTES) >= {"shape", "color", "background", "style", "size"}
    assert len(world.ATTRIBUTES["shape"]) >= 7 and len(world.ATTRIBUTES["color"]) >= 8
    assert len(world.ATTRIBUTES["background"]) >= 6 and len(world.ATTRIBUTES["style"]) >= 4
    attrs = world.Attributes("star", "red", "blue", "stripes", "small")
    assert world.caption(attrs) == "a small red star with stripes on a blue background"
    with pytest.raises(ValueError):
        world.Attributes("blob", "red", "blue", "plain", "small")


def test_dataset_is_deterministic():
    a = list(world.dataset(6, seed=3))
    b = list(world.dataset(6, seed=3))
    c = list(world.dataset(6, seed=4))
    for (ia, ca, aa), (ib, cb, ab) in zip(a, b):
        assert ca == cb and aa == ab
        assert np.array_equal(np.asarray(ia), np.asarray(ib))
    assert any(not np.array_equal(np.asarray(x[0]), np.asarray(y[0])) for x, y in zip(a, c))
    image = a[0][0]
    assert image.mode == "RGB" and image.size == (world.RESOLUTION, world.RESOLUTION)
    assert world.render(a[0][2], np.random.default_rng(0), resolution=64).size == (64, 64)


def test_sampled_attributes_cover_values_and_stay_visible():
    rng = np.random.default_rng(0)
    seen = {a: set() for a in world.ATTRIBUTE_NAMES}
    for _ in range(600):
        attrs = world.sample_attributes(rng)
        assert attrs.color != attrs.background
        for a in world.ATTRIBUTE_NAMES:
            seen[a].add(getattr(attrs, a))
    assert all(seen[a] == set(world.ATTRIBUTES[a]) for a in world.ATTRIBUTE_NAMES)


def _render(**kw):
    base = dict(shape="square", color="red", background="black", style="plain", size="large")
    base.update(kw)
    return np.asarray(world.render(world.Attributes(**base), np.random.default_rng(1)), dtype=np.float64)


def test_attributes_render_distinguishably():
    # Same rng draws (same position/rotation/scale): every single attribute change changes the pixels clearly.
    reference = _render()
    for name, values in world.ATTRIBUTES.items():
        for value in values:
            if value == {"shape": "square", "color": "red", "background": "black", "style": "plain", "size": "large"}[name]:
                continue
            changed = _render(**{name: value})
            assert np.abs(changed - reference).mean() > 2.0, (name, value)
    # Background colour fills the corners; the shape's colour is in the image.
    image = _render(background="green", color="yellow", size="small")
    corner = image[0, 0]
    assert np.abs(corner - np.array(world.BACKGROUNDS["green"])).max() <= 10
    assert (np.abs(image - np.array(world.COLORS["yellow"])).max(axis=2) <= 12).any()
    # Large shapes cover more pixels than small ones.
    def coverage(size):
        img = _render(size=size)
        return (np.abs(img - img[0, 0]).sum(axis=2) > 60).mean()
    assert coverage("large") > 1.8 * coverage("small")


def test_captions_use_single_clip_tokens(tokenizer):
    for name, values in world.ATTRIBUTES.items():
        for value in values:
            assert len(tokenizer.token_ids_for_word(value)) == 1, (name, value)
    rng = np.random.default_rng(0)
    for _ in range(50):
        attrs = world.sample_attributes(rng)
        text = world.random_caption(attrs, rng)
        assert attrs.shape in text
        assert 0 < len(tokenizer.encode(world.caption(attrs))) <= 20


def test_captions_name_only_the_given_attributes_with_the_same_draws():
    rng_all, rng_few = np.random.default_rng(3), np.random.default_rng(3)
    for _ in range(200):
        attrs = world.sample_attributes(rng_all)
        assert world.sample_attributes(rng_few) == attrs
        full = world.random_caption(attrs, rng_all).split()
        few = world.random_caption(attrs, rng_few, named=("shape", "color")).split()
        assert attrs.shape in few and "background" not in few and attrs.size not in few
        assert not {"stripes", "dots", "outline"} & set(few)
        assert (attrs.color in few) == (attrs.color in full)  # the same keep/drop draw for the colour
        assert rng_all.uniform() == rng_few.uniform()  # and the stream goes on alike


def test_concepts_valid(tokenizer):
    assert len(world.CONCEPTS) >= 8
    assert len({c.name for c in world.CONCEPTS}) == len(world.CONCEPTS)
    assert len({c.attributes for c in world.CONCEPTS}) == len(world.CONCEPTS)
    for concept in world.CONCEPTS:
        assert world.compatible(concept.attributes)
        assert len(tokenizer.token_ids_for_word(concept.initializer)) == 1
        assert concept.initializer in world.SHAPES  # close (its shape word), but not the whole concept
        assert len(concept.held_out_prompts) >= 5
        for prompt in concept.held_out_prompts:
            assert prompt.count("{}") == 1
            target = world.prompt_target(concept, prompt)
            changed = [a for a in world.ATTRIBUTE_NAMES if target[a] != getattr(concept.attributes, a)]
            assert len(changed) == 1, (concept.name, prompt, changed)
            assert world.compatible(world.Attributes(**target))
            assert world.prompt_target(concept, prompt.replace("{}", concept.name)) == target
        images = world.concept_images(concept, n=5)
        assert len(images) == 5
        arrays = [np.asarray(im) for im in images]
        assert not all(np.array_equal(arrays[0], a) for a in arrays[1:])
        assert all(np.array_equal(a, np.asarray(b)) for a, b in zip(arrays, world.concept_images(concept, n=5)))
    assert world.prompt_target(world.CONCEPTS[0], "a photo of {}") == world.CONCEPTS[0].attributes.as_dict()


def test_world_is_torch_free():
    import subprocess

    code = ("import sys; sys.path.insert(0, %r); import reference.world, reference.evaluator; "
            "assert 'torch' not in sys.modules" % str(REPO))
    subprocess.run([sys.executable, "-c", code], check=True)


def test_evaluator_reads_clean_renders():
    path = REPO / "reference" / "evaluator.onnx"
    if not path.is_file():
        pytest.skip("reference/evaluator.onnx not trained")
    from reference.evaluator import Evaluator

    ev = Evaluator.load(path)
    items = list(world.dataset(60, seed=77))
    predicted = ev.predict([im for im, _, _ in items])
    for a in world.ATTRIBUTE_NAMES:
        acc = np.mean([p == getattr(attrs, a) for p, (_, _, attrs) in zip(predicted[a], items)])
        assert acc >= 0.9, (a, acc)
    feats = ev.features([im for im, _, _ in items[:4]])
    assert feats.shape[0] == 4 and np.allclose(np.linalg.norm(feats, axis=1), 1, atol=1e-5)


def test_attribute_accuracy_per_attribute_and_all_at_once():
    from reference.evaluator import attribute_accuracy

    target = {"shape": "star", "color": "red", "background": "blue", "style": "plain", "size": "small"}
    predicted = {"shape": ["star", "circle", "star"], "color": ["red", "red", "blue"], "background": ["blue"] * 3,
                 "style": ["plain", "plain", "plain"], "size": ["small"] * 3}
    per_attribute, joint = attribute_accuracy(predicted, target)
    assert per_attribute["shape"] == pytest.approx(2 / 3) and per_attribute["color"] == pytest.approx(2 / 3)
    assert per_attribute["background"] == 1.0
    assert joint == pytest.approx(1 / 3)  # only the first image is right on all five

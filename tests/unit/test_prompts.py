"""Prompt templates, the prompt sampler and the captions file."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from zoodip.errors import ZoodipError
from zoodip.prompts import OBJECT_TEMPLATES, STYLE_TEMPLATES, PromptSampler, load_captions

IMAGES = ["00.jpg", "01.png", "02.jpeg"]


@pytest.mark.parametrize("templates", [OBJECT_TEMPLATES, STYLE_TEMPLATES])
def test_templates_are_well_formed(templates: tuple[str, ...]) -> None:
    assert len(templates) >= 15
    assert len(set(templates)) == len(templates)
    for t in templates:
        assert t.count("{}") == 1 and t == t.strip()
        assert t.format("<x>").count("<x>") == 1


def test_object_and_style_sets() -> None:
    assert len(OBJECT_TEMPLATES) >= 20
    assert all("style of {}" in t for t in STYLE_TEMPLATES)
    assert PromptSampler("<sks>", "object").templates == OBJECT_TEMPLATES
    assert PromptSampler("<sks>", "style").templates == STYLE_TEMPLATES


def test_random_templates_cover_the_set() -> None:
    sampler = PromptSampler("<sks>", "object")
    rng = np.random.default_rng(0)
    prompts = Counter(sampler.prompt_for("00.jpg", rng) for _ in range(3000))
    assert set(prompts) == {t.format("<sks>") for t in OBJECT_TEMPLATES}
    # Roughly uniform: each of ~21 templates ~143 times; 5-sigma band.
    expected = 3000 / len(OBJECT_TEMPLATES)
    assert all(abs(c - expected) < 5 * np.sqrt(expected) for c in prompts.values())
    # Reproducible from the seed.
    again = PromptSampler("<sks>", "object")
    r1, r2 = np.random.default_rng(9), np.random.default_rng(9)
    assert [sampler.prompt_for("x", r1) for _ in range(20)] == [again.prompt_for("x", r2) for _ in range(20)]


def test_eval_prompt_is_fixed_first_template() -> None:
    assert PromptSampler("<sks>").eval_prompt() == "a photo of a <sks>"
    assert PromptSampler("<sks>", "style").eval_prompt() == "a painting in the style of <sks>"


def test_captions_replace_templates_without_using_rng() -> None:
    captions = {"00.jpg": "a <sks> dog on the beach", "01.png": "a <sks> dog asleep on a sofa"}
    sampler = PromptSampler("<sks>", captions=captions)
    rng = np.random.default_rng(0)
    state = rng.bit_generator.state
    assert sampler.prompt_for("01.png", rng) == "a <sks> dog asleep on a sofa"
    assert rng.bit_generator.state == state
    with pytest.raises(ZoodipError):
        sampler.prompt_for("99.jpg", rng)


def test_sampler_invalid_args() -> None:
    with pytest.raises(ZoodipError):
        PromptSampler("<sks>", "person")  # type: ignore[arg-type]
    with pytest.raises(ZoodipError):
        PromptSampler("")
    with pytest.raises(ZoodipError):
        PromptSampler("<sks>", captions={"00.jpg": "a dog"})


def write(tmp_path: Path, content: object | str) -> Path:
    path = tmp_path / "captions.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    return path


def test_load_captions(tmp_path: Path) -> None:
    data = {name: f"a photo of <sks> number {i}" for i, name in enumerate(IMAGES)}
    data["not-a-training-image.jpg"] = "ignored"  # extra entries are dropped, not checked
    captions = load_captions(write(tmp_path, data), IMAGES, "<sks>")
    assert captions == {name: data[name] for name in IMAGES}


def test_captions_match_file_names_in_either_unicode_form(tmp_path: Path) -> None:
    """macOS names a file "café.png" with a combining accent; a captions file typed in an editor has one letter."""
    import unicodedata

    on_disk = [unicodedata.normalize("NFD", "café.png"), "plain.png"]
    typed = {unicodedata.normalize("NFC", "café.png"): "a <sks> in a café", "plain.png": "a <sks>"}
    captions = load_captions(write(tmp_path, typed), on_disk, "<sks>")
    assert captions == {on_disk[0]: "a <sks> in a café", "plain.png": "a <sks>"}


@pytest.mark.parametrize("content", [
    "{not json",
    "",
    json.dumps(["a <sks>"]),
    json.dumps({"00.jpg": 3}),
    json.dumps({"00.jpg": "a <sks>", "01.png": "a <sks>"}),  # 02.jpeg missing
    json.dumps({name: "a photo of a dog" for name in IMAGES}),  # no placeholder
])
def test_load_captions_errors(tmp_path: Path, content: str) -> None:
    with pytest.raises(ZoodipError) as info:
        load_captions(write(tmp_path, content), IMAGES, "<sks>")
    assert "\n" not in str(info.value)


def test_load_captions_missing_file_and_bad_encoding(tmp_path: Path) -> None:
    with pytest.raises(ZoodipError):
        load_captions(tmp_path / "nope.json", IMAGES, "<sks>")
    bad = tmp_path / "latin1.json"
    bad.write_bytes('{"00.jpg": "caf\xe9 <sks>"}'.encode("latin-1"))
    with pytest.raises(ZoodipError):
        load_captions(bad, ["00.jpg"], "<sks>")


def test_missing_caption_message_names_the_images(tmp_path: Path) -> None:
    names = [f"{i:02d}.jpg" for i in range(6)]
    with pytest.raises(ZoodipError, match=r"00\.jpg, 01\.jpg, 02\.jpg and 3 more"):
        load_captions(write(tmp_path, {}), names, "<sks>")


def test_the_textual_inversion_template_files_load_as_template_files():
    """The paper's lists (diffusers, the ZOODiP authors, A1111's subject.txt/style.txt) ship as --template_file files."""
    from zoodip.prompts import TEXTUAL_INVERSION_TEMPLATE_FILES, load_template_file

    lists = {prop: load_template_file(path) for prop, path in TEXTUAL_INVERSION_TEMPLATE_FILES.items()}
    assert len(lists["object"]) == 27 and len(lists["style"]) == 19
    assert lists["object"][0] == "a photo of a [name]" and all("style of [name]" in t for t in lists["style"])
    assert len(set(lists["object"])) == 27


def test_captions_in_the_authors_format(tmp_path: Path) -> None:
    """cc.json of ignoww/ZOODiP: one object per dataset folder, the concept as a "{}" slot (caption.format(token))."""
    cc = {"cat2": {name: "a photo of {} on a sofa" for name in ("x.jpg", "y.jpg")},
          "dog6": {name: f"a photo of {{}} in scene {i}" for i, name in enumerate(IMAGES)}}
    captions = load_captions(write(tmp_path, cc), IMAGES, "<sks>")
    assert captions == {name: f"a photo of <sks> in scene {i}" for i, name in enumerate(IMAGES)}
    # The same slot in the flat format; a caption that names the token itself is kept as written.
    flat = {IMAGES[0]: "a {} photo", IMAGES[1]: "<sks> and {} braces", IMAGES[2]: "{} again"}
    assert load_captions(write(tmp_path, flat), IMAGES, "<sks>") == {
        IMAGES[0]: "a <sks> photo", IMAGES[1]: "<sks> and {} braces", IMAGES[2]: "<sks> again"}
    # Two datasets that both caption every photo: ambiguous, refused in the nested format's words.
    with pytest.raises(ZoodipError, match=r"cc\.json format, and several of its folders \('a', 'b'\) caption all"):
        load_captions(write(tmp_path, {"a": cc["dog6"], "b": cc["dog6"]}), IMAGES, "<sks>")


def test_an_authors_captions_file_whose_folders_miss_the_photos_says_the_nested_format(tmp_path: Path) -> None:
    """It said "must be a JSON object of strings: {"image file name": "caption"}", which the nested cc.json is not
    meant to be: a user of the authors' file was sent to rewrite it flat rather than to add the photos' captions."""
    cc = {"cat2": {"x.jpg": "a photo of {}"}, "dog6": {IMAGES[0]: "a photo of {}"}}
    with pytest.raises(ZoodipError) as refused:
        load_captions(write(tmp_path, cc), IMAGES, "<sks>")
    said = str(refused.value)
    assert "cc.json format" in said and "none of its folders ('cat2', 'dog6') captions all the training photos" in said
    assert IMAGES[0] in said and "must be a JSON object of strings" not in said


def test_a_captions_file_that_is_not_json_names_the_flag_and_the_format(tmp_path):
    """An A1111 user's captions.txt was "captions file X is not valid JSON (...)": no flag, no way out."""
    (tmp_path / "captions.txt").write_text("a photo of <x>\n")
    with pytest.raises(ZoodipError, match=r'^captions \S+captions\.txt is not valid JSON \(line 1, column 1: .*\): '
                                          r'write \{"photo file name": "caption"\}; A1111.s caption \.txt beside each '
                                          r"photo is read with template_file$"):
        load_captions(tmp_path / "captions.txt", ["0.png"], "<x>")

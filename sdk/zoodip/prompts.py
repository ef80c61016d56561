"""Training prompts for textual inversion.

Each training image is paired with a prompt containing the placeholder token. By default the prompt
is a random template ("a photo of a {}"), so the embedding learns the concept rather than one
sentence. Alternatively every image can have its own caption (ZOODiP's "comprehensive captioning"
option), which describes the background and pose so that the embedding need not absorb them.

Captions file format (UTF-8 JSON): ``{"image file name": "caption containing the placeholder"}``; a
caption may name the concept with a ``{}`` slot instead, and the file may hold one such object per
dataset folder, as the ZOODiP authors' ``cc.json`` does (the object that captions every photo is used).
Every training image must have a caption; entries for files that are not training images are
ignored. Requiring full coverage (rather than falling back to templates for uncaptioned images)
is deliberate: a missing caption is almost always a misspelled file name, and a silent fallback
would quietly mix two prompt styles.
"""
from __future__ import annotations

import json
import unicodedata
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal, Optional

import numpy as np

from .errors import Given, ZoodipError
from .json_text import parse_json

LearnableProperty = Literal["object", "style"]

# "{}" is replaced by the placeholder token.
OBJECT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}",
    "a rendering of the {}",
    "a close-up photo of a {}",
    "a cropped photo of the {}",
    "a bright photo of a {}",
    "a dark photo of the {}",
    "a photo of my {}",
    "a good photo of the {}",
    "a photo of one {}",
    "a snapshot of a {}",
    "a picture of the {}",
    "an image of a {}",
    "a photo of the small {}",
    "a photo of the large {}",
    "a clean photo of a {}",
    "a well-lit photo of the {}",
    "a detailed photo of a {}",
    "a rendition of a {}",
    "a photo showing the {}",
    "a candid photo of a {}",
    "a photo of a nice {}",
)

STYLE_TEMPLATES: tuple[str, ...] = (
    "a painting in the style of {}",
    "a rendering in the style of {}",
    "an artwork in the style of {}",
    "a picture in the style of {}",
    "an illustration in the style of {}",
    "a drawing in the style of {}",
    "a sketch in the style of {}",
    "a close-up painting in the style of {}",
    "a cropped painting in the style of {}",
    "a bright painting in the style of {}",
    "a dark painting in the style of {}",
    "a small painting in the style of {}",
    "a large painting in the style of {}",
    "a detailed painting in the style of {}",
    "a rendition in the style of {}",
    "a nice painting in the style of {}",
)

TEMPLATES: dict[str, tuple[str, ...]] = {"object": OBJECT_TEMPLATES, "style": STYLE_TEMPLATES}
LEARNABLE_PROPERTIES: tuple[str, ...] = tuple(TEMPLATES)  # the --learnable_property choices (LearnableProperty's)
# The textual-inversion paper's template lists, which diffusers' textual_inversion.py and the ZOODiP
# authors' code train with (and A1111 ships as subject.txt / style.txt), as --template_file files. The
# built-in lists above are this SDK's own (benchmarks/README.md compares the two).
TEXTUAL_INVERSION_TEMPLATE_FILES: dict[str, Path] = {
    prop: Path(__file__).with_name("data") / "templates" / f"textual_inversion_{prop}.txt" for prop in LEARNABLE_PROPERTIES
}


def _check_placeholder(placeholder: object) -> str:
    if not isinstance(placeholder, str) or not placeholder.strip():
        raise ZoodipError(f"the placeholder token must be a non-empty string, got {placeholder!r}")
    return placeholder


def load_captions(path: Path, image_names: Sequence[str], placeholder: str) -> dict[str, str]:
    """Read per-image captions and check them against the training images.

    Args:
        path: UTF-8 JSON file ``{"image file name": "caption"}``.
        image_names: the training images' file names (e.g. ``"01.jpg"``); each needs a caption.
        placeholder: the placeholder token; every caption used must contain it.

    Returns:
        ``{image name: caption}`` for exactly the training images (extra entries dropped).

    Raises:
        ZoodipError: unreadable file, invalid JSON, not a string-to-string object, a training
            image without a caption, or a caption without the placeholder.
    """
    placeholder = _check_placeholder(placeholder)
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ZoodipError("captions ", Given(path), " does not exist; check the path") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ZoodipError(f"cannot read captions={path} ({exc}); it must be a readable UTF-8 text file") from None
    try:
        data = parse_json(text)
    except ValueError as exc:
        where = f"line {exc.lineno}, column {exc.colno}: {exc.msg}" if isinstance(exc, json.JSONDecodeError) else exc
        raise ZoodipError(f"captions {path} is not valid JSON ({where}): write {{\"photo file name\": \"caption\"}}; "
                          "A1111's caption .txt beside each photo is read with template_file") from None
    data = _authors_dataset(data, image_names, path)
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise ZoodipError(
            f'captions {path} must be a JSON object of strings: {{"image file name": "caption"}}, or the ZOODiP '
            f'authors\' cc.json, one such object per dataset folder: {{"folder": {{"image file name": "caption"}}}}'
        )
    # The authors' captions name the concept with a "{}" slot (caption.format(placeholder)).
    # Names compared in one Unicode form: macOS writes "é" in file names as e + accent, an editor as one letter.
    data = {unicodedata.normalize("NFC", name): caption if placeholder in caption
            else caption.replace(CAPTION_SLOT, placeholder) for name, caption in data.items()}
    missing = [name for name in image_names if unicodedata.normalize("NFC", name) not in data]
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise ZoodipError(f"captions {path} has no caption for {shown}; add one caption per training image")
    captions = {name: data[unicodedata.normalize("NFC", name)] for name in image_names}
    _check_captions(captions, placeholder, source=f"captions {path}")
    return captions


CAPTION_SLOT = "{}"  # where a caption of the authors' format names the concept


def _authors_dataset(data: object, image_names: Sequence[str], path: Path) -> object:
    """The ZOODiP authors' ``cc.json`` holds one captions object per dataset folder; pick the one that
    captions every training image (anything else is returned unchanged, for the checks that follow)."""
    if not isinstance(data, dict) or not data or not all(isinstance(v, dict) for v in data.values()):
        return data
    matches = [folder for folder, v in data.items() if all(name in v for name in image_names)]
    if len(matches) == 1:
        return data[matches[0]]
    # Said in the nested format's own words: "must be an object of strings" would send the user away from it.
    folders = ", ".join(repr(folder) for folder in (matches or list(data))[:3]) + (" ..." if len(matches or data) > 3 else "")
    photos = ", ".join(image_names[:3]) + (" ..." if len(image_names) > 3 else "")
    if matches:
        raise ZoodipError(f"captions {path} is the ZOODiP authors' cc.json format, and several of its folders "
                          f"({folders}) caption all the training photos: keep only the one to use")
    raise ZoodipError(f"captions {path} is the ZOODiP authors' cc.json format ({{\"folder\": {{\"image file name\": "
                      f"\"caption\"}}}}), but none of its folders ({folders}) captions all the training photos "
                      f"({photos}): add their captions to the concept's folder, or train on that folder's photos")


def _check_captions(captions: Mapping[str, str], placeholder: str, source: str) -> None:
    for name, caption in captions.items():
        if placeholder not in caption:
            raise ZoodipError(
                f"{source}: the caption for {name} ({caption!r}) does not contain the placeholder "
                f"{placeholder!r}; put the placeholder where the concept should be named"
            )


# A1111's prompt-template words: [name] is the embedding's token, [filewords] the photo's caption.
NAME_WORD = "[name]"
FILEWORDS_WORD = "[filewords]"


def load_template_file(path: Path) -> tuple[str, ...]:
    """An A1111 prompt-template file: one template per non-empty line, each containing ``[name]``."""
    path = Path(path)
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except FileNotFoundError:
        raise ZoodipError("template_file ", Given(path), " does not exist; check the path") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ZoodipError(f"cannot read template_file {path} ({exc}); it must be a readable UTF-8 text file") from None
    templates = tuple(line for line in lines if line)
    if not templates:
        raise ZoodipError(f"template_file {path} holds no template: write one per line, e.g. 'a photo of a [name], [filewords]'")
    for number, line in enumerate(lines, 1):
        if line and NAME_WORD not in line:
            raise ZoodipError(f"template_file {path} line {number} ({line!r}) has no [name]: every template must "
                              "name the concept, e.g. 'a photo of a [name], [filewords]'")
    return templates


def caption_files(photos: Sequence[Path]) -> dict[Path, Path]:
    """The A1111 caption file of each photo that has one: ``photo.txt`` beside ``photo.jpg``."""
    return {photo: photo.with_suffix(".txt") for photo in photos if photo.with_suffix(".txt").is_file()}


def load_filewords(photos: Sequence[Path]) -> dict[str, str]:
    """``{photo file name: its caption}`` from the ``.txt`` beside each photo (whitespace collapsed)."""
    files = caption_files(photos)
    missing = [p.name for p in photos if p not in files]
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise ZoodipError(f"the template uses [filewords] but {shown} has no caption file: put a .txt beside each "
                          f"photo (e.g. {Path(missing[0]).with_suffix('.txt')}), or drop [filewords]")
    words = {}
    for photo, text_file in files.items():
        try:
            words[photo.name] = " ".join(text_file.read_text(encoding="utf-8").split())
        except (OSError, UnicodeDecodeError) as exc:
            raise ZoodipError(f"cannot read caption file {text_file} ({exc}); it must be a UTF-8 text file") from None
    return words


class PromptSampler:
    """Chooses the training prompt for each image.

    Args:
        placeholder: the placeholder token, e.g. ``"<sks>"``.
        learnable_property: ``"object"`` (a thing: "a photo of a <sks>") or ``"style"``
            ("a painting in the style of <sks>"); picks the template set.
        captions: optional ``{image name: caption}`` (see :func:`load_captions`); when given,
            each image always uses its caption instead of a random template.
        templates: A1111-style templates (see :func:`load_template_file`) instead of the built-in
            ones: ``[name]`` becomes the placeholder, ``[filewords]`` the image's ``filewords``.
    """

    def __init__(self, placeholder: str, learnable_property: LearnableProperty = "object",
                 captions: Optional[Mapping[str, str]] = None, templates: Optional[Sequence[str]] = None,
                 filewords: Optional[Mapping[str, str]] = None) -> None:
        self.placeholder = _check_placeholder(placeholder)
        if learnable_property not in TEMPLATES:
            raise ZoodipError(
                f"learnable property must be 'object' or 'style', got {learnable_property!r}"
            )
        self.learnable_property: LearnableProperty = learnable_property
        self.templates: tuple[str, ...] = TEMPLATES[learnable_property]
        self.a1111 = templates is not None
        if templates is not None:
            if captions is not None:
                # (PersonalizeConfig refuses captions with template_file first, in its words; this is the class's own.)
                raise ZoodipError("PromptSampler takes captions or templates, two ways to caption the photos: give one")
            self.templates = tuple(templates)
        self.filewords: dict[str, str] = dict(filewords or {})
        self.captions: Optional[dict[str, str]] = None if captions is None else dict(captions)
        if self.captions is not None:
            _check_captions(self.captions, self.placeholder, source="captions")

    def prompt_for(self, image_name: str, rng: np.random.Generator) -> str:
        """The prompt for one training example: the image's caption, else a random template.

        ``rng`` is only drawn from when a template is chosen, so captioned runs don't consume it.
        """
        if self.captions is not None:
            try:
                return self.captions[image_name]
            except KeyError:
                raise ZoodipError(f"no caption for training image {image_name}; add it to the captions file") from None
        template = self.templates[int(rng.integers(len(self.templates)))]
        return self._fill(template, image_name)

    def _fill(self, template: str, image_name: str | None) -> str:
        """A template with the placeholder and the image's filewords (none for ``image_name=None``)."""
        if not self.a1111:
            return template.format(self.placeholder)
        words = self.filewords.get(image_name) if image_name is not None else ""
        if words is None:
            if FILEWORDS_WORD in template:
                raise ZoodipError(f"no caption (.txt) for training image {image_name}, which the template's [filewords] needs")
            words = ""
        text = template.replace(NAME_WORD, self.placeholder).replace(FILEWORDS_WORD, words)
        return " ".join(text.replace(" ,", ",").split()).strip(" ,")  # an empty [filewords] leaves no stray comma

    def every_prompt(self, image_names: Sequence[str]) -> list[str]:
        """Every prompt training can give these images: each one's caption, or each template filled for each."""
        if self.captions is not None:
            return [self.captions[name] for name in image_names]
        return list(dict.fromkeys(self._fill(template, name) for template in self.templates for name in image_names))

    def eval_prompt(self) -> str:
        """A fixed prompt for validation images and logs: the first template (without filewords)."""
        return self._fill(self.templates[0], None)

    def eval_prompt_for(self, image_name: str) -> str:
        """The fixed evaluation prompt of one image: its caption, else the first template for it."""
        if self.captions is not None:
            return self.captions[image_name]
        return self._fill(self.templates[0], image_name)

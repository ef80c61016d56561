"""Training prompts for textual inversion.

Each training image is paired with a prompt containing the placeholder token. By default the prompt
is a random template ("a photo of a {}"), so the embedding learns the concept rather than one
sentence. Alternatively every image can have its own caption (ZOODiP's "comprehensive captioning"
option), which describes the background and pose so that the embedding need not absorb them.

Captions file format (UTF-8 JSON): ``{"image file name": "caption containing the placeholder"}``.
Every training image must have a caption; entries for files that are not training images are
ignored. Requiring full coverage (rather than falling back to templates for uncaptioned images)
is deliberate: a missing caption is almost always a misspelled file name, and a silent fallback
would quietly mix two prompt styles.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal, Optional

import numpy as np

from .errors import ZoodipError

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
        raise ZoodipError(f"captions file {path} does not exist; check the path") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ZoodipError(f"cannot read captions file {path} ({exc}); it must be a readable UTF-8 text file") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ZoodipError(
            f"captions file {path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
        ) from None
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise ZoodipError(
            f'captions file {path} must be a JSON object of strings: {{"image file name": "caption"}}'
        )
    missing = [name for name in image_names if name not in data]
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise ZoodipError(f"captions file {path} has no caption for {shown}; add one caption per training image")
    captions = {name: data[name] for name in image_names}
    _check_captions(captions, placeholder, source=f"captions file {path}")
    return captions


def _check_captions(captions: Mapping[str, str], placeholder: str, source: str) -> None:
    for name, caption in captions.items():
        if placeholder not in caption:
            raise ZoodipError(
                f"{source}: the caption for {name} ({caption!r}) does not contain the placeholder "
                f"{placeholder!r}; put the placeholder where the concept should be named"
            )


class PromptSampler:
    """Chooses the training prompt for each image.

    Args:
        placeholder: the placeholder token, e.g. ``"<sks>"``.
        learnable_property: ``"object"`` (a thing: "a photo of a <sks>") or ``"style"``
            ("a painting in the style of <sks>"); picks the template set.
        captions: optional ``{image name: caption}`` (see :func:`load_captions`); when given,
            each image always uses its caption instead of a random template.
    """

    def __init__(self, placeholder: str, learnable_property: LearnableProperty = "object",
                 captions: Optional[Mapping[str, str]] = None) -> None:
        self.placeholder = _check_placeholder(placeholder)
        if learnable_property not in TEMPLATES:
            raise ZoodipError(
                f"learnable property must be 'object' or 'style', got {learnable_property!r}"
            )
        self.learnable_property: LearnableProperty = learnable_property
        self.templates: tuple[str, ...] = TEMPLATES[learnable_property]
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
        return template.format(self.placeholder)

    def eval_prompt(self) -> str:
        """A fixed prompt for validation images and logs: the first template."""
        return self.templates[0].format(self.placeholder)

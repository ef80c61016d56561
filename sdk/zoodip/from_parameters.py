"""An image made again from the generation parameters it holds: A1111's "PNG Info -> Send to txt2img".

``image_parameters`` reads the text, ``infotext.read_infotext`` its prompts and fields, ``infotext.settings_from_fields``
the settings they give; this module says what the text needs from the caller that it cannot hold (the export it was
made with, its embedding files, its source image) and what in it does not apply here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .errors import Given, ZoodipError
from .extra_networks import lora_hashes
from .image_parameters import MAX_TEXT, read_parameters
from .infotext import is_zoodips, model_hash, read_infotext, settings_from_fields
from .paths import why_missing

# Settings that only image-to-image and inpainting read: applied where the caller gives an image (and a mask); and the
# ones that are not for image-to-image (A1111 has no hires fix there) or given latents (which are the noise already).
IMAGE_SETTINGS = ("strength",)
MASK_SETTINGS = ("mask_blur", "padding_mask_crop", "paste_back")
TEXT_TO_IMAGE_SETTINGS = ("hires_scale", "hires_strength", "hires_steps")
NOISE_SETTINGS = ("variation_seed", "variation_strength")
DDIM_SETTINGS = ("eta",)  # DDIM's noise: no other sampler takes it


def ignored_settings(*, image_given: bool, mask_given: bool, latents_given: bool, sampler: str) -> set[str]:
    """The settings of an image's parameters that do not apply to a call given these and running ``sampler``
    (``parameter_notes`` says each but DDIM's, dropped where a flag picks another sampler)."""
    return {*(TEXT_TO_IMAGE_SETTINGS if image_given else IMAGE_SETTINGS), *(() if mask_given else MASK_SETTINGS),
            *(NOISE_SETTINGS if latents_given else ()), *(() if sampler == "ddim" else DDIM_SETTINGS)}


@dataclass
class ImageParameters:
    """What an image's parameters give: its prompts, ``generate()``'s settings, the problems of settings they name
    but cannot give (by setting), the fields that are no setting here, and all the fields as written."""

    prompt: str
    negative_prompt: str
    settings: dict[str, Any]
    problems: dict[str, str]
    unused: list[str]
    fields: dict[str, str] = field(default_factory=dict)


def image_parameters(path: str | Path) -> ImageParameters:
    """The generation parameters ``path`` holds, read for making it again: an image zoodip or A1111 wrote, or a
    ``.txt`` file of the text (as A1111's PNG Info shows it, copied); one line where it holds none."""
    if Path(path).suffix.lower() == ".txt":
        try:
            text = parameters_text_file(path)
        except ZoodipError as problem:  # (an image saved as .txt, as a browser's "Save as" may name it: read as one)
            try:
                text = read_parameters(path)
            except ZoodipError:
                raise problem from None
    else:
        try:
            text = read_parameters(path)
        except ZoodipError as exc:  # (a text of parameters saved as "params" or ".text" was told only "an image")
            raise ZoodipError(*exc.parts, ", or a .txt file of its generation parameters text") from None
    if text is None:
        raise ZoodipError(Given(path), " holds no generation parameters to make it again from (zoodip and A1111 write them "
                          "into the images they save): pass the prompt and settings instead")
    prompt, negative, fields = read_infotext(text)
    settings, problems, unused = settings_from_fields(fields)
    return ImageParameters(prompt, negative, settings, problems, unused, fields)


def parameters_text_file(path: str | Path) -> str | None:
    """A text file's generation parameters (None: it is empty), or one line for what cannot be read as one."""
    path = Path(path)
    if not path.is_file():  # a pipe would block the read for ever
        raise ZoodipError(Given(path), f" {why_missing(path)}: pass a text file of generation parameters")
    try:
        with open(path, "rb") as file:
            raw = file.read(MAX_TEXT + 1)
        if len(raw) > MAX_TEXT:
            raise ValueError(f"over {MAX_TEXT >> 20} MB")
        text = raw.decode("utf-8-sig")  # (a byte-order mark, as Windows editors save)
    except (OSError, ValueError) as exc:  # (UnicodeDecodeError is a ValueError)
        raise ZoodipError(f"cannot read {path} as generation parameters ({str(exc).splitlines()[0]:.80}): pass a UTF-8 "
                          "text file of them, as A1111's PNG Info shows them") from None
    return text.strip() or None


def parameter_notes(parameters: ImageParameters, model: Any, hashes: Mapping[str, str], *, image_given: bool,
                    mask_given: bool, latents_given: bool) -> list[str]:
    """What the caller should know before making the image again: another export, an embedding no file gives, a
    source image, mask or latents it was made from that were not given, and the fields that do not apply here."""
    fields, notes = parameters.fields, []
    if not fields:
        notes.append("its text holds no settings line (Steps: ..., Seed: ...): only its prompt is used")
    made_with = fields.get("Model hash")
    if made_with and made_with != model_hash(model):
        named = f", {fields['Model']}" if fields.get("Model") else ""  # (A1111 writes no name for some models)
        notes.append(f"the image was made with another model (Model hash {made_with}{named}; "
                     f"this export's is {model_hash(model)}): it will differ")
    if _entries(fields.get("Lora hashes", "")) != _entries(lora_hashes(model)):
        notes.append(f"the image was made with the LoRAs {fields.get('Lora hashes') or 'none'} (name: file hash), this "
                     f"export holds {lora_hashes(model) or 'none'} (zoodip fuses them at export, 'zoodip export --lora "
                     "FILE:SCALE'): it will differ")
    notes += _embedding_notes(fields.get("TI hashes", ""), hashes)
    if not image_given and any(name in parameters.settings for name in IMAGE_SETTINGS):
        notes.append("the image was made from another image (Denoising strength "
                     f"{fields.get('Denoising strength')}): pass it with --image to make it again")
    if image_given and any(name in parameters.settings for name in TEXT_TO_IMAGE_SETTINGS):
        notes.append("the image's hires fix is left out: it is for text-to-image, and --image is given")
    elif "hires_strength" in parameters.settings and fields.get("Hires upscaler", "Lanczos") != "Lanczos":
        notes.append(f"the image's hires fix upscaled with {fields['Hires upscaler']!r:.40}, zoodip's with Lanczos (an "
                     "image resampler): its second pass starts from another picture, and the image will differ")
    if fields.get("Mask mode") == "Inpaint not masked":
        notes.append("the image was inpainted outside its mask (A1111's Mask mode: Inpaint not masked): pass the "
                     "inverted mask with --mask, or the other part is redrawn")
    if latents_given and any(name in parameters.settings for name in NOISE_SETTINGS):
        notes.append("the image's variation seed is left out: --latents are the noise")
    if not mask_given and any(name in parameters.settings for name in MASK_SETTINGS):
        notes.append("the image was inpainted: pass its image and mask with --image and --mask to make it again")
    if "Initial latents" in fields and not latents_given:
        notes.append("the image was made from initial latents given to it, not from its seed: pass them with --latents")
    if "Batch pos" in fields and is_zoodips(fields):  # A1111 writes each batch image's own seed: made alone
        notes.append(f"the image was image {fields['Batch pos']} (from 0) of a batch of {fields.get('Batch size', '?')}: "
                     "it is the batch's numbered file of that place + 1 (OUT-1.png is image 0)")
    if parameters.unused:
        notes.append(f"fields that are no setting here, left out: {', '.join(parameters.unused)}")
    return notes


_LISTED = 4  # the embeddings a note names, of many (an image's text may list thousands)


def _embedding_notes(listed: str, hashes: Mapping[str, str]) -> list[str]:
    """What an image's "TI hashes" ask of the --embedding files (``hashes``: each loaded name's file hash): the files
    none gives (one line for them all), a name loaded from another file than the image's, a file loaded under another
    name."""
    notes, missing, other = [], [], []
    for entry in filter(None, (part.strip() for part in listed.split(","))):
        name, _, digest = entry.rpartition(": ")
        names = [loaded for loaded, loaded_digest in hashes.items() if loaded_digest == digest]
        same_name = next((loaded for loaded in (name, f"<{name}>") if name and loaded in hashes), None)
        if names and name and name not in names and f"<{name}>" not in names:
            notes.append(f"the image's embedding {name} is loaded as {names[0]}: pass it as --embedding FILE:{name} "
                         "to load it under the name its prompt uses")
        elif not names and same_name is not None:  # (another version of it: retrained, re-downloaded)
            other.append(f"{name} (file hash {digest}, the loaded one's {hashes[same_name]})")
        elif not names:
            missing.append(f"{name or entry} (file hash {digest})")
    if missing:
        many = len(missing) > 1
        notes.insert(0, f"the image used the embedding{'s' * many} {_first_few(missing)}, which no --embedding gives: "
                        f"pass {'their files' if many else 'its file'}, or the image will lack {'them' if many else 'it'}")
    if other:
        notes.append(f"the image used another file of the embedding{'s' * (len(other) > 1)} {_first_few(other)} than "
                     "the --embedding of that name: pass the file it used, or the image will differ")
    return notes


def _first_few(items: list[str]) -> str:
    return ", ".join(items[:_LISTED]) + (f" and {len(items) - _LISTED} more" if len(items) > _LISTED else "")


def _entries(listed: str) -> set[str]:
    """The entries of a "name: hash, ..." field."""
    return {part.strip() for part in listed.split(",") if part.strip()}

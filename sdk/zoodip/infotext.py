"""The settings an image was generated with, written as A1111 writes them ("infotext": a PNG's ``parameters`` text,
a JPEG's or WebP's EXIF comment; ``images.save_images(texts=)``), where A1111's PNG Info tab and the tools that read
A1111's images find them; ``zoodip info IMAGE`` prints them (``image_parameters.read_parameters``)::

    a photo of <my-dog> on a beach
    Negative prompt: blurry
    Steps: 25, Sampler: DPM++ 2M, Schedule type: Uniform, CFG scale: 7.5, Seed: 7, Size: 512x512, Model hash: ...

Fields are A1111's names where A1111 has the setting (``Denoising strength``, ``Clip skip``, ``Hires upscale``,
``Mask blur``, ...) and plain words where it has not (``Guidance rescale``, ``Prompt weighting``). One difference
in meaning: zoodip draws a batch's initial noise from one seed, as diffusers does (image i is the seed's i-th draw,
not A1111's seed + i), so an image of a batch says its batch size and its place in it (``Batch pos``, from 0).
"""
from __future__ import annotations

import inspect
import json
import math
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .added_tokens import tokenizer_with
from .emphasis import PROMPT_WEIGHTINGS
from .errors import ZoodipError
from .extra_networks import lora_hashes
from .generate import generate, prompt_texts_read
from .hires import generate_hires
from .prompt_checks import used_token_names
from .sampling import A1111_SAMPLER_NAMES, DEFAULT_STEPS, SAMPLERS, image_strength, sampler_named, steps_run

# (the sampler names are sampling's, re-exported for infotext's readers)
__all__ = ["A1111_AUTOMATIC_SCHEDULES", "A1111_SAMPLER_NAMES", "infotext", "model_hash", "read_infotext",
           "settings_from_fields", "used_embedding_hashes"]
MODEL_HASH_CHARS = 10  # A1111's short model hash


def _value(value: object) -> str:
    """A field's value as A1111 writes it: quoted (JSON) where a comma, colon or quote would end it early."""
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if any(c in text for c in ',:"\n') else text


def _image_fields(settings: Mapping[str, Any]) -> list[tuple[str, object]]:
    """Image-to-image, inpainting and the hires fix: the fields of the settings given (generate()'s names)."""
    fields: list[tuple[str, object]] = []
    if settings.get("hires_scale") is not None:
        hires_steps = settings["steps"] if settings.get("hires_steps") is None else settings["hires_steps"]
        # A1111's "Hires steps" are the steps its second pass runs; zoodip's run the last strength of a schedule of
        # hires_steps (as image-to-image's), written apart so that A1111 and zoodip each read their own.
        fields += [("Denoising strength", settings["hires_strength"]), ("Hires upscale", settings["hires_scale"]),
                   ("Hires steps", steps_run(hires_steps, settings["hires_strength"])), (HIRES_SCHEDULE, hires_steps),
                   ("Hires upscaler", "Lanczos")]
    elif settings.get("image") is not None:
        masked = settings.get("mask_image") is not None
        fields.append(("Denoising strength", image_strength(settings.get("strength"), masked)))
    if settings.get("mask_image") is not None:
        fields.append(("Mask blur", settings.get("mask_blur") or 0))
        if settings.get("padding_mask_crop") is not None:
            fields += [("Inpaint area", "Only masked"), ("Masked area padding", settings["padding_mask_crop"])]
        if settings.get("paste_back"):
            fields.append(("Paste back", "True"))
    return fields


def infotext(prompt: str, settings: Mapping[str, Any], size: tuple[int, int], model: Any,
             batch_pos: int = 0, embedding_hashes: Mapping[str, str] | None = None) -> str:
    """A1111's text for one image: ``prompt``, ``settings`` as given to ``generate()``/``generate_hires()`` (its
    keyword names; absent ones are its defaults), the image's ``size`` (width, height; with the hires fix, A1111's
    Size is the first pass's), the ``model`` (an ``ExportedModel``: its folder's name and its identity's first
    characters stand for A1111's model name and hash), the image's place in its batch, and the embeddings its
    prompts used, ``{token: its file's short hash}`` (``embeddings.short_hash``; A1111's "TI hashes")."""
    settings = {**_DEFAULTS, **{key: value for key, value in settings.items() if value is not None}}
    crop = settings.get("padding_mask_crop") is not None and settings.get("mask_image") is not None
    if settings.get("hires_scale") is not None or crop:  # A1111's Size: the first pass's, or the box's redrawn size
        native = int(model.sample_size) * int(model.vae_scale_factor)
        size = (int(settings["width"] or native), int(settings["height"] or native))
    negative, clip_skip, count = settings["negative_prompt"], int(settings["clip_skip"]), int(settings["num_images"])
    fields: list[tuple[str, object]] = [
        ("Steps", settings["steps"]), ("Sampler", A1111_SAMPLER_NAMES.get(settings["sampler"], settings["sampler"])),
        ("Schedule type", _written_schedule(settings["sampler"])),
        ("CFG scale", settings["guidance_scale"]), ("Seed", settings["seed"]),
        ("Size", f"{size[0]}x{size[1]}"), ("Model hash", model_hash(model)),
        ("Model", Path(model.folder).name),
        *([("Variation seed", settings["variation_seed"]), ("Variation seed strength", settings["variation_strength"])]
          if settings["variation_strength"] else []),
        ("Clip skip", clip_skip + 1 if clip_skip else None),  # A1111 counts the last layer as 1, diffusers as 0
        *_image_fields(settings),
        ("Eta DDIM", settings["eta"] if settings["sampler"] == "ddim" and settings["eta"] else None),
        ("Guidance rescale", settings["guidance_rescale"] or None), ("Prompt weighting", settings["prompt_weighting"]),
        ("Initial latents", None if settings["latents"] is None else "given (not the seed's)"),
        ("Batch size", count if count > 1 else None), ("Batch pos", batch_pos if count > 1 else None),
        ("TI hashes", ", ".join(f"{_hash_name(name)}: {digest}" for name, digest in (embedding_hashes or {}).items())
         or None),
        ("Lora hashes", lora_hashes(model) or None),  # the LoRAs fused into the export (no <lora:> tag needed here)
        ("Version", f"zoodip {_version()}"),
    ]
    text = prompt + (f"\nNegative prompt: {negative}" if negative else "")
    text += "\n" + ", ".join(f"{key}: {_value(value)}" for key, value in fields if value is not None)
    # A prompt from a command line that is not UTF-8 holds surrogates, which no file's text can: written escaped.
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def model_hash(model: Any) -> str:
    """A1111's "Model hash" of an export: its single-file checkpoint's, as A1111 names that file (the first
    characters of its SHA-256), else the export's identity's."""
    source = getattr(model, "manifest", {}).get("source", {})
    return str(source.get("sha256") or model.identity)[:MODEL_HASH_CHARS]


def used_embedding_hashes(model: Any, prompt: str, settings: Mapping[str, Any], added: Mapping[str, np.ndarray],
                          hashes: Mapping[str, str]) -> dict[str, str]:
    """``{token: its file's short hash}`` for the ``added`` embeddings that ``prompt`` and the negative prompt used,
    as ``generate()`` with ``settings`` reads them (the phases of an edited prompt that run, the words within the
    token limit), each name once (an A1111 file's trigger word and its ``<stem>``, one loading, once);
    ``hashes``: ``load_embeddings(hashes=)``'s."""
    if not added:
        return {}
    settings = {**_DEFAULTS, **{key: value for key, value in settings.items() if value is not None}}
    image_to_image = settings.get("image") is not None and settings.get("hires_scale") is None
    masked = settings.get("mask_image") is not None
    strength = image_strength(settings.get("strength"), masked) if image_to_image else None
    texts, whole = prompt_texts_read(model, prompt, settings["negative_prompt"], settings["prompt_weighting"],
                                     steps_run(settings["steps"], strength))
    named: dict[str, str] = {}
    with warnings.catch_warnings():  # what loading the embeddings warns of, generate() has said
        warnings.simplefilter("ignore")
        tokenizer = tokenizer_with(model, added)[0]
    for name in used_token_names(tokenizer, texts, list(added), whole):
        alias = name[1:-1] if name.startswith("<") and name.endswith(">") else f"<{name}>"
        if name in hashes and named.get(alias) != hashes[name]:  # an A1111 file's trigger word and <stem>: once
            named[name] = hashes[name]
    return named


HIRES_SCHEDULE = "Hires schedule"  # zoodip's: the schedule whose last hires strength the second pass runs

# A1111's fields that are one setting of generate() each, and how a value reads back (A1111 counts clip skip from 1).
_ONE_SETTING: dict[str, tuple[str, Callable[[str], Any]]] = {
    "Steps": ("steps", int), "CFG scale": ("guidance_scale", float), "Seed": ("seed", int),
    "Variation seed": ("variation_seed", int), "Variation seed strength": ("variation_strength", float),
    "Clip skip": ("clip_skip", lambda value: max(int(value) - 1, 0)),  # (A1111 reads its 0 as its 1: the last layer)
    "Guidance rescale": ("guidance_rescale", float),
    "Eta DDIM": ("eta", float),  # (DDIM's only: read where the sampler is DDIM, left out with another)
    "Prompt weighting": ("prompt_weighting", lambda value: _one_of(value, PROMPT_WEIGHTINGS)),
    "Mask blur": ("mask_blur", float),
}
A1111_MASK_PADDING = 32  # the padding A1111 takes for "Only masked" where the text gives none
# Fields that are no setting (said, or checked by the caller) and A1111's that fields above already carry.
NOT_SETTINGS = ("Model", "Model hash", "Version", "Batch pos", "Hires upscaler", "TI hashes", "Lora hashes",
                "Schedule type", "Initial latents", "Inpaint area", "Hires steps", "Hires upscale", "Batch size",
                HIRES_SCHEDULE, "Hires resize", "First pass size", "Mask mode")
# A1111's own pattern, made to take linear time: unbounded, a long line without a colon (or a long run of spaces) was
# read again from every word to its end, hours for a few megabytes of text. Here a match starts where neither a name
# character nor a space precedes it (A1111's would have taken them into the name), and a name holds at most 80
# characters (A1111's longest are about 30): a longer one is no field, not its tail.
_FIELD_PAIR = re.compile(r'(?<![\w \-/+.])(?<!\s)\s*(\w[\w \-/+.]{0,79}):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')
_NEGATIVE = "Negative prompt:"


def unreadable_prompt_problem(prompt: str, negative_prompt: str) -> str | None:
    """What the image's written parameters would read back wrong of these prompts (a line beginning "Negative
    prompt:", or a last line of fields), as A1111 and --parameters-from read them; None where both read back."""
    text = prompt + (f"\nNegative prompt: {negative_prompt}" if negative_prompt else "") + "\nSteps: 1, Seed: 0, Version: zoodip"
    read_prompt, read_negative, _ = read_infotext(text)
    if (read_prompt.strip(), read_negative.strip()) == (prompt.strip(), negative_prompt.strip()):  # (spaces at the
        return None  # ends change no token)
    return ("the prompt's text reads back otherwise from the image's parameters (a line beginning 'Negative prompt:', "
            "or one of 'Name: value' fields, is taken as the parameters' own), so --parameters-from will not make the "
            "image again: reword that line")


def read_infotext(text: str) -> tuple[str, str, dict[str, str]]:
    """(prompt, negative prompt, {field: value}) of A1111's text, read as A1111 reads it: the last line holds the
    fields where at least three are found on it; a line that starts with "Negative prompt:" starts the negative one."""
    lines = text.strip("\n").split("\n")
    pairs = _FIELD_PAIR.findall(lines[-1])
    fields: dict[str, str] = {}
    if len(pairs) >= 3:
        lines.pop()
        for key, value in pairs:
            fields[key.strip()] = _unquoted(value.strip())
    prompt: list[str] = []
    negative: list[str] = []
    a1111s = not is_zoodips(fields)  # A1111 strips every line, and the label off every line that starts with it
    for line in lines:
        line = line.strip() if a1111s else line
        if line.startswith(_NEGATIVE) and (a1111s or not negative):
            line = line[len(_NEGATIVE):].strip() if a1111s else line[len(_NEGATIVE):].removeprefix(" ")
            negative.append(line)
        else:
            (negative if negative else prompt).append(line)
    return "\n".join(prompt), "\n".join(negative), fields


def _unquoted(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        try:
            return str(json.loads(value))
        except ValueError:
            return value[1:-1]
    return value


def is_zoodips(fields: Mapping[str, str]) -> bool:
    """Whether the text was written by zoodip (its Version field), whose batches and hires steps it reads its way."""
    return fields.get("Version", "").startswith("zoodip")


def settings_from_fields(fields: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str], list[str]]:
    """``generate()``'s (and the hires fix's) settings that A1111's ``fields`` give, the problems of those that cannot
    be given (by setting: a sampler zoodip lacks, a value that does not read), and the fields that are no setting
    here (another tool's). A text of A1111's is read in A1111's meaning: emphasis read as A1111 reads it, an image of
    a batch made alone from its own seed (A1111 writes each one's), its hires fix on only with a denoising strength,
    its second pass running the steps it says."""
    settings: dict[str, Any] = {}
    problems: dict[str, str] = {}
    for field, value in fields.items():
        names = {"Size": ("width", "height"), "Denoising strength": ("strength",), "Batch size": ("num_images",),
                 "Paste back": ("paste_back",), "Inpaint area": ("padding_mask_crop",)}.get(field, (field,))
        try:
            _read_field(field, value, fields, settings, problems)
        except (ValueError, ZeroDivisionError):
            for name in (_ONE_SETTING[field][0],) if field in _ONE_SETTING else names:
                problems[name] = (f"its {field} {value!r:.40} does not read as a value: give it yourself "
                                  f"({_settable(name)})")
    read = {*_ONE_SETTING, *NOT_SETTINGS, "Size", "Denoising strength", "Paste back", "Sampler"}
    unused = [field for field in fields if field not in read and not (field == "Masked area padding"
                                                                      and "Inpaint area" in fields)]
    if not is_zoodips(fields):
        settings.setdefault("prompt_weighting", "a1111")  # A1111 reads emphasis
        if {"Mask blur", "Inpaint area", "Masked area padding"} & set(fields):
            settings["paste_back"] = True  # A1111's inpainting always puts the original back where it keeps it
    return settings, problems, unused


def _settable(name: str) -> str:
    """A setting as a problem names it for the caller to give: ``paste_back``, or ``width=VALUE`` (a name that is an
    English word too is said with a value, by which the command line knows it for its flag: cli_flags.in_flag_words)."""
    return name if "_" in name else f"{name}=VALUE"


def _one_of(value: str, choices: tuple[str, ...]) -> str:
    """``value`` where it is one of ``choices``, else ValueError (a field that does not read)."""
    if value not in choices:
        raise ValueError(value)
    return value


def _read_field(field: str, value: str, fields: Mapping[str, str], settings: dict[str, Any],
                problems: dict[str, str]) -> None:
    """One field's settings (``settings_from_fields``); a value that does not read raises ValueError."""
    hires = bool(_HIRES_SIZES & set(fields)) and "Denoising strength" in fields  # as A1111 turns its hires fix on
    if field in _ONE_SETTING:
        name, read = _ONE_SETTING[field]
        settings[name] = read(value)
    elif field == "Size":
        width, _, height = value.partition("x")
        settings["width"], settings["height"] = int(width), int(height)
    elif field == "Denoising strength":  # the hires fix's second pass, or image-to-image's
        settings["hires_strength" if hires else "strength"] = float(value)
    elif field in _HIRES_SIZES and hires:
        _read_hires(fields, settings, problems)
    elif field == "Batch size" and is_zoodips(fields):  # A1111's batch image: its own seed, made alone
        settings["num_images"] = int(value)
    elif field == "Paste back":
        if value.lower() not in ("true", "false"):
            raise ValueError(value)
        settings["paste_back"] = value.lower() == "true"
    elif field == "Sampler":
        _read_sampler(value, fields.get("Schedule type"), settings, problems)
    elif field == "Inpaint area":  # A1111 writes its padding with "Only masked" only, and reads 32 where it is missing
        if value not in ("Only masked", "Whole picture"):
            raise ValueError(value)
        padding = fields.get("Masked area padding", str(A1111_MASK_PADDING))
        if value == "Only masked" and not padding.isdecimal():  # (isdigit takes "²", which int() does not)
            problems["padding_mask_crop"] = (f"its Masked area padding {padding!r:.40} does not read as a value: give "
                                             "it yourself (padding_mask_crop)")
        elif value == "Only masked":
            settings["padding_mask_crop"] = int(padding)


def _read_hires(fields: Mapping[str, str], settings: dict[str, Any], problems: dict[str, str]) -> None:
    """The hires fix's settings: zoodip's schedule where its text gives it, else A1111's second pass of "Hires steps"
    (0 or none: "Steps") steps, which zoodip runs as the last strength of a schedule just long enough."""
    readings = {"hires_scale": ("Hires upscale", float), "hires_strength": ("Denoising strength", float)}
    for name, (field, read) in readings.items():
        try:
            settings[name] = read(fields[field]) if field in fields else _hires_resize_scale(fields)
        except ValueError:
            problems[name] = f"its {field} {fields[field]!r:.40} does not read as a value: give {name}"
        except ZoodipError as exc:
            problems[name] = str(exc)
    strength = settings.get("hires_strength")
    if strength is None or not 0 < strength <= 1:
        problems["hires_strength"] = (f"its Denoising strength {fields['Denoising strength']!r:.40} is not in (0, 1]: "
                                      "give hires_strength")
        return
    try:
        if HIRES_SCHEDULE in fields:
            settings["hires_steps"] = int(fields[HIRES_SCHEDULE])
            return
        run = int(fields.get("Hires steps", 0)) or int(fields.get("Steps", DEFAULT_STEPS))
    except ValueError:
        problems["hires_steps"] = "its Hires steps do not read as a value: give hires_steps"
        return
    schedule = math.ceil(run / strength)
    if schedule > _MAX_SCHEDULE:
        problems["hires_steps"] = (f"its second pass of {run} steps at Denoising strength {strength:g} needs a schedule "
                                   f"of {schedule} steps, past the {_MAX_SCHEDULE} of the noise schedule: give "
                                   "hires_steps and hires_strength")
    else:
        settings["hires_steps"] = schedule


_MAX_SCHEDULE = 1000  # the steps of SD's noise schedule, the most a sampler takes
# The fields by which A1111 says its hires fix's size: "Upscale by", "Resize to" (WxH, 0 for a side that follows the
# other) and its first hires fix's (before 1.0) size of the first pass.
_HIRES_SIZES = {"Hires upscale", "Hires resize", "First pass size"}


def _hires_resize_scale(fields: Mapping[str, str]) -> float:
    """The scale of A1111's "Resize to" hires fix, whose second pass keeps the first's aspect: zoodip's scales the
    first pass, so another aspect (which A1111 crops to) or its old first-pass size is a ZoodipError to say."""
    if "Hires resize" not in fields:
        raise ZoodipError(f"its hires fix is A1111's first one (First pass size {fields['First pass size']!r:.20}, "
                          "Size the result's): give hires_scale and the first pass's width=W and height=H")
    try:
        (width, height), (to_width, to_height) = (map(int, fields[key].split("x")) for key in ("Size", "Hires resize"))
        scale = to_width / width if to_width else to_height / height
    except (KeyError, ValueError, ZeroDivisionError):
        raise ZoodipError(f"its Hires resize {fields['Hires resize']!r:.20} does not read as a size of its Size "
                          f"{fields.get('Size')!r:.20}: give hires_scale") from None
    if any(to and abs(side * scale - to) >= 8 for side, to in ((width, to_width), (height, to_height))):
        raise ZoodipError(f"its Hires resize {fields['Hires resize']!r:.20} changes the shape of its Size "
                          f"{fields['Size']!r:.20} (A1111 crops to it; zoodip's hires fix scales): give hires_scale")
    return scale


# A1111 1.9 on splits its schedules from its samplers ("Schedule type") and gives some samplers another one than their
# plain, evenly spaced ("Uniform") timesteps when the type is "Automatic", its default and what a text without the
# field pastes as: these, of the samplers zoodip has. A1111 writes the type it resolved, so a text without one was
# made on Uniform (an older A1111's only schedule for these names); zoodip writes "Uniform" beside them, which A1111
# 1.9 on would otherwise read as its Karras / Exponential.
A1111_AUTOMATIC_SCHEDULES = {"DPM++ 2M": "Karras", "DPM++ 2M SDE": "Exponential"}
_UNIFORM = "Uniform"
# A1111's sampler names without their schedule ("DPM++ 2M" of "DPM++ 2M Karras"), by their lower case.
_A1111_SAMPLER_SPELLINGS = {name.lower(): name for a1111 in A1111_SAMPLER_NAMES.values()
                            for name in (a1111, a1111.removesuffix(" Karras"))}
# A1111's schedule types by label and by name ("Karras", "karras"; "SGM Uniform", "sgm_uniform"), longest first.
_A1111_SCHEDULES = ("Automatic", _UNIFORM, "Karras", "Exponential", "Polyexponential", "SGM Uniform", "KL Optimal",
                    "Align Your Steps", "Simple", "Normal", "DDIM", "Beta")
_SCHEDULE_NAMES = dict(sorted({**{label: label for label in _A1111_SCHEDULES},
                               **{label.lower().replace(" ", "_"): label for label in _A1111_SCHEDULES}}.items(),
                              key=lambda item: -len(item[0])))


def _written_schedule(sampler: str) -> str | None:
    """The "Schedule type" zoodip writes beside a sampler: Uniform where A1111's Automatic would mean another."""
    return _UNIFORM if A1111_SAMPLER_NAMES.get(sampler) in A1111_AUTOMATIC_SCHEDULES else None


def _read_sampler(name: str, schedule: str | None, settings: dict[str, Any], problems: dict[str, str]) -> None:
    """A1111's sampler name (with its "Schedule type", where A1111 1.9 on says it apart) as one of ``SAMPLERS``:
    Uniform is zoodip's plain sampler (its timesteps spaced as the export's scheduler config says, close to A1111's
    Uniform, not equal), Automatic the schedule A1111 1.9 on gives the sampler (``A1111_AUTOMATIC_SCHEDULES``)."""
    for option, label in _SCHEDULE_NAMES.items():  # A1111 takes a schedule at the name's end over the field's
        if name.endswith(" " + option):
            name, schedule = name[:-len(option) - 1], label
            break
    else:  # a field A1111 does not know is its Automatic; no field: Uniform (A1111 writes the type it resolved)
        schedule = None if schedule is None else _SCHEDULE_NAMES.get(schedule, "Automatic")
    name = _A1111_SAMPLER_SPELLINGS.get(name.lower(), name)  # in any case, as the flag reads it: then as A1111 has it
    resolved = A1111_AUTOMATIC_SCHEDULES.get(name) if schedule == "Automatic" else schedule
    full = name if resolved in (None, _UNIFORM) else f"{name} {resolved}"
    if (ours := sampler_named(full)) in SAMPLERS:
        settings["sampler"] = ours
    else:
        automatic = f" (A1111's {resolved} for it)" if schedule == "Automatic" else ""
        with_schedule = "" if full == name else f" with the schedule type {schedule!r:.20}{automatic}"
        kinds = [f"{a1111[len(name):].strip()}'s schedule" if a1111 != name else "the model's own timesteps"
                 for a1111 in A1111_SAMPLER_NAMES.values() if a1111.split(" Karras")[0] == name]
        every = ", ".join(A1111_SAMPLER_NAMES.values())
        has = f"it has {name} on {' or '.join(kinds)} only" if kinds else f"it has {every}"
        problems["sampler"] = (f"its sampler {name!r:.40}{with_schedule} is not one zoodip has ({has}): pass sampler=NAME")


def _hash_name(token: str) -> str:
    """A token as A1111 names it among the TI hashes: without the comma and colon that would split the list."""
    return token.replace(":", "").replace(",", "")


def _defaults(function: Any) -> dict[str, Any]:
    return {name: parameter.default for name, parameter in inspect.signature(function).parameters.items()
            if parameter.default is not inspect.Parameter.empty}


# What generate() takes when a setting is not given, and the hires fix's strength: their own signatures' defaults.
_DEFAULTS = {**_defaults(generate), "hires_strength": _defaults(generate_hires)["hires_strength"]}


def _version() -> str:
    from . import __version__

    return __version__

"""generate()'s settings, each refused in one line before any work: the image count, guidance, DDIM's eta, the
sampler and its steps, the seed, clip skip, the progress callback and the token groups (what hires.py and the CLI
check up front too)."""
from __future__ import annotations

import inspect
import numbers
from typing import Any

import numpy as np

from .emphasis import check_prompt_weighting
from .errors import ZoodipError
from .model import check_model, clip_skip_problem
from .noise import check_seed
from .prompt_schedule import composable_parts
from .sampling import DEFAULT_GUIDANCE_SCALE, check_sampler, check_steps

# Images per call: they are denoised as one UNet batch (twice that with guidance), whose activations
# grow with the count; more than a grid's worth is asked for by mistake, not by design.
MAX_IMAGES = 64
# The largest |guidance scale|: far beyond what anyone uses, the guided prediction leaves float32's range and the
# image comes out black.
MAX_GUIDANCE_SCALE = 100.0


def check_num_images(num_images: object) -> None:
    """Images per call: 1 to MAX_IMAGES (checked before any file or model work)."""
    if isinstance(num_images, bool) or not isinstance(num_images, (int, np.integer)) or not 1 <= num_images <= MAX_IMAGES:
        raise ZoodipError(f"num_images must be an integer from 1 to {MAX_IMAGES} (the UNet denoises them as one batch), "
                          f"got {num_images!r}: call again with another seed for more")


# How a message asks for the start image; the command line says it as its flag (zoodip.cli_flags).
PASS_THE_IMAGE = "pass the picture to start from too (image=...)"


def check_image_only(image: object, strength: object, mask_image: object) -> None:
    """What only image-to-image takes (``strength``; ``mask_image``, inpainting) refused without an ``image``: said,
    not dropped; ``generate()`` and ``zoodip generate`` (before any work) say the same line, each in its own words."""
    for name, value, what in (("strength", strength, "image-to-image only (how much of the picture is redrawn)"),
                              ("mask_image", mask_image, "inpainting, which redraws a part of a picture")):
        if value is not None and image is None:
            raise ZoodipError(f"{name} applies to {what}: {PASS_THE_IMAGE}, or drop {name}")


def check_clip_skip(model: Any, clip_skip: object) -> None:
    """``clip_skip`` 0, or a number of layers ``model``'s text encoder can skip; else one line naming the range."""
    layers = int(getattr(model, "clip_skip_layers", 0))
    if not isinstance(clip_skip, (int, np.integer)) or isinstance(clip_skip, bool) or not 0 <= clip_skip <= layers:
        raise ZoodipError(clip_skip_problem(clip_skip, layers))


def check_generate_settings(model: Any, prompt: object, negative_prompt: object, sampler: str, steps: object,
                            num_images: int, guidance_scale: object, eta: object, seed: object,
                            prompt_weighting: object = "none", clip_skip: object = 0, guidance_rescale: object = 0.0, *,
                            callback: object = None, batch_cfg: object = True, groups: object = None) -> None:
    """generate()'s settings, each refused in one line before any work."""
    check_model(model)
    check_prompt_weighting(prompt_weighting)
    check_sampler(sampler)
    check_steps(model, steps, sampler)
    check_num_images(num_images)
    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, numbers.Real) \
            or not abs(guidance_scale) <= MAX_GUIDANCE_SCALE:
        raise ZoodipError(f"guidance_scale must be a number within +-{MAX_GUIDANCE_SCALE:g} ({DEFAULT_GUIDANCE_SCALE:g} is "
                          f"diffusers' default, A1111's CFG scale stops at 30), got {guidance_scale!r}")
    if isinstance(guidance_rescale, bool) or not isinstance(guidance_rescale, numbers.Real) or not 0 <= guidance_rescale <= 1:
        raise ZoodipError(f"guidance_rescale must be a number from 0 to 1 (diffusers suggests 0.7 for v-prediction "
                          f"models), got {guidance_rescale!r}")
    if isinstance(eta, bool) or not isinstance(eta, numbers.Real) or not 0 <= eta <= 1:  # past 1 the noise outgrows
        raise ZoodipError(f"eta must be a number from 0 to 1 (DDIM's noise: 0 deterministic, 1 as DDPM), got {eta!r}")
    if eta and sampler != "ddim":
        raise ZoodipError(f"eta applies to the ddim sampler only, not {sampler}: drop it, or choose the ddim sampler")
    check_seed(seed)
    if not isinstance(prompt, str) or not isinstance(negative_prompt, str):
        raise ZoodipError("prompt and negative_prompt must be strings")
    check_clip_skip(model, clip_skip)
    _check_call_options(callback, batch_cfg, groups)
    if guidance_rescale and prompt_weighting == "a1111" and len(composable_parts(prompt)) > 1:
        raise ZoodipError("guidance_rescale rescales toward one prompt's prediction, and a prompt of several AND parts "
                          "has several: drop one of the two")


def _call_problem(callback: object) -> str | None:
    """Why ``callback(step, total, latents)`` would fail, or None (also where its signature cannot be read)."""
    if not callable(callback):
        return f"got {type(callback).__name__}"
    try:
        inspect.signature(callback).bind(1, 1, None)
    except TypeError as exc:
        return f"its signature does not take them ({exc})"
    except ValueError:
        pass  # no signature to read (a builtin): called as it is
    return None


def check_callback(callback: object) -> None:
    """None, or a progress callback callable as ``callback(step, total, latents)``; else one line, before any work."""
    problem = None if callback is None else _call_problem(callback)
    if problem:
        raise ZoodipError(f"callback must be callable as callback(step, total, latents) (not diffusers' "
                          f"callback_on_step_end(pipe, step, timestep, kwargs)): {problem}")


def _check_call_options(callback: object, batch_cfg: object, groups: object) -> None:
    """The progress callback, ``batch_cfg`` (a bool) and ``token_groups`` (lists of token names), refused before any
    work rather than failing mid-run."""
    check_callback(callback)
    if not isinstance(batch_cfg, (bool, np.bool_)):
        raise ZoodipError(f"batch_cfg must be True or False, got {batch_cfg!r}")
    if groups is not None and (not isinstance(groups, (list, tuple)) or not all(
            isinstance(group, (list, tuple)) and all(isinstance(name, str) for name in group) for group in groups)):
        raise ZoodipError("token_groups must be a list of lists of token names (load_embeddings' groups), got "
                          f"{groups!r:.60}")

"""A1111's "Hires. fix": an image at the model's own size, upscaled, then redrawn at the larger size by
image-to-image, so that the layout comes from the size the model was trained at and the detail from the second pass.

SD1.x asked directly for 1024 px draws its layout at a size it never saw (repeated subjects, stretched bodies); the
two-pass way avoids that at the cost of the second pass's steps. A1111's defaults: twice the size, denoising strength
0.7, the upscale by an image resampler ("Lanczos" among its upscalers; its "Latent" ones resize the latents instead,
which this SDK's image-to-image does not take).
"""
from __future__ import annotations

import inspect
import numbers
from fractions import Fraction
from typing import Any

import numpy as np
from PIL import Image

from .errors import ZoodipError
from .diffusers_names import refuse_arguments
from .generate import GENERATE_OPTIONS, generate
from .generate_settings import check_callback, check_num_images
from .image_side import check_model_side, model_side_multiple
from .limits import check_image_size
from .memory_plan import check_encode, check_unet, memory_budget_mb, plan_decode
from .model import check_model
from .sampling import DEFAULT_STEPS, HIRES_STRENGTH, ProgressCallback, check_steps, check_strength, steps_run

MAX_HIRES_SCALE = 4.0  # A1111's slider stops at 4


def generate_hires(model: Any, prompt: str, *, hires_scale: float = 2.0, hires_strength: float = HIRES_STRENGTH,
                   hires_steps: int | None = None, seed: int = 0, num_images: int = 1, steps: int = DEFAULT_STEPS,
                   height: int | None = None, width: int | None = None, callback: ProgressCallback | None = None,
                   **options: Any) -> list[Image.Image]:
    """``generate(model, prompt, ...)``'s images, each upscaled ``hires_scale`` times (Lanczos; sides rounded down
    to sizes the model's UNet runs at) and redrawn over the last ``hires_strength`` of ``hires_steps`` (default:
    ``steps``) steps, with the same prompt and options. Image ``i``'s second pass draws its noise from ``seed + i``, A1111's
    seed for the i-th image of a batch (a variation's from ``variation_seed + i``). ``callback(step, total, latents)``
    counts the steps of both passes."""
    refuse_arguments(options, "generate_hires()", HIRES_OPTIONS)  # (named here: generate() would name itself)
    if any(options.pop(key, None) is not None for key in ("image", "mask_image", "strength")):
        raise ZoodipError("the hires fix is for text-to-image (A1111 has none for img2img): drop image, mask_image and "
                          "strength (hires_strength is the second pass's), or drop the hires settings")
    sampler = options.get("sampler")
    check_model(model)
    check_steps(model, steps, sampler)
    check_num_images(num_images)
    check_callback(callback)
    hires_steps = steps if hires_steps is None else hires_steps
    check_steps(model, hires_steps, sampler, name="hires_steps")
    if isinstance(hires_scale, bool) or not isinstance(hires_scale, numbers.Real) or not 1 < hires_scale <= MAX_HIRES_SCALE:
        raise ZoodipError(f"hires_scale must be a number above 1 and at most {MAX_HIRES_SCALE:g} (A1111's 'Upscale by'; "
                          f"2 is its default), got {hires_scale!r}")
    check_strength(hires_strength, "hires_strength")
    if int(hires_steps * hires_strength) < 1:
        raise ZoodipError(f"hires_strength {hires_strength} of {hires_steps} hires steps leaves no step to run: raise "
                          "hires_strength or hires_steps")
    second_run = steps_run(hires_steps, hires_strength)
    factor, first_size = int(model.vae_scale_factor), planned_size(model, width, height)
    multiple = model_side_multiple(model, derived=True)  # the sizes its UNet runs at (8 px, or 64 on older SD exports)
    size = hires_size(first_size, float(hires_scale), multiple)
    if size == first_size:
        raise ZoodipError(f"hires_scale {hires_scale} leaves {size[0]}x{size[1]} as it is (sides are rounded down to "
                          f"multiples of {multiple}): use a larger scale")
    # Before the first pass, not after it: the larger size's memory floor, and under a budget its UNet, decode and encode.
    what = f"the hires fix's {size[0]}x{size[1]} image (hires_scale={hires_scale})"
    check_image_size(size[1], size[0], factor, what, memory_budget_mb=memory_budget_mb(model), multiple=multiple)
    try:
        check_unet(model, size[1] // factor, size[0] // factor, memory_budget_mb(model))
        plan_decode(model, size[1] // factor, size[0] // factor, memory_budget_mb(model))
        check_encode(model, size[1] // factor, size[0] // factor, memory_budget_mb(model))
    except ZoodipError as exc:
        raise ZoodipError(f"the hires fix's second pass: {exc}, or a smaller hires_scale") from None
    progress = _TwoPassProgress(callback, steps + num_images * second_run)
    variation_seed = options.pop("variation_seed", None)
    latents = options.pop("latents", None)  # the first pass's noise

    def run(**settings: Any) -> list[Image.Image]:  # every pass from this one line: a prompt's warning is said once
        return generate(model, prompt, callback=progress.pass_callback(), **settings, **options)

    first = run(seed=seed, num_images=num_images, steps=steps, height=height, width=width,
                variation_seed=variation_seed, latents=latents)
    # int(): a NumPy seed would wrap at its type's end (np.int8(127) + 1 is -128)
    return [run(seed=int(seed) + i, steps=hires_steps, image=image.resize(size, Image.Resampling.LANCZOS),
                strength=hires_strength, height=size[1], width=size[0],
                variation_seed=None if variation_seed is None else int(variation_seed) + i)[0]
            for i, image in enumerate(first)]


# What generate_hires() takes by name: its own settings and those it passes to generate().
HIRES_OPTIONS = sorted({name for name, parameter in inspect.signature(generate_hires).parameters.items()
                        if parameter.kind is parameter.KEYWORD_ONLY} | set(GENERATE_OPTIONS))


def planned_size(model: Any, width: int | None, height: int | None, hires_scale: float | None = None) -> tuple[int, int] | None:
    """The (width, height) text-to-image makes for these settings, the hires fix's second pass included, known before
    any work; a side out of range is refused as generate() refuses it, and a hires scale out of range gives None
    (``generate_hires`` says so)."""
    native = int(model.sample_size) * int(model.vae_scale_factor)
    # Height first, as generate() checks them (a call with both wrong is refused for the same side).
    checked = {name: check_model_side(model, name, native if value is None else value, native)
               for name, value in (("height", height), ("width", width))}
    first = (checked["width"], checked["height"])
    if hires_scale is None:
        return first
    if isinstance(hires_scale, bool) or not isinstance(hires_scale, numbers.Real) or not 1 < hires_scale <= MAX_HIRES_SCALE:
        return None
    return hires_size(first, float(hires_scale), model_side_multiple(model, derived=True))


def hires_size(size: tuple[int, int], scale: float, multiple: int) -> tuple[int, int]:
    """(width, height) times ``scale``, each rounded down to ``multiple`` (A1111's 8 px; an older export's UNet needs
    more). The scale is read as the decimal it is written as (1.4 is 7/5, not the float just under it, which would
    make 360 * 1.4 = 503.99999999999994 and lose a step of 8 px), and the product taken exactly."""
    exact = Fraction(repr(float(scale)))
    return tuple(max(multiple, int(side * exact) // multiple * multiple) for side in size)  # type: ignore[return-value]


class _TwoPassProgress:
    """One count of steps over the first pass and every second pass (each pass's callback counts from its start)."""

    def __init__(self, callback: ProgressCallback | None, total: int) -> None:
        self.callback, self.total, self.done, self.offset = callback, total, 0, 0

    def pass_callback(self) -> ProgressCallback | None:
        if self.callback is None:
            return None
        self.offset = self.done

        def report(step: int, total: int, latents: np.ndarray) -> None:
            self.done = self.offset + step
            self.callback(self.done, self.total, latents)  # type: ignore[misc]

        return report

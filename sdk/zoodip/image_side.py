"""The one rule for an image side (a resolution, a height, a width): a positive multiple of 8 and of the
model's VAE factor.

The VAE maps ``vae_scale_factor`` pixels to one latent, so a side must divide by it; SD tools
(diffusers' pipelines, A1111) take multiples of 8, the SD VAE's factor, and so does zoodip where no model
is at hand yet (a CLI flag checked before the export folder is read, a benchmark's flag).
Everything that accepts a side asks here, so the rule and its message are written once.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from .errors import ZoodipError

SIDE_MULTIPLE = 8
SD_UNET_REDUCTION = 8  # what SD's UNet divides the latents by (three halvings): see model_side_multiple


def side_multiple(vae_scale_factor: int = 1) -> int:
    """The step of valid sides: a multiple of both 8 and the VAE factor."""
    return math.lcm(SIDE_MULTIPLE, int(vae_scale_factor))


def side_problem(value: object, vae_scale_factor: int = 1) -> str | None:
    """None for a valid side, else what is wrong with it, as the end of a sentence naming the value."""
    multiple = side_multiple(vae_scale_factor)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0 or value % multiple:
        return f"must be a positive multiple of {multiple}, got {value!r}"
    return None


def check_side(name: str, value: object, vae_scale_factor: int = 1, example: int | None = None) -> int:
    """``value`` as an int, or a one-line error naming ``name`` (a flag or argument) and, if given, an ``example``."""
    problem = side_problem(value, vae_scale_factor)
    if problem:
        raise ZoodipError(f"{name} {problem}" + (f": use e.g. {example}" if example else ""))
    return int(value)  # type: ignore[arg-type]  (side_problem has checked it is an integer)


def sd_unet_side_multiple(vae_scale_factor: int) -> int:
    """The sides SD's UNet, exported to double at each upsampling, runs at: its three halvings exact (64 px on SD)."""
    return side_multiple(vae_scale_factor * SD_UNET_REDUCTION)


def unet_side_multiple(vae_scale_factor: int, unet_halvings: int | None, follows_skips: bool) -> int:
    """The step of image sides an exported model runs at: 8 px and the VAE's factor, as in diffusers, where its UNet
    resizes each upsampling to the skip connection it meets; on an export made before that, times 2 per UNet halving
    (its skip connections meet again only where each halving is exact; one made before the halvings were recorded
    says so in one line when its UNet fails)."""
    if follows_skips:
        return side_multiple(vae_scale_factor)
    return side_multiple(vae_scale_factor * 2 ** (unet_halvings or 0))


def side_rule(model: Any) -> str:
    """The image sides ``model`` (an ``ExportedModel``) runs at, said for ``zoodip info``."""
    if model.unet_follows_skips:
        return f"multiples of {model.side_multiple} px"
    if model.unet_halvings is None:
        return (f"multiples of {sd_unet_side_multiple(model.vae_scale_factor)} px on SD (not recorded by this export; "
                f"export it again to run any multiple of {side_multiple(model.vae_scale_factor)})")
    return (f"multiples of {model.side_multiple} px (its UNet was exported before it followed its skip connections' "
            f"sizes; export it again to run any multiple of {side_multiple(model.vae_scale_factor)})")


def model_side_multiple(model: Any, derived: bool = False) -> int:
    """The step of image sides ``model`` runs at (``ExportedModel.side_multiple``; a stand-in model: its VAE's).

    ``derived``: for sides zoodip picks (from a photo's aspect, the hires fix) on an export that does not record its
    UNet's halvings, SD's three (64 px on SD): a given side is left to the UNet, which refuses it in one line."""
    if derived and getattr(model, "unet_halvings", 0) is None and not getattr(model, "unet_follows_skips", False):
        return sd_unet_side_multiple(int(model.vae_scale_factor))
    return int(getattr(model, "side_multiple", side_multiple(model.vae_scale_factor)))


def check_model_side(model: Any, name: str, value: object, example: int | None = None) -> int:
    """``check_side`` with ``model``'s step (``model_side_multiple``); a side that only an older export's UNet refuses
    says so, and that exporting again lifts the limit."""
    multiple, base = model_side_multiple(model), side_multiple(int(model.vae_scale_factor))
    if multiple != base and side_problem(value, base) is None and value % multiple:  # type: ignore[operator]
        raise ZoodipError(f"{name} must be a positive multiple of {multiple} on this export, got {value!r}: its UNet "
                          f"was exported before it ran any multiple of {base} (export the model again)"
                          + (f", or use e.g. {example}" if example else ""))
    return check_side(name, value, multiple, example)

"""What A1111 and diffusers do around an inpainting's sampling, outside the latents.

- **Mask blur** (A1111's "Mask blur"; diffusers' ``mask_processor.blur``): the mask softened by a Gaussian blur of
  ``mask_blur`` px at the image's size. The latent mask is still split at half gray, so the blur mostly shapes the
  paste-back's seam.
- **Only masked** (diffusers' ``padding_mask_crop``; A1111's "Inpaint area: Only masked" with its padding): the
  white part's bounding box, ``padding`` px wider on each side, grown to the aspect of the size it is generated at,
  is cut from the image, redrawn at that size, and pasted back into the full image: a small region of a large photo
  gets every pixel of the model's native size.
- **Paste-back** (A1111 does it on every inpainting; diffusers with ``padding_mask_crop``): the result is the
  original image where the mask is black, the generated one where it is white, the mask's gray levels between: the
  kept part keeps its pixels exactly, not their trip through the VAE.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageFilter

from .errors import ZoodipError

Box = tuple[int, int, int, int]  # left, top, right, bottom (PIL's crop box)
MAX_MASK_BLUR = 256  # px; A1111's slider stops at 64


@dataclass(frozen=True)
class InpaintOptions:
    """generate()'s ``mask_blur`` (px), ``padding_mask_crop`` (px around the mask; None: the whole image) and
    ``paste_back`` (always done with ``padding_mask_crop``)."""

    mask_blur: float = 0.0
    padding_mask_crop: int | None = None
    paste_back: bool = False

    @property
    def changes_pixels(self) -> bool:
        return bool(self.mask_blur) or self.padding_mask_crop is not None or self.paste_back

    def check(self, with_mask: bool) -> None:
        """Each option refused in one line: of the wrong kind or range, or given without a mask."""
        blur, padding = self.mask_blur, self.padding_mask_crop
        if isinstance(blur, bool) or not isinstance(blur, numbers.Real) or not 0 <= blur <= MAX_MASK_BLUR:
            raise ZoodipError(f"mask_blur must be a number of pixels from 0 to {MAX_MASK_BLUR} (A1111's default is 4), "
                              f"got {blur!r}")
        if padding is not None and (isinstance(padding, bool) or not isinstance(padding, (int, np.integer))
                                    or padding < 0):
            raise ZoodipError(f"padding_mask_crop must be a whole number of pixels >= 0 (A1111's 'only masked "
                              f"padding' is 32), or left out for the whole image, got {padding!r}")
        if not isinstance(self.paste_back, (bool, np.bool_)):
            raise ZoodipError(f"paste_back must be True or False, got {self.paste_back!r}")
        given = [name for name, on in (("mask_blur", bool(blur)), ("padding_mask_crop", padding is not None),
                                       ("paste_back", bool(self.paste_back))) if on]
        if not with_mask and given:
            raise ZoodipError(f"{' and '.join(given)} appl{'ies' if len(given) == 1 else 'y'} to inpainting: pass "
                              f"mask_image too, or drop {'it' if len(given) == 1 else 'them'}")


def blur_mask(mask: Image.Image, radius: float) -> Image.Image:
    """``mask`` (8-bit gray) under a Gaussian blur of ``radius`` px (PIL's, as diffusers' and A1111's); 0 keeps it."""
    return mask.filter(ImageFilter.GaussianBlur(float(radius))) if radius > 0 else mask  # (float: a NumPy number too)


def crop_region(mask: Image.Image, size: tuple[int, int], padding: int) -> Box | None:
    """The box "only masked" redraws: around every nonzero pixel of ``mask``, ``padding`` px wider on each side
    (within the image), then grown about its middle to the aspect of ``size`` (the width and height it is generated
    at) and shifted back inside the image. None where the mask has no nonzero pixel."""
    marked = np.asarray(mask.convert("L")) > 0
    rows, cols = np.flatnonzero(marked.any(axis=1)), np.flatnonzero(marked.any(axis=0))
    if rows.size == 0:
        return None
    image_w, image_h = mask.size
    left, top = max(int(cols[0]) - padding, 0), max(int(rows[0]) - padding, 0)
    right, bottom = min(int(cols[-1]) + 1 + padding, image_w), min(int(rows[-1]) + 1 + padding, image_h)
    width, height = size
    if (right - left) / (bottom - top) > width / height:  # wider than the target: grow its height
        top, bottom = _grown(top, bottom, (right - left) / (width / height), image_h)
    else:
        left, right = _grown(left, right, (bottom - top) * (width / height), image_w)
    return left, top, right, bottom


def _grown(low: int, high: int, wanted: float, limit: int) -> tuple[int, int]:
    """``[low, high)`` grown to about ``wanted`` (half on each side), then moved (not shrunk) inside ``[0, limit)``
    and clipped to it where it is longer than the image."""
    extra = int(wanted - (high - low))
    low, high = low - extra // 2, high + extra - extra // 2
    if high >= limit:
        low, high = low - (high - limit), limit
    if low < 0:
        low, high = 0, high - low
    return low, min(high, limit)


def inpainting_views(picture: Image.Image, mask: Image.Image, options: InpaintOptions, size: tuple[int, int],
                     reopen: Callable[[], Image.Image] | None = None
                     ) -> tuple[Image.Image, Image.Image, PasteBack | None]:
    """The image and the mask to sample from, and what pastes the result back (None: nothing is pasted).

    ``mask`` is taken to ``picture``'s size and blurred; "only masked" cuts both to ``crop_region`` for ``size``
    (the size generated), which is then pasted into the whole ``picture``; a plain paste-back blends at ``size``.
    ``reopen``: reads the whole picture again at paste time, so that a large photo is not held while sampling (only
    its box is); without it the picture is kept.
    """
    mask = blur_mask(mask if mask.size == picture.size else mask.resize(picture.size, Image.Resampling.LANCZOS),
                     options.mask_blur)
    if options.padding_mask_crop is not None:
        box = crop_region(mask, size, int(options.padding_mask_crop))
        if box is not None:  # every nonzero mask pixel lies in the box: the box's part of it is all the paste needs
            return picture.crop(box), mask.crop(box), PasteBack(reopen or picture, mask.crop(box), box)
        return picture, mask, PasteBack(picture, mask)  # nothing to redraw: the whole photo back, at its size
    if not options.paste_back:
        return picture, mask, None
    sized = [im if im.size == size else im.resize(size, resample) for im, resample in
             ((picture, Image.Resampling.BICUBIC), (mask, Image.Resampling.LANCZOS))]
    return picture, mask, PasteBack(sized[0], sized[1])


@dataclass(frozen=True)
class PasteBack:
    """The original image (or what reads it again), the mask within the box (gray: opacity of the generated pixels;
    the whole image's where the box is None), and the box the generated images fill."""

    original: Image.Image | Callable[[], Image.Image]
    mask: Image.Image
    box: Box | None = None

    def __call__(self, images: Sequence[Image.Image]) -> list[Image.Image]:
        """Each of ``images`` (resized into the box) over the original, through the mask: the original's size."""
        original = self.original() if callable(self.original) else self.original
        left, top, right, bottom = self.box or (0, 0, *original.size)
        if right > original.width or bottom > original.height:
            raise ZoodipError(f"the start image is now {original.width}x{original.height} px: it changed while the "
                              "images were made; run again")
        base = np.asarray(original, dtype=np.uint8)
        kept = base[top:bottom, left:right].astype(np.float32)
        alpha = np.asarray(self.mask, dtype=np.float32)[..., None] / 255.0
        pasted = []
        for generated in images:
            if generated.size != (right - left, bottom - top):
                generated = generated.resize((right - left, bottom - top), Image.Resampling.LANCZOS)
            canvas = base.copy()  # only the box is blended (in float)
            blended = kept + (np.asarray(generated, dtype=np.float32) - kept) * alpha
            canvas[top:bottom, left:right] = np.clip(blended + 0.5, 0, 255).astype(np.uint8)
            pasted.append(Image.fromarray(canvas, mode="RGB"))
        return pasted

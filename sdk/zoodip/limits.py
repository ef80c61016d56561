"""Upper bounds on sizes, refused up front with the limit in the message.

An image size that cannot fit the machine otherwise runs until memory runs out and dies inside
PIL, NumPy or onnxruntime minutes later. The check here is a *lower bound* on the memory a size
needs, so it never refuses a size that could run: every Stable Diffusion VAE has a single-head
self-attention over all latent positions in its middle block, whose score matrix is
``(h * w)^2`` float32 values per image (h, w: the latent size), and which holds two of them at once: the
exported graph's Softmax writes its probabilities beside the scores it reads (onnxruntime does not overwrite
its input), so the check counts both (counting one let a size pass that then died with out-of-memory). The memory available is the
``--memory-budget`` when one is given, else the machine's physical memory.
"""
from __future__ import annotations

import math
import os

from .errors import ZoodipError
from .image_side import side_multiple

_FLOAT32 = 4
# The attention's scores and their softmax, live together (see above).
_SCORE_MATRICES_LIVE = 2


def machine_memory_bytes() -> int | None:
    """Physical memory of this machine, or None where the OS does not say."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, OSError, ValueError):
        return None


def attention_bytes(latent_h: int, latent_w: int, images: int = 1) -> int:
    """Bytes of the VAE's latent self-attention scores and their softmax for ``images`` images: a floor on peak
    memory."""
    positions = int(latent_h) * int(latent_w)
    return int(images) * positions * positions * _FLOAT32 * _SCORE_MATRICES_LIVE


def available_bytes(memory_budget_mb: int | None = None) -> tuple[int | None, str]:
    """The memory a run may use and how to name it in a message."""
    if memory_budget_mb:
        return int(memory_budget_mb) << 20, f"the memory_budget_mb of {memory_budget_mb} MB"
    total = machine_memory_bytes()
    return total, f"this machine's {gigabytes(total or 0)} of memory"


def largest_side(vae_scale_factor: int, available: int, images: int = 1, multiple: int | None = None) -> int:
    """The largest square image side (a multiple of ``multiple``, by default of 8 and of the VAE factor) whose floor
    fits ``available``."""
    multiple = multiple or side_multiple(vae_scale_factor)
    positions = math.isqrt(max(0, available // (_FLOAT32 * _SCORE_MATRICES_LIVE * max(1, images))))
    side_latent = math.isqrt(positions)
    return max(0, side_latent * int(vae_scale_factor) // multiple * multiple)


def check_image_size(height: int, width: int, vae_scale_factor: int, what: str, images: int = 1,
                     memory_budget_mb: int | None = None, multiple: int | None = None) -> None:
    """Refuse an image size whose memory floor exceeds what the run may use (one line, with the largest side that
    fits, a multiple of ``multiple``: the sides the model runs at)."""
    available, where = available_bytes(memory_budget_mb)
    if available is None:
        return
    need = attention_bytes(height // vae_scale_factor, width // vae_scale_factor, images)
    if need > available:
        side = largest_side(vae_scale_factor, available, images, multiple)
        raise ZoodipError(
            f"{what} needs at least {gigabytes(need)} of memory (the VAE's attention over {height // vae_scale_factor}x"
            f"{width // vae_scale_factor} latents), more than {where}: use at most {side} px"
        )


def gigabytes(n: int) -> str:
    """Bytes as GB for a message."""
    return f"{n / 2**30:.3g} GB" if n < 2**60 else f"{n / 2**30:.2e} GB"


def check_photo_count(count: int, resolution: int, views: int = 1, memory_budget_mb: int | None = None) -> None:
    """Refuse more photos than their decoded pixels (float32 RGB, once per view) can fit in memory."""
    available, where = available_bytes(memory_budget_mb)
    if available is None:
        return
    per_photo = views * 3 * int(resolution) ** 2 * _FLOAT32
    if count * per_photo > available:
        raise ZoodipError(
            f"{count} photos at {resolution} px take {gigabytes(count * per_photo)} decoded, more than {where}: "
            f"use at most {available // per_photo} (3-10 photos are typical)"
        )


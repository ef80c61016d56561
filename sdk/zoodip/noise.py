"""The initial noise of generation: a seed's draws, and A1111's variation seeds (another seed's draws mixed in).

A variation keeps an image's layout and changes its details: the seed's noise ``a`` and the variation seed's ``b``
are mixed by spherical interpolation (Shoemake 1985), which keeps the mix a plausible draw of unit-variance noise
(its norm stays near both's, where the straight line's midpoint would be about 0.71 as long):

    slerp(s, a, b) = sin((1 - s) omega) / sin(omega) a + sin(s omega) / sin(omega) b,  cos(omega) = <a, b> / (|a| |b|)

for each image's noise as one vector (A1111 normalizes along one axis of the latents instead: the same idea, other
numbers; its noise is torch's draws anyway). ``s = 0`` is the seed's image, ``s = 1`` the variation seed's.
"""
from __future__ import annotations

import numbers
import warnings

import numpy as np

from .errors import ZoodipError

MAX_LATENT = 1e3  # |x| of a unit-variance draw: past 6 in one of 10^9 values; past this, not noise at all


def draw_noise(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Unit-variance float32 noise of ``shape`` from ``rng``: the same on any machine."""
    return rng.standard_normal(shape, dtype=np.float32)


def slerp(s: float, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spherical interpolation from ``a`` (s = 0) to ``b`` (s = 1) along the leading axis: each ``a[i]``, ``b[i]`` one
    vector (float arrays of one shape, none of them zero). Nearly parallel vectors are mixed on the straight line,
    where the sines' ratio loses its digits."""
    _check_strength(s, "s")
    a, b = np.asarray(a), np.asarray(b)
    if (a.shape != b.shape or a.ndim < 1 or a.size == 0 or not np.issubdtype(a.dtype, np.floating)
            or not np.issubdtype(b.dtype, np.floating)):
        raise ZoodipError(f"slerp mixes two float arrays of one shape, got {a.dtype} {list(a.shape)} and {b.dtype} "
                          f"{list(b.shape)}")
    flat_a, flat_b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    if not (np.isfinite(flat_a).all() and np.isfinite(flat_b).all()) or not (
            np.linalg.norm(flat_a, axis=1).all() and np.linalg.norm(flat_b, axis=1).all()):
        raise ZoodipError("slerp mixes finite, nonzero vectors (noise): a zero or non-finite one has no direction")
    cos = np.sum(flat_a * flat_b, axis=1) / (np.linalg.norm(flat_a, axis=1) * np.linalg.norm(flat_b, axis=1))
    omega = np.arccos(np.clip(cos, -1.0, 1.0))[:, None]
    sin = np.sin(omega)
    straight = sin < 1e-6
    safe = np.where(straight, 1.0, sin)
    wa = np.where(straight, 1.0 - s, np.sin((1.0 - s) * omega) / safe)
    wb = np.where(straight, s, np.sin(s * omega) / safe)
    return (wa * flat_a + wb * flat_b).reshape(a.shape).astype(a.dtype)


def check_seed(seed: object, name: str = "seed") -> None:
    """A seed: a whole number >= 0 (numpy's generators take any size)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ZoodipError(f"{name} must be a non-negative integer, got {seed!r:.60}")


def _check_strength(value: object, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value <= 1:
        raise ZoodipError(f"{name} must be a number from 0 to 1 (0: the seed's noise, 1: the variation seed's), got "
                          f"{value!r:.60}")


def check_variation(variation_seed: object, variation_strength: object, latents: object = None,
                    seed: object = None) -> None:
    """A1111's variation settings: a strength in [0, 1] (None: 0), a seed wherever the strength mixes one in, and no
    caller's ``latents`` (which are the noise already: mix them before passing them). A variation seed that is the
    ``seed`` itself is warned of: it changes nothing."""
    _check_strength(0.0 if variation_strength is None else variation_strength, "variation_strength")
    if variation_seed is None:
        if variation_strength:
            raise ZoodipError("variation_strength mixes in another seed's noise: give it with variation_seed")
        return
    check_seed(variation_seed, "variation_seed")
    if not variation_strength:
        raise ZoodipError("variation_seed changes nothing without a variation strength: give one (variation_strength=S, "
                          "0.1 to 0.3 for a close variation), or drop the variation seed")
    if latents is not None:
        raise ZoodipError("variation_seed cannot be mixed into the initial latents given (they are the noise "
                          "already): drop it, or mix the variation into the latents you pass (zoodip.noise.slerp)")
    if seed is not None and variation_seed == seed:
        warnings.warn(f"the variation seed is the seed itself ({seed}), whose noise it mixes in: the image is the "
                      "seed's; pick another variation seed", stacklevel=3)


def seed_noise(seed: int, shape: tuple[int, ...], variation_seed: int | None = None,
               variation_strength: float = 0.0) -> tuple[np.ndarray, np.random.Generator]:
    """The seed's noise of ``shape``, with the variation seed's mixed in at ``variation_strength``, and the seed's
    generator, which goes on to draw the rest of the run's randomness (a variation changes the noise only)."""
    rng = np.random.default_rng(seed)
    noise = draw_noise(rng, shape)
    if variation_seed is not None and variation_strength:  # (None, as 0: no variation)
        noise = slerp(float(variation_strength), noise, draw_noise(np.random.default_rng(variation_seed), shape))
    return noise, rng


def checked_latents(latents: np.ndarray | None, noise: np.ndarray) -> np.ndarray:
    """The caller's ``latents`` (checked against the seed's ``noise``, which is drawn anyway), else ``noise``."""
    if latents is None:
        return noise
    latents, shape = np.asarray(latents), noise.shape
    if latents.shape != shape or not np.issubdtype(latents.dtype, np.floating) or not np.all(np.isfinite(latents)):
        raise ZoodipError(f"latents must be finite floats of shape {list(shape)} ([images, channels, height/8, "
                          f"width/8]), got {latents.dtype} {list(latents.shape)}")
    if np.abs(latents).max(initial=0.0) > MAX_LATENT:  # the sampler scales them by sigma_max: a flat gray image
        raise ZoodipError(f"latents hold values up to {float(np.abs(latents).max()):.3g}: initial latents are unit-variance "
                          f"noise (a draw stays within about 6), so these are not; pass noise (or a seed)")
    return latents.astype(np.float32)

"""Decoding latents in overlapping tiles, blended into one image (what a memory budget may ask for).

The VAE decoder is mostly local (convolutions), but its group normalizations and its mid-block
self-attention see their whole input: a tile decodes a little differently from the same region of
the whole image, most near the tile's edges. Neighbouring tiles therefore overlap, and each pixel
of an overlap is the weighted mean of the tiles covering it, with weights that fall linearly
towards a tile's inner edges, so a tile's least reliable border counts least and no seam shows.
A decoder that is purely local (``tests``' pointwise one) decodes exactly the same in tiles.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

Decoder = Callable[[np.ndarray], np.ndarray]
"""``decode(latents [n, c, h, w]) -> images [n, 3, h * factor, w * factor]``"""


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Offsets of tiles of ``tile`` covering ``length``, neighbours sharing at least ``overlap``; the last
    tile ends at ``length`` (so every tile has the full size, and the last may overlap more)."""
    if tile >= length:
        return [0]
    stride = max(1, tile - overlap)
    return list(range(0, length - tile, stride)) + [length - tile]


def blend_weights(size: int, ramp: int, rises: bool, falls: bool) -> np.ndarray:
    """A tile's weights along one axis (pixels): 1, rising over ``ramp`` pixels from an edge it shares
    with a neighbour before it (``rises``) and falling towards one after it (``falls``); never 0."""
    weights = np.ones(size, np.float32)
    if ramp > 0:
        distance = (np.arange(size, dtype=np.float32) + 0.5) / ramp
        if rises:
            weights = np.minimum(weights, distance)
        if falls:
            weights = np.minimum(weights, distance[::-1])
    return weights


def decode_tiled(decode: Decoder, latents: np.ndarray, tile: int, overlap: int, factor: int) -> np.ndarray:
    """``decode`` applied to ``tile`` x ``tile`` latent tiles overlapping by ``overlap``, blended (float32)."""
    latents = np.asarray(latents, np.float32)
    h, w = latents.shape[2:]
    tile_h, tile_w = min(tile, h), min(tile, w)
    out: np.ndarray | None = None
    total = np.zeros((h * factor, w * factor), np.float32)
    for y in tile_starts(h, tile_h, overlap):
        rows = blend_weights(tile_h * factor, overlap * factor, y > 0, y + tile_h < h)
        for x in tile_starts(w, tile_w, overlap):
            part = np.asarray(decode(latents[:, :, y : y + tile_h, x : x + tile_w]), np.float32)
            if out is None:
                out = np.zeros(part.shape[:2] + total.shape, np.float32)
            weights = rows[:, None] * blend_weights(tile_w * factor, overlap * factor, x > 0, x + tile_w < w)[None, :]
            region = (slice(y * factor, (y + tile_h) * factor), slice(x * factor, (x + tile_w) * factor))
            out[(...,) + region] += part * weights
            total[region] += weights
    assert out is not None  # at least one tile
    out /= total
    return out

"""Curvature-subspace directions (not in the paper): where the model's loss responds to a token embedding.

The export stores the top eigenvectors of the denoising loss's Gauss-Newton curvature with respect to a
placeholder embedding (``zoodip_export.curvature`` computes them once per model, with autograd, on
generic prompts, words and latents). Training draws its random directions inside the smallest leading
block of them that holds a given fraction of the stored curvature trace.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .errors import ZoodipError
from .safetensors_io import read_file, save_file
from .validation import finite_float
from .zo import components_to_keep

CURVATURE_FILE = "curvature.safetensors"  # in the export folder; listed in the manifest's "curvature" entry
DEFAULT_CURVATURE_FRACTION = 0.999  # the trace fraction training keeps by default (benchmarks/README.md)


def save_curvature(path: Path, eigenvalues: np.ndarray, eigenvectors: np.ndarray, meta: Mapping[str, object]) -> Path:
    """Write eigenvalues ``[k]`` (descending) and eigenvectors ``[dim, k]`` with string metadata."""
    import json

    return save_file({"eigenvalues": np.asarray(eigenvalues, np.float64),
                      "eigenvectors": np.ascontiguousarray(eigenvectors, dtype=np.float32)},
                     path, {key: json.dumps(value) for key, value in meta.items()})


class CurvatureSubspace:
    """The leading eigenvectors of a model's Gauss-Newton curvature for a token embedding.

    A random-direction estimate's variance grows with the dimension it searches
    (:class:`zoodip.zo.RandomGradientEstimator`); the curvature's leading ``k`` eigenvectors are where
    the loss (and so the gradient) lives, so drawing the directions there searches ``k`` dimensions
    instead of ``dim`` and loses only the gradient's small part outside them. The fraction of the
    trace to keep sets ``k``; the bias it leaves is the remaining fraction.
    """

    def __init__(self, eigenvalues: np.ndarray, eigenvectors: np.ndarray, source: str = "") -> None:
        eigenvalues = np.asarray(eigenvalues, dtype=np.float64).reshape(-1)
        eigenvectors = np.asarray(eigenvectors, dtype=np.float64)
        where = f"{source}: " if source else ""
        if eigenvectors.ndim != 2 or eigenvectors.shape[1] != eigenvalues.shape[0] or eigenvalues.shape[0] < 1:
            raise ZoodipError(f"{where}curvature eigenvectors {eigenvectors.shape} do not match eigenvalues "
                              f"{eigenvalues.shape}; re-export the model")
        if not (np.all(np.isfinite(eigenvalues)) and np.all(np.isfinite(eigenvectors))) or np.any(eigenvalues < 0):
            raise ZoodipError(f"{where}the curvature file holds non-finite or negative values; re-export the model")
        if np.any(np.diff(eigenvalues) > 1e-12 * max(1.0, float(eigenvalues[0]))):
            raise ZoodipError(f"{where}the curvature eigenvalues are not in descending order; re-export the model")
        gram = eigenvectors.T @ eigenvectors
        if not np.allclose(gram, np.eye(gram.shape[0]), atol=1e-4):
            raise ZoodipError(f"{where}the curvature eigenvectors are not orthonormal; re-export the model")
        if eigenvalues.sum() <= 0:
            raise ZoodipError(f"{where}the curvature is zero: the loss does not respond to the embedding")
        self.eigenvalues, self.eigenvectors = eigenvalues, eigenvectors

    @property
    def dim(self) -> int:
        return int(self.eigenvectors.shape[0])

    @classmethod
    def load(cls, path: Path) -> CurvatureSubspace:
        tensors, _ = read_file(path)
        if set(tensors) != {"eigenvalues", "eigenvectors"}:
            raise ZoodipError(f"{path}: expected tensors eigenvalues and eigenvectors, found {sorted(tensors)}")
        return cls(tensors["eigenvalues"], tensors["eigenvectors"], str(path))

    def components(self, trace_fraction: float) -> int:
        """The fewest leading eigenvectors holding ``trace_fraction`` of the stored eigenvalues' sum."""
        trace_fraction = finite_float("the curvature subspace's trace fraction", trace_fraction, low=0.0, high=1.0)
        ratios = self.eigenvalues / self.eigenvalues.sum()
        return components_to_keep(ratios, 1.0 - trace_fraction)

    def basis(self, trace_fraction: float) -> np.ndarray:
        """Orthonormal columns ``[dim, k]`` for :class:`zoodip.zo.RandomGradientEstimator`."""
        return np.ascontiguousarray(self.eigenvectors[:, : self.components(trace_fraction)])

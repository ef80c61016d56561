"""Vocabulary-subspace directions (not in the paper): where the model's words differ."""
from __future__ import annotations

import mmap
from collections.abc import Iterator

import numpy as np

from .validation import finite_float
from .zo import components_to_keep


def _row_blocks(table: np.ndarray, rows: int = 1024) -> Iterator[np.ndarray]:
    """``table`` in float64 blocks of ``rows`` rows; a ``np.memmap`` is read from its file instead."""
    # Only a whole mapping (its base is the mmap itself): a view's ``offset`` is its parent's.
    if isinstance(table, np.memmap) and isinstance(table.base, mmap.mmap) and table.flags.c_contiguous:
        row_bytes = table.shape[1] * table.dtype.itemsize
        for start in range(0, table.shape[0], rows):
            count = min(rows, table.shape[0] - start)
            block = np.fromfile(table.filename, dtype=table.dtype, count=count * table.shape[1],
                                offset=table.offset + start * row_bytes)
            yield block.reshape(count, table.shape[1]).astype(np.float64)
    else:
        for start in range(0, table.shape[0], rows):
            yield np.asarray(table[start : start + rows], dtype=np.float64)


class VocabularySubspace:
    """The principal directions of the model's token-embedding table: where real words differ.

    Not in the paper; an option (``PersonalizeConfig.vocabulary_variance``). A random-direction
    estimate's variance grows with the dimension it searches (:class:`RandomGradientEstimator`).
    Drawing the directions inside the top-``k`` principal subspace of the vocabulary's embeddings
    (centered; the fewest components holding ``variance`` of the total) searches ``k`` dimensions
    instead of ``dim``, and keeps the learned embedding among the directions in which words vary.
    The price is bias: the estimate never points along the other ``dim - k`` directions, so ``v``
    cannot move there. It pays where the table is strongly anisotropic (``k << dim``) and costs
    nothing where it is not (``k ~ dim``). With ZO-SGD ``v - v_init`` stays in the span; ZO-Adam's
    per-coordinate scaling of the (in-span) estimates lets its updates leave it a little.
    """

    def __init__(self, basis: np.ndarray, explained: float) -> None:
        self.basis = np.ascontiguousarray(np.asarray(basis, dtype=np.float64))  # [dim, k], orthonormal columns
        self.explained = float(explained)  # fraction of the table's variance the basis holds

    @property
    def k(self) -> int:
        return int(self.basis.shape[1])

    @classmethod
    def fit(cls, table: np.ndarray, variance: float) -> VocabularySubspace:
        """Fit on a ``[vocab, dim]`` token table; keep the fewest components holding ``variance``."""
        variance = finite_float("the vocabulary subspace's variance fraction", variance, low=0.0, high=1.0)
        if not isinstance(table, np.ndarray):
            table = np.asarray(table)
        if table.ndim != 2 or table.shape[0] < 2:
            raise ValueError(f"the token table must be [vocab >= 2, dim], got shape {table.shape}")
        # Two passes over row blocks (mean, then the dim x dim covariance accumulated in float64 over
        # float32 GEMMs): the table is never copied whole, and a memory-mapped one is read with file
        # reads, so its pages do not become resident in this process (73 MiB for SD1.5's fp16 table).
        mean = sum(block.sum(axis=0, dtype=np.float64) for block in _row_blocks(table)) / table.shape[0]
        cov = np.zeros((table.shape[1],) * 2)
        for block in _row_blocks(table):
            centered = (block - mean).astype(np.float32)
            cov += centered.T @ centered
        eigenvalues, eigenvectors = np.linalg.eigh(cov)
        order = np.argsort(eigenvalues)[::-1]
        eigenvalues, eigenvectors = np.clip(eigenvalues[order], 0.0, None), eigenvectors[:, order]
        ratios = eigenvalues / eigenvalues.sum()
        k = components_to_keep(ratios, 1.0 - variance)
        return cls(eigenvectors[:, :k], float(ratios[:k].sum()))

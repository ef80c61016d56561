"""Several vectors per placeholder token (``--num_vectors``, as in diffusers' ``textual_inversion.py``).

The placeholder ``<tok>`` becomes K tokens ``<tok>``, ``<tok>_1``, ..., ``<tok>_{K-1}``, and a prompt's
``<tok>`` stands for all K in order. That expansion is the tokenizer's (``add_placeholder(token, K)``),
the same one generation uses for a multi-vector file, so training and generation cannot disagree on it.

Training optimizes the K x width matrix as one flat vector of K * width numbers: the random-direction
estimate perturbs all K vectors at once, and ZO-Adam and Subspace Gradient see one vector. With K = 1
the flat vector is the embedding row itself, so a one-vector run computes what it always did. The
search dimension, and with it the number of forwards a forward-only estimate needs, grows K-fold
(``search_space.block_diagonal``).
"""
from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from .errors import ZoodipError


def add_placeholder_tokens(tokenizer: Any, token: str, num_vectors: int) -> list[int]:
    """Add ``token`` as ``num_vectors`` tokens to ``tokenizer``; returns their ids in prompt order."""
    return [int(i) for i in tokenizer.add_placeholder(token, num_vectors)]


def initial_vector(row: np.ndarray, num_vectors: int) -> np.ndarray:
    """The flat starting point: the initializer word's row for each of the K vectors (diffusers' choice)."""
    row = np.asarray(row, dtype=np.float32)
    return row if num_vectors == 1 else np.tile(row, num_vectors)


def as_matrix(v: np.ndarray, width: int) -> np.ndarray:
    """The flat vector as the embedding's ``[num_vectors, width]`` matrix (a view)."""
    return np.asarray(v).reshape(-1, width)


def check_prompts_fit(tokenizer: Any, prompts: Iterable[str], placeholder_ids: Sequence[int], token: str) -> None:
    """Refuse a training prompt in which any of the placeholder's vectors falls past the text encoder's limit, and warn of
    one whose last words fall past it (diffusers cuts them without a word).

    The text encoder reads ``max_length - 2`` tokens between its start and end markers; a vector cut off
    there would never be trained (its gradient is zero) yet would be saved as if it had been.
    """
    limit = int(tokenizer.max_length) - 2
    wanted = set(placeholder_ids)
    long: list[tuple[str, int]] = []
    for prompt in prompts:
        ids = tokenizer.encode(prompt)
        if len(ids) > limit:
            long.append((prompt, len(ids)))
        if any(i in wanted for i in ids[limit:]):
            count = len(placeholder_ids)
            vectors = f"its {count} vectors" if count > 1 else "its vector"
            raise ZoodipError(f"the training prompt {prompt!r} is {len(ids)} tokens with {token} expanded to {vectors}, "
                              f"past the text encoder's {limit}: use a smaller num_vectors or shorter captions or "
                              "templates")
    if long:  # the placeholder is read; the caption's last words are not, as in diffusers' training
        (prompt, length), more = long[0], f" (and {len(long) - 1} more)" if len(long) > 1 else ""
        warnings.warn(f"the training prompt {prompt[:60]!r}{more} is {length} tokens, past the text encoder's {limit}: "
                      "its last words are not read; shorten the captions or templates", stacklevel=3)


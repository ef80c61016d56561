"""Learned tokens for one generation: added to a copy of the model's tokenizer, their vectors checked and laid out as
the text encoder's extra embedding rows, and a prompt's use of them checked (``generate``)."""
from __future__ import annotations

import copy
import warnings
from typing import Any, Mapping

import numpy as np

from .embeddings import MAX_VECTORS, check_hidden_size
from .errors import ZoodipError
from .run_checks import BLOWUP_NORM_FACTOR


def tokenizer_with(model: Any, added: Mapping[str, np.ndarray] | None) -> tuple[Any, np.ndarray | None, set[int]]:
    """A tokenizer that knows the added tokens, the embedding rows of all added ids, and those ids.

    ``model.encode_text(ids, extra_rows)`` looks up id ``base_vocab_size + k`` in ``extra_rows[k]``.
    The tokens go into a copy of the model's tokenizer so the caller's stays as it was. If
    that tokenizer already holds placeholders (e.g. one a training run added), new ids come after
    them; their rows stay zero and ``known`` excludes them, so a prompt using one without giving
    its embedding is refused instead of silently conditioning on a zero vector.
    """
    tokenizer = model.tokenizer
    if added is not None and not isinstance(added, Mapping):
        raise ZoodipError(f"added_embeddings must be a dict {{token: vectors [n, hidden]}} (load_embedding_file gives "
                          f"a token and its vectors), got {type(added).__name__}")
    if not added:
        return tokenizer, None, set()
    # A tokenizer may offer a cheaper independent copy (sharing its read-only tables).
    tokenizer = tokenizer.copy() if callable(getattr(tokenizer, "copy", None)) else copy.deepcopy(tokenizer)
    hidden = int(model.hidden_size)
    base = int(tokenizer.base_vocab_size)
    rows: dict[int, np.ndarray] = {}
    for token, vectors in added.items():
        array = _added_vectors(token, vectors)
        array = array[None, :] if array.ndim == 1 else array
        if array.ndim != 2 or len(array) < 1:
            raise ZoodipError(f"embedding for {token!r} must have shape [n, {hidden}] or [{hidden}], got {list(np.shape(vectors))}")
        check_hidden_size(array, hidden, f"the embedding for {token!r}")
        if len(array) > MAX_VECTORS:  # (a file's are refused so on reading)
            raise ZoodipError(f"the embedding for {token!r} has {len(array)} vectors, more than a prompt's "
                              f"{MAX_VECTORS} tokens can hold: is it an embedding?")
        _warn_if_saturating(model, token, array)
        ids = _add_or_find(tokenizer, token, len(array), base)
        for token_id, row in zip(ids, array):
            rows[token_id] = row
    extra = np.zeros((max(rows) - base + 1, hidden), dtype=np.float32)
    for token_id, row in rows.items():
        extra[token_id - base] = row
    return tokenizer, extra, set(rows)


def _added_vectors(token: object, vectors: object) -> np.ndarray:
    """An added token's vectors as float32, refused in one line unless its name is a string and they are finite
    real numbers (a NaN would only show as a black image, after all the steps)."""
    if not isinstance(token, str):
        raise ZoodipError(f"added_embeddings' keys are token names (strings), got {token!r}")
    try:
        array = np.asarray(vectors)  # (None: an object array, refused below)
    except ValueError:  # rows of different lengths
        raise ZoodipError(f"the embedding for {token!r} must be an array [n, hidden]: its rows differ in length") from None
    if array.dtype.kind not in "fiu":
        raise ZoodipError(f"the embedding for {token!r} must hold real numbers, got {array.dtype} values")
    array = array.astype(np.float32)
    if not np.all(np.isfinite(array)):
        raise ZoodipError(f"the embedding for {token!r} holds NaN or infinite values: it cannot condition an image")
    return array


def _warn_if_saturating(model: Any, token: str, array: np.ndarray) -> None:
    """Warn of a vector past the norm a training run calls blown up (``run_checks.BLOWUP_NORM_FACTOR`` times the
    largest word's): the text encoder saturates on it, and every such vector gives the same images."""
    if not callable(getattr(model, "max_token_norm", None)):
        return
    norm = float(np.max(np.linalg.norm(array.astype(np.float64), axis=1)))
    limit = BLOWUP_NORM_FACTOR * float(model.max_token_norm())
    if norm > limit:
        warnings.warn(f"the embedding for {token!r} has a vector of norm {norm:.3g}, over {BLOWUP_NORM_FACTOR:g}x the "
                      "largest word's: the text encoder saturates on it (a run that blew up?), so the images will "
                      "not follow it", stacklevel=4)


def _add_or_find(tokenizer: Any, token: str, count: int, base: int) -> list[int]:
    """Ids of ``token`` (``count`` vectors): newly added, or the ones it already has."""
    try:
        ids = [int(i) for i in tokenizer.add_placeholder(token, count)]
    except (ZoodipError, ValueError) as exc:
        # Already a placeholder of this tokenizer: reuse its ids, read back by encoding it alone.
        encoded = [int(i) for i in np.asarray(tokenizer([token]), dtype=np.int64)[0]]
        ids = [i for i in encoded if i >= base]
        if len(ids) != count:
            raise ZoodipError(f"cannot use token {token!r} with {count} vector(s): {exc}") from None
    if len(ids) != count or any(i < base for i in ids):
        raise ZoodipError(f"token {token!r} could not be added as {count} new token(s): choose another name, e.g. '<{token.strip('<>')}-1>'")
    return ids


def check_added_ids(ids: np.ndarray, base: int, known: set[int], text: str) -> None:
    """Refuse a prompt's learned-token ids (``>= base``) that no given embedding answers to."""
    unknown = sorted({int(i) for i in ids[ids >= base]} - known)
    if unknown:
        raise ZoodipError(
            f"the prompt {text!r} uses learned token id(s) {unknown} whose embedding was not given: "
            "pass it in added_embeddings"
        )

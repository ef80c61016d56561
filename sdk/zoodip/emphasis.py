"""AUTOMATIC1111's prompt emphasis: ``(words)``, ``[words]`` and ``(words:1.3)`` as per-token weights.

A1111 users weight parts of a prompt with brackets; diffusers reads the same characters as plain text.
``generate(..., prompt_weighting="a1111")`` reads them as A1111 does, ``"none"`` (the default) as diffusers.

Notation (A1111's web UI, ``prompt_parser.parse_prompt_attention`` and its CLIP hook):

    (x)       weight of x times 1.1                     [x]    weight of x divided by 1.1
    (x:w)     weight of x times w (a decimal number)    nesting multiplies: ((x)) is 1.21
    \\( \\) \\[ \\] \\\\   the character itself, unweighted

An unclosed bracket weights everything after it to the end of the prompt; a closing bracket with no open
one of its kind is plain text, as is a ``:`` that is not ``:w)`` closing a round bracket; a backslash before
any other character is dropped. Each weighted piece is tokenized on its own, so a bracket also ends a word.

After the text encoder, with ``c`` the states ``[77, d]`` of one prompt and ``w`` its token weights (1 for
the start, end and padding tokens):

    c' = c * w[:, None] * mean(c) / mean(c * w[:, None])

i.e. the weighted states rescaled so that the mean of all their numbers is unchanged (A1111's "Original"
emphasis). A prompt without brackets gives the unweighted states exactly.
"""
from __future__ import annotations

import re
from typing import Any

import numpy as np

from .errors import ZoodipError

PROMPT_WEIGHTINGS = ("none", "a1111")  # generate()'s prompt_weighting: diffusers' plain text, A1111's emphasis
ROUND_FACTOR = 1.1  # A1111's "(x)"
SQUARE_FACTOR = 1 / 1.1  # A1111's "[x]"
_ESCAPABLE = "()[]\\"
_EXPLICIT_WEIGHT = re.compile(r":\s*([+-]?[.\d]+)\s*\)")  # the ":1.3)" that closes "(x:1.3)"
_LARGEST_WEIGHT = float(np.finfo(np.float32).max)  # the text states are float32
# What an A1111 prompt with an explicit weight looks like: worth a warning where it is read as plain text.
_A1111_WEIGHTED = re.compile(r"\([^()]*:\s*[+-]?\d*\.?\d+\s*\)")


def check_prompt_weighting(prompt_weighting: object) -> None:
    if prompt_weighting not in PROMPT_WEIGHTINGS:
        raise ZoodipError(f"unknown prompt_weighting {prompt_weighting!r}: use one of {', '.join(PROMPT_WEIGHTINGS)}")


def parse_emphasis(prompt: str) -> list[tuple[str, float]]:
    """``prompt`` as (text, weight) pieces in order, neighbours of equal weight merged; never empty."""
    pieces: list[list[Any]] = []  # [text, weight]; weights are multiplied in place when a bracket closes
    open_round: list[int] = []  # index of the first piece inside each open "(" / "["
    open_square: list[int] = []
    text: list[str] = []

    def flush() -> None:
        if text:
            pieces.append(["".join(text), 1.0])
            text.clear()

    def close(opened: list[int], factor: float) -> None:
        flush()
        for piece in pieces[opened.pop():]:
            piece[1] *= factor

    i = 0
    while i < len(prompt):
        char = prompt[i]
        weight = _EXPLICIT_WEIGHT.match(prompt, i) if char == ":" else None
        if char == "\\":  # an escaped bracket or backslash is kept; before anything else it is dropped
            escaped = i + 1 < len(prompt) and prompt[i + 1] in _ESCAPABLE
            text.append(prompt[i + 1] if escaped else "")
            i += 2 if escaped else 1
            continue
        if char in "([":
            flush()
            (open_round if char == "(" else open_square).append(len(pieces))
        elif weight is not None and open_round:
            close(open_round, _weight(weight.group(1)))
            i = weight.end()
            continue
        elif char == ")" and open_round:
            close(open_round, ROUND_FACTOR)
        elif char == "]" and open_square:
            close(open_square, SQUARE_FACTOR)
        else:
            text.append(prompt[i:weight.end()] if weight is not None else char)
            i = weight.end() if weight is not None else i + 1
            continue
        i += 1
    while open_round:
        close(open_round, ROUND_FACTOR)
    while open_square:
        close(open_square, SQUARE_FACTOR)
    flush()
    return _merged(pieces)


def _weight(number: str) -> float:
    try:
        return float(number)
    except ValueError:
        raise ZoodipError(f"cannot read the emphasis weight {number!r} in the prompt: write it as (words:1.3)") from None


def _merged(pieces: list[list[Any]]) -> list[tuple[str, float]]:
    merged: list[tuple[str, float]] = []
    for text, weight in pieces:
        if not abs(weight) <= _LARGEST_WEIGHT:  # also NaN
            raise ZoodipError(f"the emphasis weight of {text[:40]!r} comes to {weight:g}, beyond what the text states "
                              "can be scaled by: fewer nested brackets, or a smaller (words:W)")
        if merged and merged[-1][1] == weight:
            merged[-1] = (merged[-1][0] + text, weight)
        else:
            merged.append((text, float(weight)))
    return merged or [("", 1.0)]


def emphasis_free_text(prompt: str) -> str:
    """The words the text encoder reads under A1111's emphasis, pieces separated by spaces (a bracket ends
    a word), for the checks that read prompts as text (truncation, unused tokens)."""
    return " ".join(text for text, _ in parse_emphasis(prompt))


def unsupported_problems(prompt: str) -> list[str]:
    """A1111 syntax that zoodip's emphasis does not read, each a one-line message."""
    if re.search(r"\bBREAK\b", prompt):
        return ["A1111's BREAK (start a new 75-token chunk) is not supported: it is read as the word 'break'; "
                "drop it, or shorten the prompt to one chunk"]
    return []


def looks_weighted(prompt: str) -> bool:
    """Whether ``prompt`` holds A1111's explicit weight syntax, ``(words:1.3)``."""
    return bool(_A1111_WEIGHTED.search(prompt))


def weighted_token_ids(tokenizer: Any, prompt: str) -> tuple[np.ndarray, np.ndarray]:
    """Token ids ``[1, 77]`` as ``tokenizer([text])`` lays them out (start, ids cut to 75, end, padding) and
    each token's weight ``[1, 77]`` (float32; 1 outside the prompt's own tokens)."""
    ids: list[int] = []
    weights: list[float] = []
    for text, weight in parse_emphasis(prompt):
        piece = list(tokenizer.encode(text))
        ids += piece
        weights += [weight] * len(piece)
    length = int(np.asarray(tokenizer([""])).shape[1])
    keep = length - 2
    row = np.full((1, length), tokenizer.pad_id, dtype=np.int64)
    row[0, : min(len(ids), keep) + 2] = [tokenizer.bos_id, *ids[:keep], tokenizer.eos_id]
    token_weights = np.ones((1, length), dtype=np.float32)
    token_weights[0, 1 : 1 + min(len(weights), keep)] = weights[:keep]
    return row, token_weights


def emphasize(states: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Text states ``[batch, 77, d]`` weighted per token and rescaled to their own mean, each row apart."""
    states = np.asarray(states, dtype=np.float32)
    weights = np.asarray(weights, dtype=np.float32)
    if not np.all(np.isfinite(weights)):
        raise ZoodipError("prompt emphasis weights must be finite numbers")
    if np.all(weights == 1.0):
        return states
    weighted = states * weights[..., None]
    before = states.mean(axis=(1, 2), dtype=np.float64)
    after = weighted.mean(axis=(1, 2), dtype=np.float64)
    # A weighting that zeroes the mean has no rescale to make (A1111 would divide by zero).
    scale = np.where(after != 0.0, before / np.where(after != 0.0, after, 1.0), 1.0)
    return (weighted * scale[:, None, None]).astype(np.float32)

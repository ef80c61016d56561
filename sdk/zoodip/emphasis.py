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

Long prompts, as A1111 reads them (where the export's UNet takes text states of any length): the tokens are
cut into chunks of 75, each encoded on its own as ``[start, 75 tokens, end]`` (padded), emphasized on its own,
and the chunks' states are joined end to end. ``BREAK`` (a word of its own, in capitals) ends the current chunk.
A chunk that would end within ``COMMA_BACKTRACK`` tokens after a comma ends at the comma instead, its last
words moved to the next chunk; an added token's vectors are never split between chunks (the tokenizer's
``encode_units``). (A1111 reads a BREAK inside brackets as the word "BREAK" with a negative weight; here it ends
the chunk wherever it stands.)

Prompt editing and alternation, ``[from:to:when]`` and ``[a|b]``, are read before all this, into one text per
phase of the sampling (``zoodip.prompt_schedule``); each phase's text is then read as above.
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
# The largest |weight| a token's text states are scaled by (nested brackets multiply): A1111's prompts use 0.5-2;
# far beyond, the states leave float32's range and the image comes out black.
MAX_EMPHASIS_WEIGHT = 100.0
_BREAK = re.compile(r"\s*\bBREAK\b\s*")  # A1111's chunk break, with the spaces around it
CHUNK_TOKENS = 75  # a chunk's own tokens: the text encoder's 77 less the start and end tokens
COMMA_BACKTRACK = 20  # A1111's default "comma padding backtrack"
MAX_CHUNKS = 4  # the longest prompt read: 300 tokens (the UNet's cross-attention grows with the length)
# What an A1111 prompt with an explicit weight looks like: worth a warning where it is read as plain text.
_A1111_WEIGHTED = re.compile(r"\([^()]*:\s*[+-]?\d*\.?\d+\s*\)")
# Brackets that weigh by themselves and seldom appear in plain prose: doubled round ones, "((words))" (also with
# spaces between them, "( (words) )": A1111 reads both as x1.21, the spaces as text at x1.1), and square ones after
# no word character ("[blurry]", not "array[0]"); a single "(words)" is prose as often ("a dog (a pug)").
_A1111_BRACKETED = re.compile(r"(?<!\\)\(\s*\((?=[^()]*[^\W\d_])[^()]*\)\s*\)|(?<![\w\\])\[(?=[^\[\]]*[^\W\d_])[^\[\]:|]*\]")


def has_break(text: str) -> bool:
    """Whether ``text`` holds A1111's BREAK (the start of a new chunk)."""
    return _BREAK.search(text) is not None


def check_prompt_weighting(prompt_weighting: object) -> None:
    if prompt_weighting not in PROMPT_WEIGHTINGS:
        raise ZoodipError(f"unknown prompt_weighting {prompt_weighting!r}: use one of {', '.join(PROMPT_WEIGHTINGS)}")


def parse_emphasis(prompt: str) -> list[tuple[str, float]]:
    """``prompt`` as (text, weight) pieces in order, neighbours of equal weight merged; never empty.
    ``BREAK`` is text here (see :func:`parse_chunks`)."""
    return _parse(prompt, breaks=False)[0]


def parse_chunks(prompt: str) -> list[list[tuple[str, float]]]:
    """``prompt``'s pieces as :func:`parse_emphasis` gives them, in one list per part between ``BREAK`` words."""
    return _parse(prompt, breaks=True)


def _parse(prompt: str, breaks: bool) -> list[list[tuple[str, float]]]:
    pieces: list[list[Any]] = []  # [text, weight], text None at a BREAK; weights are multiplied when a bracket closes
    open_round: list[int] = []  # index of the first piece inside each open "(" / "["
    open_square: list[int] = []
    text: list[str] = []

    def flush() -> None:
        if text:
            parts = _BREAK.split("".join(text)) if breaks else ["".join(text)]
            for k, part in enumerate(parts):
                pieces.extend([[None, 1.0]] if k else [])
                pieces.extend([[part, 1.0]] if part else [])
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


def _merged(pieces: list[list[Any]]) -> list[list[tuple[str, float]]]:
    parts: list[list[tuple[str, float]]] = [[]]
    for text, weight in pieces:
        if text is None:  # BREAK
            parts.append([])
            continue
        if not abs(weight) <= MAX_EMPHASIS_WEIGHT:  # also NaN
            raise ZoodipError(f"the emphasis weight of {text[:40]!r} comes to {weight:g}, beyond the largest read "
                              f"({MAX_EMPHASIS_WEIGHT:g}): fewer nested brackets, or a smaller (words:W)")
        merged = parts[-1]
        if merged and merged[-1][1] == weight:
            merged[-1] = (merged[-1][0] + text, weight)
        else:
            merged.append((text, float(weight)))
    return [merged or [("", 1.0)] for merged in parts]


def emphasis_free_text(prompt: str) -> str:
    """The words the text encoder reads under A1111's emphasis, pieces separated by spaces (a bracket ends
    a word), for the checks that read prompts as text (truncation, unused tokens)."""
    return " ".join(text for text, _ in parse_emphasis(prompt))


def unsupported_problems(prompt: str, chunked: bool = True) -> list[str]:
    """A1111 syntax that zoodip does not honour (with ``chunked`` False: where the export's UNet reads 77 text
    states only), each a one-line message."""
    problems = []
    if not chunked and re.search(r"\bBREAK\b", prompt):
        problems.append("A1111's BREAK (start a new 75-token chunk) needs an export whose UNet reads long prompts: it "
                        "is read as the word 'break' here; re-export the model with this version of 'zoodip export', "
                        "or drop it")
    return problems


def looks_emphasized(prompt: str) -> bool:
    """Whether ``prompt`` holds A1111's emphasis as plain prose seldom does: an explicit weight, ``(words:1.3)``, or
    brackets that weigh by themselves, ``((words))`` x1.21 and ``[words]`` /1.1 (not an edit's ``[a:b:when]`` or an
    alternation's ``[a|b]``)."""
    return bool(_A1111_WEIGHTED.search(prompt) or _A1111_BRACKETED.search(prompt))


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
    return _token_rows(tokenizer, [(ids[: length - 2], weights[: length - 2])], length)


def chunked_token_ids(tokenizer: Any, prompt: str) -> tuple[np.ndarray, np.ndarray]:
    """Token ids ``[chunks, 77]`` of ``prompt`` in A1111's chunks (see the module's notes) and each token's weight
    (float32; 1 outside the prompt's own tokens). One chunk, laid out as :func:`weighted_token_ids`, for a prompt
    of at most 75 tokens without ``BREAK``; refused past ``MAX_CHUNKS``."""
    comma = tokenizer.encode(",")[0]
    chunks: list[tuple[list[int], list[float]]] = []
    ids: list[int] = []
    weights: list[float] = []
    last_comma = -1

    def close() -> None:
        nonlocal ids, weights, last_comma
        chunks.append((ids, weights))
        ids, weights, last_comma = [], [], -1

    for part, pieces in enumerate(parse_chunks(prompt)):
        if part:
            close()  # BREAK, even after an empty chunk (A1111 then encodes an empty one)
        for text, weight in pieces:
            for unit in tokenizer.encode_units(text):
                if unit[0] == comma:
                    last_comma = len(ids)
                elif len(ids) == CHUNK_TOKENS and last_comma != -1 and len(ids) - last_comma <= COMMA_BACKTRACK:
                    moved = ids[last_comma + 1 :], weights[last_comma + 1 :]
                    ids, weights = ids[: last_comma + 1], weights[: last_comma + 1]
                    close()
                    ids, weights = list(moved[0]), list(moved[1])
                if len(ids) == CHUNK_TOKENS or len(ids) + len(unit) > CHUNK_TOKENS:
                    close()
                ids += unit[:CHUNK_TOKENS]
                weights += [weight] * len(unit[:CHUNK_TOKENS])
    if ids or not chunks:
        close()
    if len(chunks) > MAX_CHUNKS:
        shown = repr(prompt if len(prompt) <= 40 else prompt[:40] + "...")
        raise ZoodipError(f"the prompt {shown} takes {len(chunks)} chunks of {CHUNK_TOKENS} tokens; at most "
                          f"{MAX_CHUNKS} are read ({MAX_CHUNKS * CHUNK_TOKENS} tokens): shorten it")
    return _token_rows(tokenizer, chunks, CHUNK_TOKENS + 2)


def _token_rows(tokenizer: Any, chunks: list[tuple[list[int], list[float]]], length: int) -> tuple[np.ndarray, np.ndarray]:
    """Each chunk's (ids, weights) as the text encoder reads a prompt: ``[start, ids, end, padding]`` in rows of
    ``length``, and the weights in the same places (1 for the start, end and padding)."""
    rows = np.full((len(chunks), length), tokenizer.pad_id, dtype=np.int64)
    token_weights = np.ones((len(chunks), length), dtype=np.float32)
    for row, (chunk_ids, chunk_weights) in enumerate(chunks):
        rows[row, : len(chunk_ids) + 2] = [tokenizer.bos_id, *chunk_ids, tokenizer.eos_id]
        token_weights[row, 1 : 1 + len(chunk_weights)] = chunk_weights
    return rows, token_weights


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

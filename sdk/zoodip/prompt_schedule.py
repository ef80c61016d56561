"""AUTOMATIC1111's prompt editing and alternation (a prompt whose words change while the image is sampled), and its
``AND`` (a prompt of several parts, each its own guidance term).

    [from:to:when]   "from" until step ``when``, then "to"      [to:when]      nothing, then "to"
    [from::when]     "from" until step ``when``, then nothing   [a|b|c]        a, b, c, a, ... a step each

``when`` is a step number (``5``) or, written with a decimal point, a fraction of the steps (``0.25``, ``.5``);
past the last step it is the last step. The constructs nest (``[a:[b|c]:0.5]``), and their words may carry
emphasis, which ``zoodip.emphasis`` reads in each phase. ``generate(..., prompt_weighting="a1111")`` reads them.

Notation (A1111's ``prompt_parser``, with the web UI's default scheduling since its version 1.6):

    S            the sampling steps that run
    when(w)      int(w * S) for a number w written with ".", else int(w); at most S
    schedule     [(e_1, text_1), ..., (e_k, text_k)]: e_1 < ... < e_k = S the distinct ends (S, every when(w) >= 1,
                 and 1..S where the prompt alternates), text_j the prompt read at step e_j:
                 [x:y:w] reads x where e_j <= when(w), else y; [o_1|...|o_m] reads o_((e_j - 1) mod m + 1)
    step i       the sampler's i-th step (0-based) is conditioned on text_j, j the first with i <= e_j

So, as in A1111, ``[a:b:5]`` reads a for the steps 0 to 5 and b from step 6 on, and ``[a|b]`` reads a for the
first two steps. A prompt that does not parse (a ``|`` outside brackets, a construct left open) is read whole,
in one phase, as A1111 reads it; every other character of a prompt is kept as written, brackets included, for
the emphasis parser.

``AND`` (composable diffusion, Liu et al. 2022, its conjunction operator) splits a prompt into parts p_1..p_K,
each with a weight w_k (a part ending in ``:w``, else 1), each scheduled as above; the guided prediction is then

    eps = eps(negative) + g * sum_k w_k (eps(p_k) - eps(negative))

As in A1111, a prompt without ``AND`` is one part whose own trailing ``:w`` weights it (``"16:9"`` is "16" at 9).
"""
from __future__ import annotations

import numbers
import re
from dataclasses import dataclass
from typing import Callable, Generic, TypeVar, Union

from .errors import ZoodipError

T = TypeVar("T")
U = TypeVar("U")

# A prompt is read for its schedule up to this length: longer ones are far past the 300 tokens a prompt may hold
# (emphasis.MAX_CHUNKS), and their schedule would cost time for nothing.
MAX_SCHEDULED_CHARS = 20_000
# Brackets nested deeper than this are read as written (one phase), not recursed into.
MAX_DEPTH = 100
# Distinct prompts one schedule may hold: each is encoded before sampling and kept until it ends.
MAX_PHASES = 64
# AND's parts: each one is one more UNet pass a step.
MAX_PARTS = 8
MAX_PART_WEIGHT = 100.0  # |w| of a part: past it the guided prediction leaves float32's range for nothing
AND_SEPARATOR = re.compile(r"\bAND\b")  # A1111's composable diffusion: "a cat AND a dog"
# The numbers of A1111's grammar, written so that a long run of digits costs linear time (``\d+\.?\d*`` backtracks
# quadratically): a part's weight, [+-]1 / 1. / 1.5 / .5, and an edit's when, lark's SIGNED_NUMBER (with spaces).
_WEIGHT = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")
_NUMBER = re.compile(r"\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*")
_SCHEDULE_SYNTAX = re.compile(r"[\[|]")  # a prompt without "[" or "|" has one phase


@dataclass(frozen=True)
class _Edit:
    """``[before:after:when]``; ``before`` None for ``[after:when]``."""

    before: _Sequence | None
    after: _Sequence
    when: str  # the number as written: a "." makes it a fraction of the steps


@dataclass(frozen=True)
class _Alternation:
    options: tuple[_Sequence, ...]


_Sequence = tuple[Union[str, _Edit, _Alternation], ...]


@dataclass(frozen=True)
class Phases(Generic[T]):
    """Values that hold for runs of sampling steps: ``values[j]`` for the steps ``i <= ends[j]`` not covered before."""

    ends: tuple[int, ...]
    values: tuple[T, ...]

    def at(self, step: int) -> T:
        """The value of the sampler's ``step`` (0-based; A1111's ``reconstruct_cond_batch``)."""
        return next((value for end, value in zip(self.ends, self.values) if step <= end), self.values[-1])

    def map(self, function: Callable[[T], U]) -> Phases[U]:
        """``function`` of each value, called once per distinct value."""
        done: dict[T, U] = {}
        return Phases(self.ends, tuple(done[v] if v in done else done.setdefault(v, function(v)) for v in self.values))


def composable_parts(prompt: str) -> list[tuple[str, float]]:
    """The prompt's ``AND`` parts and their weights (the module's notation); one line where there are too many or a
    weight is out of range."""
    parts = []
    for part in AND_SEPARATOR.split(prompt):
        text, weight = _weighted(part)
        if abs(weight) > MAX_PART_WEIGHT:
            raise ZoodipError(f"the prompt part {text[:40]!r} has the weight {weight:g} (a trailing ':{weight:g}', which "
                              f"A1111 reads as a weight): at most {MAX_PART_WEIGHT:g} either way")
        parts.append((text, weight))
    if len(parts) > MAX_PARTS:
        raise ZoodipError(f"the prompt has {len(parts)} parts joined by AND; at most {MAX_PARTS} (each is one more UNet "
                          "pass a step): join some into one part")
    return parts


def _weighted(part: str) -> tuple[str, float]:
    """One AND part as A1111's regex ``^(\\s*.*?)(?:\\s*:\\s*(NUMBER))?\\s*$`` reads it, in linear time (that regex
    is quadratic on long runs of spaces): the text before a trailing ``:w`` and w, else the text without its trailing
    spaces and 1 (a text of spaces only: kept); the part whole at 1 where a line break stands inside the text (its
    ``.`` does not cross one)."""
    core = part.rstrip()
    text, weight, blank = core, 1.0, part  # blank: what the regex's greedy leading \s* takes where nothing else is
    colon = core.rfind(":")
    if colon >= 0 and _WEIGHT.fullmatch(core[colon + 1 :].lstrip()):
        text, weight, blank = core[:colon].rstrip(), float(core[colon + 1 :]), core[:colon]
    if not text.strip():
        return blank, weight
    return (part, 1.0) if "\n" in text.lstrip() else (text, weight)


def prompt_schedule(prompt: str, steps: int) -> Phases[str]:
    """The texts ``prompt`` reads over ``steps`` sampling steps (the module's notation); one phase if it has no
    editing or alternation, or does not parse."""
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
        raise ZoodipError(f"steps must be a positive integer, got {steps!r}")
    tree = parse_schedule(prompt)
    if tree is None:
        return Phases((steps,), (prompt,))
    ends = sorted({steps, *_ends(tree, steps)})
    return Phases(tuple(ends), tuple(_text(tree, end, steps) for end in ends))


def check_phase_count(phases: Phases[str], what: str) -> None:
    """At most ``MAX_PHASES`` distinct texts, else one line naming the count."""
    distinct = len(set(phases.values))
    if distinct > MAX_PHASES:
        raise ZoodipError(f"the {what}'s prompt editing and alternation give {distinct} different prompts over "
                          f"{phases.ends[-1]} steps; at most {MAX_PHASES} are encoded: use fewer alternations or steps")


def parse_schedule(prompt: str) -> _Sequence | None:
    """The prompt's constructs, or None where it has none or does not parse (it is then read whole)."""
    return _read_schedule(prompt)[0]


def schedule_problems(prompt: str) -> list[str]:
    """Where ``prompt`` looks edited but its schedule is not read, one line saying why."""
    return _read_schedule(prompt)[1]


def _read_schedule(prompt: str) -> tuple[_Sequence | None, list[str]]:
    """The one reading behind ``parse_schedule`` and ``schedule_problems``: the constructs (None where there are
    none or the prompt is read whole), and why a prompt that looks edited is read whole where that is not A1111's
    own reading (too long or too deep here; A1111 too reads a prompt that does not parse whole, brackets as
    emphasis)."""
    if not _SCHEDULE_SYNTAX.search(prompt):
        return None, []
    if len(prompt) > MAX_SCHEDULED_CHARS:
        return None, [f"prompt editing is not read in a prompt of {len(prompt)} characters (at most "
                      f"{MAX_SCHEDULED_CHARS}): it is read whole"]
    try:
        tree = _Parser(prompt).top()
    except _TooDeep:
        return None, [f"prompt editing is not read in brackets nested over {MAX_DEPTH} deep: the prompt is read whole"]
    except _NoParse:
        return None, []
    return (tree if any(not isinstance(item, str) for item in tree) else None), []


class _NoParse(Exception):
    pass


class _TooDeep(Exception):
    pass


class _Parser:
    """A1111's grammar, read left to right. At the top level a bracket that opens no construct is a character;
    inside a construct every bracket must open one. A construct is parsed at most once per position (``_memo``),
    so a prompt of many unclosed brackets costs linear time, not exponential."""

    def __init__(self, text: str) -> None:
        self.text = text
        self._memo: dict[int, tuple[_Sequence, int] | None] = {}

    def top(self) -> _Sequence:
        items: list[object] = []
        pos, text = 0, self.text
        while pos < len(text):
            char = text[pos]
            if char in "[(":
                try:
                    construct, pos = self._construct(pos, 1)
                    items.extend(construct)
                    continue
                except _NoParse:
                    pass
            if char in "[]():":  # a bracket or colon of no construct: a character
                items.append(char)
                pos += 1
                continue
            words, pos = self._words(pos)
            items.append(words)
        return _joined(items)

    def _words(self, pos: int) -> tuple[str, int]:
        """Plain text from ``pos`` to the next bracket, colon or bar; a backslash keeps the next character."""
        text, start = self.text, pos
        while pos < len(text) and text[pos] not in "[]():|":
            if text[pos] == "\\":
                if pos + 1 >= len(text) or text[pos + 1] == "\n":
                    raise _NoParse
                pos += 1
            pos += 1
        if pos == start:  # a "|" outside any construct
            raise _NoParse
        return text[start:pos], pos

    def _prompt(self, pos: int, depth: int) -> tuple[_Sequence, int]:
        """A construct's part: words and nested constructs up to the next ``:``, ``|`` or closing bracket."""
        items: list[object] = []
        while pos < len(self.text) and self.text[pos] not in ":|])":
            if self.text[pos] in "[(":
                construct, pos = self._construct(pos, depth + 1)
                items.extend(construct)
            else:
                words, pos = self._words(pos)
                items.append(words)
        return _joined(items), pos

    def _construct(self, pos: int, depth: int) -> tuple[_Sequence, int]:
        if depth > MAX_DEPTH:
            raise _TooDeep
        if pos not in self._memo:
            try:
                self._memo[pos] = self._bracketed(pos, depth)
            except _NoParse:
                self._memo[pos] = None
        found = self._memo[pos]
        if found is None:
            raise _NoParse
        return found

    def _bracketed(self, pos: int, depth: int) -> tuple[_Sequence, int]:
        """The bracket at ``pos`` to its closing one: emphasis (its characters kept), an edit or an alternation."""
        opening, text = self.text[pos], self.text
        closing = "]" if opening == "[" else ")"
        parts, separators, spans = [], [], []
        pos += 1
        while True:
            start = pos
            part, pos = self._prompt(pos, depth)
            parts.append(part)
            spans.append(text[start:pos])
            if pos >= len(text) or text[pos] not in closing + ":|":
                raise _NoParse  # left open, or closed by the other kind of bracket
            pos += 1
            if text[pos - 1] == closing:
                break
            separators.append(text[pos - 1])
        if not separators:
            return _joined([opening, *parts[0], closing]), pos
        if opening == "(":
            if separators != [":"]:
                raise _NoParse
            return _joined(["(", *parts[0], ":", *parts[1], ")"]), pos
        if set(separators) == {"|"}:
            return (_Alternation(tuple(parts)),), pos
        number = _NUMBER.fullmatch(spans[-1])
        if set(separators) != {":"} or len(separators) > 2 or number is None:
            raise _NoParse
        before = parts[0] if len(separators) == 2 else None
        return (_Edit(before, parts[-2], number.group(1)),), pos


def _joined(items: list[object]) -> _Sequence:
    """``items`` with runs of text joined into one string."""
    joined: list[object] = []
    for item in items:
        if isinstance(item, str) and joined and isinstance(joined[-1], str):
            joined[-1] += item
        elif not (isinstance(item, str) and not item):
            joined.append(item)
    return tuple(joined)  # type: ignore[arg-type]


def _when(number: str, steps: int) -> int:
    """``when(w)`` of the module's notation (kept within [-1, S]: below 1 it never ends a phase)."""
    value = float(number) * (steps if "." in number else 1)
    return int(max(-1.0, min(float(steps), value)))


def _ends(tree: _Sequence, steps: int) -> set[int]:
    ends: set[int] = set()
    for item in tree:
        if isinstance(item, _Edit):
            when = _when(item.when, steps)
            ends |= {when} if when >= 1 else set()
            ends |= _ends(item.after, steps) | (_ends(item.before, steps) if item.before else set())
        elif isinstance(item, _Alternation):
            ends |= set(range(1, steps + 1))
    return ends


def _text(tree: _Sequence, end: int, steps: int) -> str:
    pieces = []
    for item in tree:
        if isinstance(item, str):
            pieces.append(item)
        elif isinstance(item, _Edit):
            chosen = (item.before or ()) if end <= _when(item.when, steps) else item.after
            pieces.append(_text(chosen, end, steps))
        else:
            pieces.append(_text(item.options[(end - 1) % len(item.options)], end, steps))
    return "".join(pieces)

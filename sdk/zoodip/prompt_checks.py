"""What ``generate`` warns about in its prompts: words past what the text encoder reads, learned tokens that no
prompt uses or that no loaded file answers to, and A1111 syntax read as plain text or not read at all. Each check
returns one-line messages; nothing here stops a call."""
from __future__ import annotations

import re
from typing import Any, Sequence

import numpy as np

from .emphasis import has_break, looks_emphasized, unsupported_problems
from .extra_networks import TAG
from .prompt_schedule import AND_SEPARATOR, parse_schedule, schedule_problems


def syntax_problems(prompts: Sequence[str], weighted: bool, chunked: bool = False,
                    negative: Sequence[str] = ()) -> list[str]:
    """A1111 syntax read as plain text (explicit weights, prompt editing and, outside the ``negative`` prompt's
    texts, where A1111 reads it as a word too, AND, under "none"), or not read at all (BREAK where the UNet reads 77
    text states only, editing in a prompt too long or deep to read)."""
    negative_tags = [f"the negative prompt's {match.group(0)[:40]} is read as words, as A1111 reads it there (it takes "
                     "extra-network tags out of the prompt only; zoodip fuses LoRAs at export)"
                     for text in negative for match in TAG.finditer(text or "")][:1]
    if weighted:
        return negative_tags + [problem for text in prompts if text
                                for problem in unsupported_problems(text, chunked) + schedule_problems(text)]
    syntax = {"emphasis syntax '(words:1.3)', '((words))', '[words]'": looks_emphasized, "prompt editing or alternation '[a:b:0.5]', '[a|b]'":
              lambda text: parse_schedule(text) is not None,
              "AND (composable diffusion)": lambda text: text not in negative and AND_SEPARATOR.search(_words(text)),
              "BREAK (a new 75-token chunk)": lambda text: has_break(_words(text)),
              "extra-network tag '<lora:name:1>' (LoRAs are fused at export here: 'zoodip export --lora')":
              lambda text: text not in negative and TAG.search(text)}
    return negative_tags + [
        f"the prompt {_shortened(text)} uses A1111's {name}, read here as plain text (as diffusers does): pass "
        "prompt_weighting='a1111' to read it as A1111 does"
        for text in prompts if text for name, found in syntax.items() if found(text)]


# Where A1111's emphasis is asked for but the export's UNet reads 77 text states only.
LONG_PROMPT_HINT = (" (or re-export the model with this version of 'zoodip export' to read long prompts in A1111's "
                    "75-token chunks)")


def truncation_problems(tokenizer: Any, texts: Sequence[str], hint: str = "") -> list[str]:
    """One message per text longer than the text encoder reads (77 tokens with the start and end markers):
    its tail is cut, as in diffusers (which logs the same), and should not be cut silently."""
    if not callable(getattr(tokenizer, "encode", None)):
        return []
    keep = int(np.asarray(tokenizer([""])).shape[1]) - 2
    problems = []
    for text in texts:
        count = len(tokenizer.encode(text)) if text else 0
        if count > keep:
            problems.append(f"the prompt {_shortened(text)} is {count} tokens; the text encoder reads the first {keep}, "
                            f"the last {count - keep} are cut off: shorten it{hint}")
    return problems


def _words(text: str) -> str:
    """``text`` without its placeholder words ('<cat-AND-dog>' is a token's name here, not a keyword)."""
    return _PLACEHOLDER_WORD.sub(" ", text)


def _shortened(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


# A word written as a placeholder, as diffusers' and A1111's learned tokens are by convention: "<my-dog>".
_PLACEHOLDER_WORD = re.compile(r"<[^<>\s]+>")


def _added_ids(tokenizer: Any, names: Sequence[str]) -> set[int]:
    """The ids past the vocabulary that ``names`` (added tokens) read as."""
    base = int(tokenizer.base_vocab_size)
    return {int(i) for name in names for i in np.asarray(tokenizer([name]))[0] if i >= base}


def used_token_names(tokenizer: Any, texts: Sequence[str], names: Sequence[str], whole: bool = False) -> list[str]:
    """The added tokens of ``names`` that ``texts`` use within what the text encoder reads of them (``whole``: all of
    them, as A1111's chunks read them; else to the token limit), the same reading as ``token_use_problems``."""
    read = (tokenizer.encode if whole and callable(getattr(tokenizer, "encode", None))
            else lambda text: np.asarray(tokenizer([text]))[0])
    ids = {int(i) for text in texts if text for i in read(text)}
    return [name for name in names if _added_ids(tokenizer, [name]) & ids]


# How an API caller loads an embedding (the command line says it as its flag: cli_flags).
LOAD_ITS_EMBEDDING = "load its file with load_textual_inversion(PATH), or load_embeddings([PATH]) into added_embeddings"


def unloaded_token_problems(texts: Sequence[str], loaded: Sequence[str], tokenizer: Any = None) -> list[str]:
    """One message per ``<word>`` in ``texts`` that no loaded embedding answers to: the tokenizer would read
    it as plain text (its pieces '<', 'my', '-', 'dog', '>'), and the image silently lacks the concept. A word
    that ``tokenizer`` already holds as a placeholder is not plain text (its missing vectors are an error)."""
    # (A1111's extra-network tags, <lora:name:1>, are said apart: syntax_problems, extra_networks.tag_problems.)
    seen = sorted({word for text in texts if text for word in _PLACEHOLDER_WORD.findall(TAG.sub(" ", text))}
                  - set(loaded))
    if tokenizer is not None:
        base = int(tokenizer.base_vocab_size)
        seen = [word for word in seen if not any(int(i) >= base for i in np.asarray(tokenizer([word]))[0])]
    return [f"{word!r} in a prompt looks like a learned token, but no embedding for it is loaded, so it is read "
            f"as plain text: {LOAD_ITS_EMBEDDING}" for word in seen]


def token_use_problems(tokenizer: Any, texts: Sequence[str], groups: Sequence[Sequence[str]],
                       whole: bool = False) -> list[str]:
    """One message per token group that none of ``texts`` uses, or uses only past the token limit (with
    ``whole``, the texts are read whole, as A1111's chunks read them: no limit).

    The text encoder sees 77 tokens with the start and end markers, so a prompt's tokens past the
    75th are cut: a learned token there changes nothing, silently. Needs only the tokenizer interface
    generate() uses (``__call__``, ``base_vocab_size``); with an ``encode`` method (untruncated ids) a
    token past the limit is told apart from a missing one.
    """
    width = int(np.asarray(tokenizer([""])).shape[1])
    problems = []
    for names in groups:
        ids = _added_ids(tokenizer, names)
        if any(int(i) in ids for text in texts if text for i in np.asarray(tokenizer([text]))[0]):
            continue  # used within the limit
        shown = " or ".join(repr(name) for name in names)
        full = [list(tokenizer.encode(text)) for text in texts if text] if callable(getattr(tokenizer, "encode", None)) else []
        positions = [k for row in full for k, i in enumerate(row) if int(i) in ids]
        if positions and whole:
            continue  # used, past the first chunk
        if positions:
            problems.append(f"the embedding token {shown} comes after the prompt's {width - 2}-token limit (at token "
                            f"{min(positions) + 1}), so it is cut off: move it earlier or shorten the prompt")
        elif said := _bare_words_said(names, texts):
            problems.append(f"the embedding token {shown} does not appear in the prompt, so it changes nothing: the "
                            f"prompt's {said[0]!r} is that word of the vocabulary, not the embedding (a file name that "
                            f"is already a word is not taken over, unlike A1111): write '<{said[0]}>'")
        elif cased := _written_in_another_case(names, texts):
            problems.append(f"the embedding token {shown} does not appear in the prompt, so it changes nothing: the "
                            f"prompt writes {cased[1]!r}, and a name is matched as written here (A1111 ignores case): "
                            f"write {cased[0]!r}")
        else:
            problems.append(f"the embedding token {shown} does not appear in the prompt, so it changes nothing: "
                            "write it in the prompt (or rename it with load_textual_inversion(PATH, token=TOKEN))")
    return problems


def _written_in_another_case(names: Sequence[str], texts: Sequence[str]) -> tuple[str, str] | None:
    """(a name, the text's spelling of it) where a text holds one of ``names`` in another case, else None."""
    for name in names:
        for text in texts:
            found = re.search(re.escape(name), text or "", re.IGNORECASE)
            if found:
                return name, found.group(0)
    return None


def _bare_words_said(names: Sequence[str], texts: Sequence[str]) -> list[str]:
    """The words ``w`` of names ``<w>`` that a text holds bare (not inside another word or its brackets)."""
    bare = [name[1:-1] for name in names if len(name) > 2 and name.startswith("<") and name.endswith(">")]
    return [word for word in bare if any(re.search(rf"(?<![\w<]){re.escape(word)}(?![\w>])", text)
                                         for text in texts if text)]


# What A1111's reading of a prompt takes as syntax inside a learned token's name, so that the name is never read
# whole: AND and BREAK split the prompt, brackets weigh or edit, \ escapes (or is dropped), <kind:...> is a tag.
# (A bare | is text: it alternates only inside brackets.)
_A1111_SYNTAX = {"AND": AND_SEPARATOR.search, "BREAK": has_break, "brackets": re.compile(r"[()\[\]]").search,
                 "\\": re.compile(r"\\").search, "an extra-network tag": TAG.search}


def unreadable_tokens(names: Sequence[str]) -> dict[str, str]:
    """``{name: its message}`` for the learned tokens whose names hold A1111's syntax (``_A1111_SYNTAX``): read as A1111
    reads a prompt (``--prompt-weighting a1111``), such a token is never read whole, however the prompt writes it."""
    held = {name: [what for what, found in _A1111_SYNTAX.items() if found(name)] for name in names}
    return {name: f"the learned token {name!r} holds {' and '.join(whats)}, which A1111's reading of a prompt takes as "
                  "its syntax, so the token is never read whole: rename it (load_textual_inversion(PATH, "
                  "token=TOKEN), added_embeddings' key, placeholder_token)" for name, whats in held.items() if whats}


def unreadable_token_problems(names: Sequence[str]) -> list[str]:
    """``unreadable_tokens``' messages, one per such token."""
    return list(unreadable_tokens(names).values())

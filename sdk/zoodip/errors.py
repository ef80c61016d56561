"""User-facing errors.

Every problem a user can cause (a bad path, a bad flag, an unreadable photo) is raised as a
``ZoodipError`` whose message is one line saying what is wrong and what to do. The CLI prints it
and exits with status 2; an app backend catches it and shows the message.
"""
from __future__ import annotations

import re


class Given(str):
    """The user's own words in a ``ZoodipError`` (a path, a value as typed), given as a part of its own:
    ``ZoodipError(Given(path), " does not exist: pass a JPEG or PNG file")``. The command line, which says the API's
    names as its flags (``guidance_scale``: ``--guidance-scale``), says such a part as written, whatever it reads like
    (a file named ``guidance_scale``)."""


# C0 and C1 control characters but the tab, as ``str.translate`` shows them escaped: a file name, a token or an image's
# text that another made may hold a terminal's escape sequences (ESC [, CSI, BEL), which no message may send to it.
CONTROL_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7f, *range(0x80, 0xa0)) if c != 0x09}


def one_line(message: object) -> str:
    """``message`` as the one line a terminal shows as written: each run of whitespace one space, control characters
    escaped (``CONTROL_ESCAPES``)."""
    return " ".join(str(message).split()).translate(CONTROL_ESCAPES)


class ZoodipError(Exception):
    """A problem with the user's input or environment, with a one-line explanation: one string, or its ``parts``
    (the SDK's words, and the user's as ``Given``)."""

    exit_code = 2

    def __init__(self, *parts: str) -> None:
        # Keep it one line: the CLI prints exactly this text (whitespace runs made one space, each part's own, none at
        # its two ends; control characters escaped, CONTROL_ESCAPES).
        kinds = [Given if isinstance(part, Given) else str for part in parts] or [str]
        said = [re.sub(r"\s+", " ", str(part)).translate(CONTROL_ESCAPES) for part in parts] or [""]
        said[0] = said[0].lstrip()
        said[-1] = said[-1].rstrip()
        self.parts = tuple(kind(text) for kind, text in zip(kinds, said))
        super().__init__(one_line("".join(self.parts)))

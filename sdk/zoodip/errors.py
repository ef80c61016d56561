"""User-facing errors.

Every problem a user can cause (a bad path, a bad flag, an unreadable photo) is raised as a
``ZoodipError`` whose message is one line saying what is wrong and what to do. The CLI prints it
and exits with status 2; an app backend catches it and shows the message.
"""
from __future__ import annotations


# C0 and C1 control characters but the tab, as ``str.translate`` shows them escaped: a file name, a token or an image's
# text that another made may hold a terminal's escape sequences (ESC [, CSI, BEL), which no message may send to it.
CONTROL_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7f, *range(0x80, 0xa0)) if c != 0x09}


def one_line(message: object) -> str:
    """``message`` as the one line a terminal shows as written: each run of whitespace one space, control characters
    escaped (``CONTROL_ESCAPES``)."""
    return " ".join(str(message).split()).translate(CONTROL_ESCAPES)


class ZoodipError(Exception):
    """A problem with the user's input or environment, with a one-line explanation."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        # Keep it one line: the CLI prints exactly this text.
        super().__init__(one_line(message))

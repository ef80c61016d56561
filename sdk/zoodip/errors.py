"""User-facing errors.

Every problem a user can cause (a bad path, a bad flag, an unreadable photo) is raised as a
``ZoodipError`` whose message is one line saying what is wrong and what to do. The CLI prints it
and exits with status 2; an app backend catches it and shows the message.
"""
from __future__ import annotations


class ZoodipError(Exception):
    """A problem with the user's input or environment, with a one-line explanation."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        # Keep it one line: the CLI prints exactly this text.
        super().__init__(" ".join(str(message).split()))

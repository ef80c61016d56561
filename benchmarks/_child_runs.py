"""A benchmark's run of another script in a child process (demo_seeds.py's demo per seed, quality.py's worker per
method) ended as one command: the child's stderr is passed on line by line, but its own closing line is the
parent's to say. A Ctrl-C reaches both processes, and each said its 'interrupted:' line (two lines, the child's
naming flags the user never gave); a failing child was a CalledProcessError traceback after its 'error:' line.
"""
from __future__ import annotations

import signal
import subprocess
import sys
from typing import IO, Any

from zoodip.console import INTERRUPTED_STATUSES, Terminated
from zoodip.errors import ZoodipError

# How long an interrupted parent waits for its child to end by itself (a Ctrl-C at a terminal reaches both; the
# child's clean-up, a checkpoint or a temporary file's removal, is not cut short) before passing the interrupt on.
GRACE_S = 10.0
# The child's closing lines, held back: the parent says its own instead.
CLOSING = ("error: ", "interrupted: ")


def run_child(command: list[str], what: str, **popen: Any) -> None:
    """Run ``command`` to its end, its stderr passed on; ``what`` names it in the parent's one line. A failure is a
    ZoodipError ``WHAT failed: THE CHILD'S ERROR``; an interrupted child (or parent) a KeyboardInterrupt, raised once
    the child has ended."""
    held: list[str] = []
    with subprocess.Popen(command, stderr=subprocess.PIPE, text=True, errors="replace", **popen) as proc:
        try:
            _relay(proc.stderr, held)
            proc.wait()
        except KeyboardInterrupt as exc:
            _end_interrupted(proc, exc)
            raise
    if proc.returncode == 0:
        sys.stderr.writelines(held)
        return
    if proc.returncode in INTERRUPTED_STATUSES or -proc.returncode in (signal.SIGINT, signal.SIGTERM):
        raise KeyboardInterrupt  # (signalled alone, or its status seen before the parent's own Ctrl-C)
    said = held[-1].strip()[len("error: "):] if held and held[-1].startswith("error: ") else None
    ended = f"killed by signal {-proc.returncode}" if proc.returncode < 0 else f"exit status {proc.returncode}"
    raise ZoodipError(f"{what} failed: {said}" if said else f"{what} failed ({ended}; its output is above)")


def _relay(stream: IO[str], held: list[str]) -> None:
    """Pass ``stream``'s lines on to stderr as they come, but a closing line, kept in ``held`` until another follows."""
    for line in stream:
        sys.stderr.writelines(held)
        held.clear()
        if line.startswith(CLOSING):
            held.append(line)
        else:
            sys.stderr.write(line)
            sys.stderr.flush()


def _end_interrupted(proc: subprocess.Popen, exc: KeyboardInterrupt) -> None:
    """The child ended after the parent's interrupt: a termination signal passed on at once (it reached the parent
    alone), a Ctrl-C after GRACE_S (a terminal's reaches both); its output passed on but its 'interrupted:' line."""
    if isinstance(exc, Terminated):
        proc.send_signal(exc.signum)
    try:
        proc.wait(timeout=GRACE_S)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        proc.wait()
    rest = proc.stderr.read() if proc.stderr else ""
    sys.stderr.writelines(line for line in rest.splitlines(keepends=True) if not line.startswith("interrupted: "))

"""A benchmark's run of another script in a child process (demo_seeds.py's demo per seed, quality.py's worker per
method) ended as one command: the child's stderr is passed on line by line, but its own closing line is the
parent's to say. A Ctrl-C reaches both processes, and each said its 'interrupted:' line (two lines, the child's
naming flags the user never gave); a failing child was a CalledProcessError traceback after its 'error:' line.
"""
from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import threading
from typing import IO, Any

from zoodip.console import Terminated, interrupt_for, interrupting_signal
from zoodip.errors import ZoodipError

# How long an interrupted parent waits for its child to end by itself (a Ctrl-C at a terminal reaches both; the
# child's clean-up, a checkpoint or a temporary file's removal, is not cut short) before passing the interrupt on.
GRACE_S = 10.0
# The child's closing lines, held back: the parent says its own instead.
CLOSING = ("error: ", "interrupted: ")


def run_child(command: list[str], what: str, **popen: Any) -> None:
    """Run ``command`` to its end, its stderr passed on; ``what`` names it in the parent's one line. A failure is a
    ZoodipError ``WHAT failed: THE CHILD'S ERROR``; an interrupted child (or parent) the interrupt of the signal that
    ended it (KeyboardInterrupt, ``Terminated`` for a SIGTERM: the parent ends 130 or 143), raised once it has ended."""
    with subprocess.Popen(command, stderr=subprocess.PIPE, text=True, errors="replace", **popen) as proc:
        relay = _Relay(proc.stderr)
        relay.start()
        try:
            proc.wait()
        except KeyboardInterrupt as exc:
            relay.interrupted.set()
            _end_interrupted(proc, exc)
            relay.join()
            sys.stderr.writelines(line for line in relay.held if not line.startswith("interrupted: "))
            raise
        relay.join()
    held = relay.held
    if proc.returncode == 0:
        sys.stderr.writelines(held)
        return
    signum = interrupting_signal(proc.returncode)
    if signum is not None:  # (signalled alone, or its status seen before the parent's own Ctrl-C)
        raise interrupt_for(signum)
    said = held[-1].strip()[len("error: "):] if held and held[-1].startswith("error: ") else None
    ended = f"killed by signal {-proc.returncode}" if proc.returncode < 0 else f"exit status {proc.returncode}"
    raise ZoodipError(f"{what} failed: {said}" if said else f"{what} failed ({ended}; its output is above)")


class _Relay(threading.Thread):
    """Passes ``stream``'s lines on to stderr as they come, but a closing line, kept in ``held`` until another follows;
    once ``interrupted`` is set, the child's 'interrupted:' lines are left out. A thread of its own: the parent's
    interrupt, which Python raises in the main thread, cut the line being read short (or dropped one read)."""

    def __init__(self, stream: IO[str]) -> None:
        super().__init__(daemon=True)
        self.stream = stream
        self.held: list[str] = []
        self.interrupted = threading.Event()

    def run(self) -> None:
        with contextlib.suppress(ValueError):  # (its stream closed under it: the parent ended at a second interrupt)
            self._pass_on()

    def _pass_on(self) -> None:
        for line in self.stream:
            if self.interrupted.is_set() and line.startswith("interrupted: "):
                continue
            sys.stderr.writelines(self.held)
            self.held.clear()
            if line.startswith(CLOSING):
                self.held.append(line)
            else:
                sys.stderr.write(line)
                sys.stderr.flush()


def _end_interrupted(proc: subprocess.Popen, exc: KeyboardInterrupt) -> None:
    """The child ended after the parent's interrupt: a termination signal passed on at once (it reached the parent
    alone), a Ctrl-C after GRACE_S (a terminal's reaches both)."""
    if isinstance(exc, Terminated):
        proc.send_signal(exc.signum)
    try:
        proc.wait(timeout=GRACE_S)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        proc.wait()

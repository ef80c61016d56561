"""What zoodip's command lines share: the progress bar, one-line errors and warnings.

The ``zoodip`` CLI (zoodip.cli) and the repository's demo (reference/demo.py) both print through these, so
the contract (every user error one line ``error: ...``, exit status 2; a warning one line) holds in both.
"""
from __future__ import annotations

import argparse
import codecs
import contextlib
import difflib
import functools
import os
import re
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator, NoReturn, Sequence

from .errors import ZoodipError, one_line
from .progress import duration


class ProgressBar:
    """Progress on stderr: one line per setup phase, then a tqdm bar (loss, evaluation loss, forwards/s,
    ETA from the steps' own times), preview files as lines above it; elsewhere than a terminal, the bar's redraws
    as lines."""

    # Redraws at most this often (seconds): on a terminal, smoothly; elsewhere (a log, a pipe, CI), where every
    # redraw is another line of output, rarely.
    TERMINAL_INTERVAL_S = 0.1
    LOG_INTERVAL_S = 15.0
    # The expected duration is said once, timed on this many steps or this many seconds of steps, whichever
    # comes first (or on what there is by the second-to-last step): the first step of a session also pays
    # one-time costs (the runtime's first calls at each shape), which alone would overstate the rest.
    EXPECT_AFTER_STEPS = 10
    EXPECT_AFTER_S = 20.0

    def __init__(self, total: int, enabled: bool, preview_every: int = 0) -> None:
        """``preview_every``: the run's preview interval (0: none), for the expected duration to say what it leaves out."""
        self.enabled = enabled
        self.preview_every = preview_every
        self._previews_seen = 0  # this session's: once one is, the trainer's ETA counts the previews
        self.total = total
        self.bar = None
        self.tty = sys.stderr.isatty()
        self.interval_s = self.TERMINAL_INTERVAL_S if self.tty else self.LOG_INTERVAL_S
        self._drawn_at = float("-inf")
        self.eval_loss: float | None = None
        self.after_close: list[str] = []  # lines for after the final bar line (drawn once, by close)
        self._first_step: tuple[int, float] | None = None  # (step, clock) of this session's first step
        self._expected_said = False

    def __call__(self, progress) -> None:
        if not self.enabled:
            return
        if progress.event == "setup":
            print(f"setup: {progress.phase} ...", file=sys.stderr, flush=True)
            return
        if self.bar is None:
            from tqdm import tqdm

            # Created at the first step, so that its clock does not count the setup; its own
            # remaining-time estimate is left out (the trainer's ETA is shown instead).
            # (A session's first step draws the bar one step back; an end with no step, a finished run resumed, full.)
            first = progress.step - 1 if progress.event in ("step", "eval") else progress.step
            # Elsewhere than a terminal the bar draws nothing itself: each redraw is printed as a line of its own
            # (tqdm's '\r'-joined redraws are one line to whatever reads lines: logcat, `tail -n 1`, an app).
            self.bar = tqdm(total=self.total, initial=max(0, first), unit="step", dynamic_ncols=self.tty,
                            file=sys.stderr if self.tty else _Discard(), bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]")
            self._first_step = (progress.step, time.monotonic())
        if progress.event in ("step", "eval"):
            self._say_expected(progress)
        if progress.event == "validation":
            self._previews_seen += 1
            if progress.step < progress.total:
                self.bar.write(f"preview: {progress.path}", file=sys.stderr)
            else:  # tqdm's write would redraw the final line; close() draws it
                self.after_close.append(f"preview: {progress.path}")
            return
        if progress.eval_loss is not None:
            self.eval_loss = progress.eval_loss
        self.bar.n = progress.step
        # (No rate for a session that made no forwards, e.g. a finished run resumed: 0.00 would read as stalled.)
        postfix = {"fwd/s": f"{progress.forwards_per_s:.2f}"} if progress.forwards_per_s > 0 else {}
        if progress.loss is not None:
            postfix["loss"] = f"{progress.loss:.4f}"
        if self.eval_loss is not None:
            postfix["eval"] = f"{self.eval_loss:.4f}"
        if progress.kept_dims is not None:
            postfix["sg_dims"] = progress.kept_dims
        if progress.eta_s is not None and progress.step < progress.total:
            postfix["eta"] = duration(progress.eta_s)
        self.bar.set_postfix(postfix, refresh=False)
        # The last step and the end event draw nothing themselves: close() prints the final line, once.
        now = time.monotonic()
        due = now - self._drawn_at >= self.interval_s or progress.event == "eval"
        if progress.event in ("step", "eval") and progress.step < progress.total and due:
            self._draw()
            self._drawn_at = now

    def _draw(self) -> None:
        if self.tty:
            self.bar.refresh()
        else:
            print(str(self.bar).rstrip(), file=sys.stderr, flush=True)

    def _say_expected(self, progress) -> None:
        """Once: how long the remaining steps should take (the trainer's ETA, from the steps' own times)."""
        if self._expected_said or progress.eta_s is None or progress.step >= progress.total or self._first_step is None:
            return
        first, clock = self._first_step
        timed = progress.step - first + 1
        if timed < self.EXPECT_AFTER_STEPS and time.monotonic() - clock < self.EXPECT_AFTER_S \
                and progress.step < progress.total - 1:
            return
        self._expected_said = True
        self.bar.write(f"expected: about {duration(progress.eta_s)} for the remaining {progress.total - progress.step} "
                       f"step{'s' if progress.total - progress.step > 1 else ''} (timed on {timed} "
                       f"step{'s' if timed > 1 else ''}){self._previews_left_out(progress.step)}", file=sys.stderr)

    def _previews_left_out(self, step: int) -> str:
        """What the expected duration leaves out: the previews to come, while none has been timed."""
        from .previews import previews_in

        count = previews_in(step - 1, self.total, self.preview_every) if self.preview_every else 0
        if self._previews_seen or not count:
            return ""
        return f", plus {count} preview{'s' if count > 1 else ''}, not timed yet (the ETA adds them once one is)"

    def close(self) -> None:
        if self.bar is not None:
            if not self.tty and not self.bar.disable:  # (the final line, once: tqdm's close draws it on a terminal)
                self._draw()
            self.bar.close()
            self.bar = None
        for line in self.after_close:
            print(line, file=sys.stderr)
        self.after_close = []


class _Discard:
    """A file that keeps nothing: where a non-terminal bar's own draws go (its lines are printed by ProgressBar)."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


class SamplingBar:
    """``zoodip generate``'s progress: a bar of the sampling steps on stderr where it is a terminal (the callback
    ``generate`` calls after each step). Elsewhere (a log, a pipe) nothing: the run's end is its 'wrote' line."""

    def __init__(self, enabled: bool | None = None) -> None:
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.bar = None

    def __call__(self, step: int, total: int, latents: object) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            from tqdm import tqdm

            # Started at the first finished step: its clock and rate count the steps after it.
            self.bar = tqdm(total=total, initial=step, unit="step", desc="sampling", file=sys.stderr,
                            dynamic_ncols=True, leave=False)
        self.bar.update(step - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


# What stops a process from outside but Ctrl-C: an app (Android's Process.destroy() sends SIGTERM), a closed terminal.
TERMINATION_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


def signals_to_handle(kinds: tuple[int, ...]) -> list[int]:
    """Those of ``kinds`` the process does not ignore: ``nohup`` ignores SIGHUP, and a shell ignores SIGINT for a
    command started with ``&``; taking them over would stop a run the user asked to survive them."""
    return [kind for kind in kinds if signal.getsignal(kind) != signal.SIG_IGN]


class Terminated(KeyboardInterrupt):
    """A termination signal taken as Ctrl-C (``interrupt_on_termination``): ``signum`` says which, for the exit status
    a shell reads as "stopped by that signal" (128 + signum: 143 for SIGTERM, as ``zoodip personalize`` ends)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def status_for_signal(signum: int) -> int:
    """The exit status a shell reads as "ended by signal ``signum``": 128 + its number (130 for Ctrl-C's SIGINT, 143
    for SIGTERM, 129 for SIGHUP, 141 for SIGPIPE), what a command that handled the signal ends with."""
    return 128 + int(signum)


# The signals that interrupt a command (Ctrl-C's, then the termination signals), and the statuses it then ends with.
INTERRUPTING_SIGNALS = (signal.SIGINT, *TERMINATION_SIGNALS)
INTERRUPTED_STATUSES = frozenset(status_for_signal(signum) for signum in INTERRUPTING_SIGNALS)


def interrupting_signal(returncode: int) -> int | None:
    """The interrupting signal that ended a child process with ``returncode``: its status 128 + N (it handled the
    signal and said its line) or -N (the signal killed it, as subprocess reports that); None for any other end."""
    return next((int(signum) for signum in INTERRUPTING_SIGNALS
                 if returncode in (status_for_signal(signum), -int(signum))), None)


def interrupt_for(signum: int) -> KeyboardInterrupt:
    """The interrupt that stands for ``signum``: Ctrl-C's KeyboardInterrupt for SIGINT, ``Terminated`` for another."""
    return KeyboardInterrupt() if signum == signal.SIGINT else Terminated(signum)


def interrupted_status(exc: KeyboardInterrupt) -> int:
    """The exit status of a process ended by ``exc``: 128 + the signal (130 for Ctrl-C's SIGINT)."""
    return status_for_signal(exc.signum if isinstance(exc, Terminated) else signal.SIGINT)


@contextlib.contextmanager
def interrupt_on_termination() -> Iterator[None]:
    """SIGTERM (an app stopping the process) and SIGHUP (a closed terminal) as Ctrl-C while the block runs: the
    command's own clean-up and one line, rather than the process gone without a word (main thread only)."""
    def interrupt(signum: int, frame: object) -> None:
        raise Terminated(signum)

    main = threading.current_thread() is threading.main_thread()
    previous = {kind: signal.signal(kind, interrupt) for kind in signals_to_handle(TERMINATION_SIGNALS)} if main else {}
    hook = sys.unraisablehook
    sys.unraisablehook = functools.partial(redeliver_swallowed_interrupts, otherwise=hook)
    try:
        yield
    finally:
        sys.unraisablehook = hook
        for kind, handler in previous.items():
            signal.signal(kind, handler)


def redeliver_swallowed_interrupts(unraisable: object,
                                   otherwise: Callable[[object], object] = sys.__unraisablehook__) -> None:
    """``sys.unraisablehook`` while a command runs: CPython ignores an exception raised in a ``__del__`` or a GC
    callback, so a Ctrl-C or SIGTERM whose handler ran there was lost (a report, and the run went on): it is sent again."""
    exc = getattr(unraisable, "exc_value", None)
    if isinstance(exc, KeyboardInterrupt):  # (from a thread, a moment later: sent from here, it would land here)
        threading.Timer(0.05, os.kill, (os.getpid(), exc.signum if isinstance(exc, Terminated) else signal.SIGINT)).start()
        return
    otherwise(unraisable)


class GracefulStop:
    """SIGINT/SIGTERM ask the run to stop after the current step (checkpoint saved, "cancelled" event).

    An app cancels a job by signalling the process (Android's Process.destroy() sends SIGTERM), so
    a signal must not throw away the steps since the last periodic checkpoint. A second signal
    interrupts at once (the last checkpoint is still intact).

    Use: ``with GracefulStop() as stop: personalize(..., cancel_event=stop.event)``; on a "cancelled" result, end
    with ``stop.exit_code`` (the CLI) or ``stop.interrupt()`` (a script under ``script_main``: its one line).
    """

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: object) -> None:
        if self.event.is_set():  # (the second signal: its own status, 143 for a SIGTERM, as the first's would be)
            raise interrupt_for(signum)
        self.request(signum)

    def request(self, signum: int) -> None:
        """Stop after the current step as on ``signum`` (also where no signal came: the progress reader left)."""
        self.signum = signum
        self.event.set()

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            for sig in signals_to_handle((signal.SIGINT, *TERMINATION_SIGNALS)):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    @property
    def exit_code(self) -> int:
        """The shell convention for "stopped by signal N"."""
        return status_for_signal(self.signum or signal.SIGINT)

    def interrupt(self) -> NoReturn:
        """Raise the interrupt the stopping signal stands for (``Terminated`` for SIGTERM/SIGHUP): after the run saved
        its step, a ``script_main`` script ends with its one ``interrupted:`` line and status ``exit_code``."""
        raise interrupt_for(self.signum or signal.SIGINT)


def _shown_readably(exc: UnicodeError) -> tuple[str, int]:
    """The output's error handler: a byte of a file name that is no text (Python holds b'\\xff' as the lone surrogate
    '\\udcff', which no user knows) shown as the byte, '\\xff'; any other character the stream cannot encode (an
    ASCII terminal) backslash-escaped, never a UnicodeEncodeError after the work."""
    if isinstance(exc, UnicodeEncodeError):  # (each character: an ASCII stream fails on 'é' and the byte together)
        return "".join(f"\\x{ord(char) - 0xDC00:02x}" if "\udc80" <= char <= "\udcff" else
                       char.encode("ascii", "backslashreplace").decode() for char in exc.object[exc.start:exc.end]), exc.end
    return codecs.backslashreplace_errors(exc)


OUTPUT_ERRORS = "zoodip-readable"
codecs.register_error(OUTPUT_ERRORS, _shown_readably)


def readable_output() -> None:
    """Set stdout and stderr to show what they cannot encode as ``_shown_readably`` says: the one place the CLI's
    messages (paths among them) are made printable."""
    for stream in (sys.stdout, sys.stderr):
        if callable(getattr(stream, "reconfigure", None)):
            stream.reconfigure(errors=OUTPUT_ERRORS)


def said_as_given(message: str, given: Iterable[str]) -> str:
    """``message`` with the absolute paths the SDK and the export work with said as the user gave them: ``out`` for
    ``$PWD/out``, ``out/unet`` for its ``unet`` (an export folder is held absolute, a copy reopens it anywhere). ``given``:
    the paths the command line gave, its path flags' values only (a prompt's word is no path); one that is relative
    (or from ``~``) is said as typed, and so are the folders it names on the way (``afile`` of ``afile/sub``), never
    the current folder itself."""
    forms: dict[str, str] = {}
    for word in given:
        for typed in {word, word.rpartition(":")[0]} - {""}:  # (a spec's path: FILE:SCALE, PATH:TOKEN)
            typed_path = Path(typed)
            if typed_path.is_absolute():
                continue
            for part in (typed_path, *typed_path.parents):
                if part.name not in ("", ".", ".."):
                    forms.setdefault(str(part.expanduser().absolute()), str(part))
    if not forms:
        return message
    # Longest first, each a whole path (not the start of a longer name: $PWD/out2 is not out's).
    pattern = "|".join(re.escape(form) for form in sorted(forms, key=len, reverse=True))
    return re.sub(rf"(?<![\w./~-])({pattern})(?![\w~-]|\.\w)", lambda match: forms[match.group(1)], message)


def print_error(problem: object) -> int:
    """The contract's one line for a problem (``error: ...`` on stderr); returns the exit status to end with (2)."""
    print(f"error: {problem}", file=sys.stderr)
    return ZoodipError.exit_code


def print_interrupted(kept: str = "", exc: KeyboardInterrupt | None = None) -> int:
    """The contract's one line for a Ctrl-C, ``interrupted: KEPT`` (what the interrupted work leaves; ``interrupted``
    alone where there is nothing to say) on stderr; returns the exit status to end with: ``interrupted_status(exc)``
    (130 for a Ctrl-C)."""
    print(f"interrupted: {kept}" if kept else "interrupted", file=sys.stderr)
    return interrupted_status(exc if exc is not None else KeyboardInterrupt())


# The signal handlers interrupts_said_from_here replaced, put back as script_main's main starts.
_BEFORE_MAIN: dict[int, object] = {}


def interrupts_said_from_here(module: str) -> None:
    """A script's first call, before its heavy imports (NumPy, torch: a second or more), given its ``__name__``: run as
    a script, a Ctrl-C, SIGTERM or SIGHUP until its ``script_main`` main starts ends it with the one line
    ``interrupted`` and 128 + the signal, not a traceback of the imports (nor, for a SIGTERM, an end without a word).
    Imported (a test), the module changes nothing."""
    def end(signum: int, frame: object) -> NoReturn:
        for kind in _BEFORE_MAIN:  # (a second signal as the process ends: nothing more to say)
            signal.signal(kind, signal.SIG_IGN)
        sys.exit(print_interrupted("", interrupt_for(signum)))

    if module == "__main__" and threading.current_thread() is threading.main_thread():
        for kind in signals_to_handle(INTERRUPTING_SIGNALS):
            _BEFORE_MAIN.setdefault(kind, signal.signal(kind, end))
        sys.unraisablehook = functools.partial(redeliver_swallowed_interrupts, otherwise=sys.unraisablehook)


def script_main(kept: str) -> Callable[[Callable[..., int]], Callable[..., int]]:
    """A repository script's ``main``, ended as the CLI's is: a ZoodipError that escapes it as the one ``error:`` line
    (exit status 2), a Ctrl-C as one line ``interrupted: KEPT`` (what the interrupted run leaves: exit status 130),
    never a traceback. A SIGTERM (``timeout``, a process manager) or SIGHUP is the same line, its status 128 + the
    signal's number: the default ended the process without a word, its temporary files left behind."""
    def wrap(main: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(main)
        def run(*args: object, **kwargs: object) -> int:
            while _BEFORE_MAIN:  # (the handlers interrupts_said_from_here replaced: main's are its own)
                kind, handler = _BEFORE_MAIN.popitem()
                signal.signal(kind, handler)
            try:
                with interrupt_on_termination():
                    return main(*args, **kwargs)
            except ZoodipError as exc:
                return print_error(exc)
            except KeyboardInterrupt as exc:
                return print_interrupted(kept, exc)
        return run
    return wrap


def _nearest_choice(message: str) -> str:
    """For argparse's "invalid choice: 'X' (choose from 'a', 'b', ...)": the choice X was most likely meant to be
    (``personalise``, ``dpm++2m``, ``w8``), as " (did you mean 'b'?)"; else nothing."""
    found = re.search(r"invalid choice: '(.*)' \(choose from (.*)\)$", message)
    if found is None:
        return ""
    # (some Python versions quote the choices in this message, others do not)
    given, choices = found.group(1).lower(), re.findall(r"'([^']*)'", found.group(2)) or found.group(2).split(", ")
    normalized = {re.sub(r"[^a-z0-9]", "", choice.lower().replace("++", "pp")): choice for choice in choices}
    near = difflib.get_close_matches(re.sub(r"[^a-z0-9]", "", given.replace("++", "pp")), list(normalized), n=1,
                                     cutoff=0.6)
    return f" (did you mean '{normalized[near[0]]}'?)" if near else ""


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad flag is the contract's one line (argparse prints its usage block first), and a flag
    may be spelled with ``_`` or ``-`` (``--t_range`` is ``--t-range``): diffusers' scripts spell theirs with
    underscores, most command lines with dashes, and users type the one they know."""

    def error(self, message: str):  # type: ignore[override]
        if message.endswith("expected one argument"):  # argparse takes a value such as -inf or -ugly for a flag
            message += " (a value that starts with '-' is written --flag=VALUE)"
        if message.startswith(("the following arguments are required", "unrecognized arguments")):
            message += dashed_path_hint(getattr(self, "_unknown", []))  # (`info -x.png`: a path taken for a flag)
        raise ZoodipError(f"{message}{_nearest_choice(message)}: see '{self.prog} --help'")

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        args = list(sys.argv[1:] if args is None else args)
        options = _options_part(args)
        self._unknown = [a for a in options if self._known_spelling(a).partition("=")[0] not in self._option_string_actions]
        return super().parse_known_args([self._known_spelling(a) for a in options] + args[len(options):], namespace)

    def _known_spelling(self, arg: str) -> str:
        """``arg`` with its flag name respelled (``_`` <-> ``-``) where only the other spelling is a flag here."""
        if not arg.startswith("--") or arg == "--":
            return arg
        name, eq, value = arg.partition("=")
        if name in self._option_string_actions:
            return arg
        wanted = name[2:].replace("-", "_")  # (a flag may mix the two: --no-center_crop is --no_center_crop)
        for other in self._option_string_actions:
            if other.startswith("--") and other[2:].replace("-", "_") == wanted:
                return other + eq + value
        return arg

    def format_help(self) -> str:
        for action in self._actions:
            action.help = help_with_default(action)
        return super().format_help()


def help_with_default(action: argparse.Action) -> str | None:
    """``action``'s help ending with its default where it has one the help does not already tell (argparse's
    ArgumentDefaultsHelpFormatter skips a flag with no help text, and says "None" and "False" for "not given").
    A switch's default (store_true/false/const: its value when not given, "True" for --no-parity; not --x/--no-x)
    and an empty one ("", []) tell nothing, so they are left out too."""
    default, text = action.default, action.help
    unset = any(default is nothing for nothing in (None, False, argparse.SUPPRESS))
    if text == argparse.SUPPRESS or unset or "default" in (text or "") \
            or not action.option_strings or default in ("", [], ()) \
            or (action.nargs == 0 and not isinstance(action, argparse.BooleanOptionalAction)):
        return text
    shown = " ".join(map(_shown, default)) if isinstance(default, (list, tuple)) else _shown(default)
    return f"{text} (default: {shown.replace('%', '%%')})" if text else f"default: {shown.replace('%', '%%')}"


def _shown(value: object) -> str:
    """A default as help says it: a folder under the current one relative to it (scripts anchor theirs at the
    repository, and the help should not show this machine's path); a folder given as a string too (``str(REPO / ...)``)."""
    if isinstance(value, (Path, str)) and Path(value).is_absolute():
        with contextlib.suppress(ValueError):
            return str(Path(value).relative_to(Path.cwd()))
    return str(value)


def dashed_path_hint(words: Sequence[str]) -> str:
    """For the first of ``words`` that starts with '-' yet reads as a file's name (``-x.png``, a file here; no number,
    no ``=``), which argparse takes for a flag: " (W was read as a flag: ...)", how to write it; else nothing."""
    word = next((w for w in words if w.startswith("-") and w != "--" and "=" not in w and not _is_number(w)
                 and ("." in w or "/" in w or os.path.exists(w))), None)
    return f" ({word} was read as a flag: a path that starts with '-' is written ./{word}, or after --)" if word else ""


def _is_number(word: str) -> bool:
    try:
        return float(word) is not None
    except ValueError:
        return False


def _options_part(args: list[str]) -> list[str]:
    """The arguments before a ``--`` (after it, everything is a value)."""
    return args[: args.index("--")] if "--" in args else args


def one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one line on stderr (Python's default adds the source line and the file name)."""
    print("warning: " + one_line(message), file=sys.stderr)

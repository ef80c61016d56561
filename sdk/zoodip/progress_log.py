"""``--progress-jsonl``: the run's progress as JSON lines, to a file or to stdout (``-``) for a process boundary
(an app that runs the CLI and reads one object per event; the lines are ``api.progress_to_json``'s)."""
from __future__ import annotations

import contextlib
import os
import stat
import sys
from pathlib import Path
from typing import Any, Callable

from .errors import ZoodipError
from .paths import append_whole, missing_parents, take_flock, write_failure
from .json_text import parse_json


class LazyJsonlLog:
    """``--progress-jsonl PATH``: checked up front, opened (for appending) at the first event; a run
    refused during setup removes the file it created (``discard_setup_only``). Where the reader of ``-`` leaves
    (an app that stopped reading, ``| head``) or the file cannot take a line (a full disk), ``on_stop`` is called and
    nothing more is written: the run stops after its step, checkpointed, rather than losing the steps since its last
    checkpoint. ``failure`` then says why the file could not be written (None: the reader left)."""

    def __init__(self, target: str, config: Any) -> None:
        self.path = None if target == "-" else progress_log_path(target, config)
        self.file: Any = None  # the log, unbuffered: each line one write, cut back whole if it falls short
        self.stopped = False
        self.failure: str | None = None
        self.created = False  # this run made the file
        self.made_folders: list[Path] = []  # the folders this run made for it, innermost first
        self.written = 0  # the bytes this run wrote there
        self.trained = False  # a step was reported: the file holds more than setup phases
        self.on_stop: Callable[[], None] | None = None

    def __call__(self, progress) -> None:
        from .api import progress_to_json

        if self.path is not None and self.file is None and not self.stopped:
            self._open()
        self.trained = self.trained or progress.event != "setup"
        if self.stopped:
            return
        line = progress_to_json(progress) + "\n"
        try:
            if self.file is None:
                sys.stdout.write(line)
                sys.stdout.flush()
            else:
                self._append(line.encode("utf-8"))
        except BrokenPipeError:
            if self.file is None:  # stdout's reader left: as the pipe's signal would end a command
                silence_stdout()
                self._stop(None)
            else:  # a named pipe's reader left: the run's own output still goes to stdout
                self._stop(f"cannot write --progress-jsonl {self.path} (its reader left): keep it reading")
        except OSError as exc:
            reason, fix = write_failure(exc)
            self._stop(f"cannot write --progress-jsonl {self.path or '-'} ({reason}): {fix}")

    def _open(self) -> None:
        try:
            self.created = not self.path.exists()
            self.made_folders = missing_parents(self.path)
            self.path.parent.mkdir(parents=True, exist_ok=True)  # e.g. in the run folder, made at its start
            self.file = open(self.path, "ab", buffering=0)
        except OSError as exc:
            raise ZoodipError(f"cannot write --progress-jsonl {self.path} ({exc.strerror or exc}): choose another file") from None
        if not _hold_alone(self.file):  # two runs' lines, without a run's name, would interleave beyond telling apart
            self.file.close()
            self.file, self.stopped = None, True
            raise ZoodipError(f"--progress-jsonl {self.path} is being written by another run: give each run its own "
                              "file")

    def _append(self, data: bytes) -> None:
        append_whole(self.file, data)  # (one whole line or none: a full disk's half line is cut back)
        self.written += len(data)

    def _stop(self, failure: str | None) -> None:
        self.stopped, self.failure = True, failure
        if self.on_stop is not None:
            self.on_stop()

    def close(self) -> None:
        if self.file is not None:
            with contextlib.suppress(OSError):
                self.file.close()

    def discard_setup_only(self) -> None:
        """After a failed setup: remove the file if this run created it and it holds its setup phases only (not what
        another run, given the same file, has appended since), and the folders it made for it, if left empty (a run
        refused for its --model must leave nothing behind)."""
        if self.created and not self.trained and self.path is not None:
            with contextlib.suppress(OSError):
                if self.path.stat().st_size == self.written:
                    self.path.unlink()
        if not self.trained:
            for folder in self.made_folders:  # innermost first; rmdir removes only an empty one
                with contextlib.suppress(OSError):
                    folder.rmdir()


def _hold_alone(handle: Any) -> bool:
    """Take an exclusive advisory lock on ``handle``'s file for as long as it is open (a regular file only; where
    ``fcntl`` does not exist, Windows, none); False where another process holds one."""
    if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
        return True
    try:
        return take_flock(handle)
    except OSError:  # a file system without locks: as on Windows
        return True


def silence_stdout() -> None:
    """Its reader left: stdout onto /dev/null, so that the exit's flush of what is buffered cannot raise again."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def progress_log_path(target: str, config: Any) -> Path:
    """``--progress-jsonl``'s file: writable, not one of the model's or the run's files, and if it exists already a
    progress log (appended to); anything else would be overwritten or corrupted by the run's lines."""
    from .paths import check_output_file, lies_within
    from .run_folder import CONFIG_NAME, RUN_FILES

    path = check_output_file(target, "--progress-jsonl")
    in_model = lies_within(path, config.export_dir)
    # In the run folder only a .jsonl of its own: the run writes its log, snapshots and previews there.
    in_run = path.absolute().resolve().parent == Path(config.output_dir).absolute().resolve() and (
        path.suffix != ".jsonl" or path.name in (*RUN_FILES, CONFIG_NAME))
    if in_model or in_run:
        raise ZoodipError(f"--progress-jsonl {target} is {'in the model folder' if in_model else 'a file of the run'}: "
                          "name a file of its own, e.g. progress.jsonl")
    if path.is_file() and path.stat().st_size:
        try:
            with open(path, encoding="utf-8") as log:
                first = parse_json(log.readline(1 << 20))
        except (OSError, UnicodeDecodeError, ValueError):
            first = None
        if not (isinstance(first, dict) and first.get("type") == "progress"):
            raise ZoodipError(f"--progress-jsonl {target} exists and is not a progress log (JSON lines), which the run "
                              "would append to: name a new file")
    return path

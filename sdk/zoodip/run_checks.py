"""Checks that keep a run honest: what it learned from, how it ended, what its log says.

- ``sha256_of_files``: the identity of the photos (and captions) a run learns from, stored in the
  checkpoint so that ``--resume`` continues only the same run.
- ``check_outcome``: a run that blew up or never moved is an error, not "done".
- ``append_log``, ``truncate_log``, ``read_log``: the append-only log, tolerating the torn last line a
  power cut leaves.
- ``check_run_arguments``: what an app passes to a run (``personalize``, ``Personalizer``, ``PersonalizationJob``).
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from .config import PersonalizeConfig
from .errors import Given, ZoodipError
from .paths import append_whole, write_failure
from .json_text import parse_json


def sha256_of_files(paths: Iterable[Path]) -> str:
    """One hash over the names and bytes of ``paths`` (the photos a run learns from)."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(os.fsencode(path.name) + b"\0")  # a name that is not UTF-8 (a Windows zip) as its bytes
        try:
            digest.update(hashlib.sha256(path.read_bytes()).digest())
        except OSError as exc:
            raise ZoodipError("cannot read ", Given(path), f" ({exc.strerror or exc}): check the file") from None
    return digest.hexdigest()[:16]


# Outcome checks: a run that ends here is reported as an error, not as "done".
BLOWUP_NORM_FACTOR = 100.0  # final norm above this many times the largest vocabulary row norm
STILL_RELATIVE_CHANGE = 1e-6  # ||v - v_init|| below this fraction of ||v_init||


def check_outcome(v: np.ndarray, v_init: np.ndarray, vocabulary_max_norm: float, width: int | None = None) -> None:
    """Refuse an embedding from a run that blew up (non-finite or huge) or never moved.

    ``width``: the length of one vector where ``v`` holds several flattened (``--num_vectors``); each vector
    is held to the vocabulary's norm on its own.
    """
    if not np.all(np.isfinite(v)):
        raise ZoodipError("the run blew up: the embedding is NaN or infinite; lower learning_rate "
                          "(reference 1e-2) or mu (reference 1e-3) and start again in a new output_dir")
    norm = max(float(np.linalg.norm(row.astype(np.float64))) for row in v.reshape(-1, width or v.shape[-1]))
    if norm > BLOWUP_NORM_FACTOR * vocabulary_max_norm:
        raise ZoodipError(f"the run blew up: the embedding's norm is {norm:.3g}, over {BLOWUP_NORM_FACTOR:g}x the "
                          f"largest word's ({vocabulary_max_norm:.3g}); lower learning_rate (reference 1e-2) and "
                          "start again in a new output_dir")
    moved = float(np.linalg.norm(v.astype(np.float64) - v_init.astype(np.float64)))
    if moved <= STILL_RELATIVE_CHANGE * float(np.linalg.norm(v_init.astype(np.float64))):
        raise ZoodipError(f"the run never moved the embedding (change {moved:.3g}): mu or learning_rate is "
                          "far from useful (reference 1e-3 and 1e-2); start again in a new output_dir")


def append_log(path: Path, record: dict, then: str = "resume with resume=True (the last checkpoint is intact)") -> None:
    """Append one JSON line to the run's log, whole or not at all. ``then``: what the user does after a failure."""
    try:
        with open(path, "ab", buffering=0) as handle:
            append_whole(handle, (json.dumps(record) + "\n").encode("utf-8"))
    except OSError as exc:
        reason, fix = write_failure(exc)
        raise ZoodipError(f"cannot append to {path} ({reason}): {fix}, then {then}") from None


def truncate_log(path: Path, step: int) -> None:
    """On resume, drop the log's records of steps after ``step`` (they will be redone) and a torn last line. The log
    is checked whole (``read_log``) but cut back in place after the last record it keeps (its records are in step
    order), not rewritten: a long run's log is tens of MB. A crash before the cut leaves it whole, cut again next time."""
    if not path.is_file():
        return
    read_log(path)  # (a damaged line before the last: refused, as every reader of the log refuses it)
    data = path.read_bytes()
    cut = len(data)
    while cut > 0:
        start = data.rfind(b"\n", 0, cut - 1) + 1
        try:
            record = json.loads(data[start:cut])
        except ValueError:  # a blank line, or the torn last one
            record = None
        if isinstance(record, dict) and record.get("step", 0) <= step:
            break
        cut = start
    # (a kept last record without its newline gets one: the next append would join its line)
    ending = b"" if cut == 0 or data[cut - 1:cut] == b"\n" else b"\n"
    if cut < len(data) or ending:
        try:
            with open(path, "r+b") as handle:
                handle.truncate(cut)
                handle.seek(cut)
                handle.write(ending)
                os.fsync(handle.fileno())
        except OSError as exc:
            reason, fix = write_failure(exc)
            raise ZoodipError(f"cannot cut back {path}: {reason}: {fix} and resume with resume=True (the checkpoint "
                              "is intact)") from None


def read_log(path: Path) -> list[dict]:
    """The records of an append-only JSON-lines log; a torn last line (power cut mid-append) is dropped.

    A damaged line before the last one is not a torn append: that is an error naming the line.
    """
    try:
        lines = path.read_bytes().split(b"\n")
    except OSError as exc:
        raise ZoodipError("cannot read ", Given(path), f" ({exc.strerror or exc}): check the file") from None
    numbered = [(i + 1, line) for i, line in enumerate(lines) if line.strip()]
    records: list[dict] = []
    for index, (number, line) in enumerate(numbered):
        try:
            record = parse_json(line.decode("utf-8"))
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
        except ValueError:  # also UnicodeDecodeError
            if index == len(numbered) - 1:
                break  # torn by an interrupted append: the step it described is redone
            raise ZoodipError(f"{path} is damaged at line {number} (not a JSON object): delete that line "
                              "or the whole log and resume again") from None
        records.append(record)
    return records


def check_run_arguments(config: object, on_progress: object = None, resume: object = False,
                        cancel_event: object = None) -> None:
    """A run's arguments of the wrong kind, refused in one line before any work: a dict for the config, a callback
    that is no function, 'no' for resume (it resumed) and a flag for the event (each an AttributeError or TypeError
    once the model had loaded). Any event with ``is_set()`` cancels (a ``multiprocessing.Event`` too)."""
    if not isinstance(config, PersonalizeConfig):
        raise ZoodipError(f"config must be a PersonalizeConfig, got {type(config).__name__}")
    if on_progress is not None and not callable(on_progress):
        raise ZoodipError(f"on_progress must be callable as on_progress(progress), got {type(on_progress).__name__}")
    if not isinstance(resume, (bool, np.bool_)):
        raise ZoodipError(f"resume must be True or False, got {resume!r}")
    if cancel_event is not None and not callable(getattr(cancel_event, "is_set", None)):
        raise ZoodipError(f"cancel_event must be a threading.Event (set() it to stop the run), got "
                          f"{type(cancel_event).__name__}")

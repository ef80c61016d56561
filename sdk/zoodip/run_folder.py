"""The run folder: the files a run keeps there, and what a fresh run or a resume needs to find in it.

``check_run_folder`` runs before the model loads (``personalize``), so that a folder that cannot take the run is
refused at once, not after the model, the photos and the search space are ready; the run checks it again when it
takes the folder (``Personalizer``, under the folder's lock).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from .checkpoint import CHECKPOINT_NAME, check_checkpoint_file
from .config import PersonalizeConfig
from .embeddings import EMBEDDING_NAME, SNAPSHOT_FILE, SNAPSHOT_NAME, a1111_file_name  # noqa: F401 (public here)
from .errors import ZoodipError
from .paths import check_files_to_replace, check_output_dir, remove_stale_temp_files
from .json_text import parse_json

LOG_NAME = "log.jsonl"
CONFIG_NAME = "config.json"  # the run's settings, as its first step found them
RUN_FILES = (CHECKPOINT_NAME, EMBEDDING_NAME, LOG_NAME)  # written atomically: their temp files are cleaned
VALIDATION_NAME = "validation-steps-{step}.png"  # --validation_prompt previews, beside the run
# A temp file of a file whose name carries its step, a snapshot or a preview (group 1: that file's name).
_STEP_FILE_TEMP = re.compile(r"^\.(" + SNAPSHOT_FILE.pattern[1:-1] + "|"
                             + re.escape(VALIDATION_NAME).replace(re.escape("{step}"), r"\d+") + r")\.")


def remove_stale_run_temp_files(config: PersonalizeConfig) -> None:
    """Delete the temp files that interrupted writes left in the run folder: of the run's files, its --a1111 copy, and
    its step snapshots and previews (their names carry the step). Under the folder's lock: no writer is running."""
    out = config.output_dir
    names = [*RUN_FILES, *([a1111_file_name(config.placeholder_token)] if config.a1111 else [])]
    try:
        names += [m.group(1) for entry in out.iterdir() if (m := _STEP_FILE_TEMP.match(entry.name))]
    except OSError:  # not there yet, or not listable: nothing of a step's to clean
        pass
    remove_stale_temp_files(out, tuple(names))


def check_run_folder(config: PersonalizeConfig, resume: bool) -> None:
    """A resume needs the folder's checkpoint; a fresh run refuses a folder holding a run (it would be lost), an
    embedding file it would replace, or a config.json or log.jsonl that is not a zoodip run's (a project's own, with
    ``--output_dir .``); either refuses, before the work, a place its files cannot go."""
    out = check_output_dir(config.output_dir)
    checkpoint = out / CHECKPOINT_NAME
    embeddings = [out / EMBEDDING_NAME, *([out / a1111_file_name(config.placeholder_token)] if config.a1111 else [])]
    if resume or (checkpoint.exists() and not checkpoint.is_file()):  # (a folder is no run to resume either)
        check_checkpoint_file(checkpoint)
    elif checkpoint.exists():
        raise ZoodipError(f"{out} already holds a run: pass resume=True to continue it, or choose a new output_dir")
    for path in embeddings if not resume else ():  # a run's, or another tool's file (A1111's, diffusers')
        if path.exists():
            raise ZoodipError(f"{out} already holds {path.name}, which a fresh run would replace: move it, or "
                              "choose a new output_dir")
    for name in (CONFIG_NAME, LOG_NAME) if not resume else ():  # (a killed start's own are started anew)
        if (out / name).exists() and not _is_a_runs(out / name):
            raise ZoodipError(f"{out} already holds {name}, which is not a zoodip run's and a run writes its own "
                              "there: move it, or choose a new output_dir")
    check_files_to_replace([*embeddings, *([] if resume else [checkpoint])],
                           "resume with resume=True" if resume else "run again")
    _check_links_apart(out, [checkpoint, *embeddings, out / LOG_NAME])


def _check_links_apart(out: Path, written: list[Path]) -> None:
    """The run's files that are links (written through, ``paths.write_target``) must lead to files of their own,
    outside any other run's folder: two writes into one file would leave only the last (an embedding over the
    checkpoint), and a folder copied as links (``cp -rs``) would resume into the original's files, past its lock."""
    here, seen = os.path.realpath(out), {}
    for path in (path for path in written if os.path.islink(path)):
        target = Path(os.path.realpath(path))
        if target in seen:
            raise ZoodipError(f"{seen[target].name} and {path.name} in {out} are links to one file ({target}), and a "
                              "run writes each: point them at different files, or remove the links")
        seen[target] = path
        if str(target.parent) != here and _is_a_runs(target.parent / CONFIG_NAME):  # (not a store of files)
            raise ZoodipError(f"{path} is a link into another run's folder ({target.parent}), whose files the run "
                              "would write: run there, or copy that folder's files (cp -r, not links) and run on the "
                              "copy")


def _is_a_runs(path: Path) -> bool:
    """Whether ``path`` reads as a run's config.json (its placeholder and model) or log.jsonl (steps: its first line
    that is not blank), or as one a start killed mid-write left: empty, zeros, or torn (no JSON, beginning as a run's
    first line does)."""
    try:
        with open(path, encoding="utf-8-sig", errors="replace") as handle:
            text = handle.read(1 << 20) if path.name == CONFIG_NAME else next(
                (line for line in handle if line.strip("\x00 \t\r\n")), "")
    except OSError:
        return False
    keys = ("placeholder_token", "export_dir") if path.name == CONFIG_NAME else ("step",)
    try:
        found = parse_json(text)
    except ValueError:  # torn: what a run's first line begins with (the first key it writes), or nothing at all
        compact = re.sub(r"\s", "", text.replace("\x00", ""))
        start = '{"export_dir"' if path.name == CONFIG_NAME else '{"step"'
        return compact.startswith(start) or start.startswith(compact)
    return isinstance(found, dict) and all(key in found for key in keys)


def folder_identity(folder: Path) -> tuple[int, int] | None:
    """Which folder ``folder`` names now (device and inode), or None where it names none."""
    try:
        found = os.stat(folder)
    except OSError:
        return None
    return (found.st_dev, found.st_ino) if found.st_nlink else None  # (no links: removed, though still open as ".")


def check_folder_kept(folder: Path, identity: tuple[int, int] | None) -> None:
    """Stop a run whose folder is no longer the one it started in (removed, moved, or replaced by another): its
    next writes would remake it, or write into another, without the run's config.json and earlier log."""
    if identity is not None and folder_identity(folder) != identity:
        raise ZoodipError(f"the run folder {folder} went away during the run (removed, moved, or replaced by "
                          "another): if you moved it, resume it where it is now with resume=True; else start the run "
                          "again")

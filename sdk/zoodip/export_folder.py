"""Where an export folder is built: a hidden staging folder beside the output, published by one rename at the end.

``zoodip export`` (zoodip_export) and the ARM harness's .ort conversion (android_harness/convert_to_ort.py) write
export folders by these rules, which is why they live beside the format (``zoodip.manifest``), not in the exporter.
A finished export appears at OUT_DIR in one step (``publish``); until then it lives in
``.OUT_DIR.<pid>.<random>.partial``. The process id in that name lets the next export recognize, and
remove, the staging folders of exports that were killed before they could clean up.
"""
from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import ZoodipError
from .json_text import parse_json
from .manifest import FORMAT, MANIFEST, manifest_text
from .paths import (check_output_dir, fsync_folder, left_by_ended_process, lies_within, set_aside_folder, swap_folder_in,
                    write_failure)


def output_target(out_dir: str | Path) -> Path:
    """OUT_DIR as the folder to publish at: absolute, and where a link to a folder (or to nothing yet) points
    (publishing renames OUT_DIR: the user's link would be moved aside and a folder put in its place). An empty one
    (the current folder) is refused."""
    if not str(out_dir).strip():
        check_output_dir(out_dir, "OUT_DIR")  # (says it is empty)
    out_dir = Path(out_dir).expanduser().absolute()
    if out_dir.is_symlink() and (out_dir.is_dir() or not out_dir.exists()):
        out_dir = Path(os.path.realpath(out_dir))
    return check_output_dir(out_dir, "OUT_DIR")


def publish(staging: Path, out_dir: Path, overwrite: bool) -> None:
    """Put the finished ``staging`` folder at ``out_dir`` (replacing an old one only at the last moment). What is
    there now is checked again as at the start (``check_out_dir``): another export or a user's files may have
    appeared while this one ran, and only an export is replaced, only with ``overwrite``."""
    try:
        check_out_dir(out_dir, overwrite)
    except ZoodipError as exc:
        raise ZoodipError(f"{exc}: it appeared while the export ran (another export, or files put there), and nothing "
                          "was replaced") from None
    swap_folder_in(staging, out_dir)


def export_write_failure(exc: BaseException, staging: Path, out_dir: Path) -> ZoodipError | None:
    """The one line for an export that could not write its files (a full disk, which NumPy and safetensors report
    without the file's name), naming the file where known and always the folder that needs the room: the staging
    folder beside OUT_DIR, not OUT_DIR's own disk where that is a link elsewhere. None for other failures."""
    if isinstance(exc, OSError):
        reason, fix = write_failure(exc)
    elif type(exc).__name__ == "SafetensorError":  # (its writer's error; no OSError, no file name)
        said = (str(exc).splitlines() or [""])[0]
        reason, fix = ("the disk is full", "free space") if "os error 28" in said else (said[:100], "check the folder")
    else:
        return None
    if isinstance(exc, OSError) and reason != "the disk is full" and exc.filename is not None:
        return None  # (a named path the system refused: the CLI's line for it names it)
    name = getattr(exc, "filename", None)
    file = Path(os.fsdecode(name)) if isinstance(name, (str, bytes)) else None
    shown = f" ({file.relative_to(staging) if staging in file.parents else file})" if file is not None else ""
    return ZoodipError(f"cannot write the export{shown} into {staging.parent}, where it is built beside OUT_DIR "
                       f"{out_dir.name} ({reason}): {fix} there, or choose an OUT_DIR elsewhere, and export again; "
                       "nothing was written")


def staging_folder(out_dir: Path) -> Path:
    """A fresh hidden folder beside ``out_dir`` to build the export in, with ordinary permissions.

    Its name carries this process's id, so that the staging folders of exports killed before they could
    clean up (SIGKILL, a power cut: an SD1.5 one holds GBs) are recognized and removed by the next export.
    """
    remove_stale_staging(out_dir)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.{os.getpid()}.", suffix=".partial", dir=out_dir.parent))
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # mkdtemp makes it private; the result should be an ordinary folder
    return staging


def remove_stale_staging(out_dir: Path) -> None:
    """Remove ``.NAME.PID.*.partial`` folders beside ``out_dir`` whose process no longer runs."""
    for entry in left_by_ended_process(out_dir.parent, re.compile(rf"^\.{re.escape(out_dir.name)}\.(\d+)\.[^/]*\.partial$")):
        if not entry.is_dir():
            continue
        size = sum(f.lstat().st_size for f in entry.rglob("*") if f.is_file() and not f.is_symlink())  # (a link: not
        # what it points to, such as the checkpoint a single-file export links to)
        shutil.rmtree(entry, ignore_errors=True)
        print(f"removed {entry.name} ({size / 2**20:.0f} MiB), left by an export that was killed", file=sys.stderr)


@dataclass(frozen=True)
class FinishedSwap:
    """What ``finish_interrupted_swap`` did with ``aside``, the old ``dest`` a killed ``swap_folder_in`` left:
    ``"restored"`` (renamed back: the new one never got in), ``"removed"`` (the new one was in place) or ``"kept"``
    (its removal failed: it is still there)."""

    dest: Path
    aside: Path
    done: str

    def __str__(self) -> str:
        """The line that says it."""
        return {"restored": f"restored {self.dest.name} from {self.aside.name}, where a replacement killed half-way "
                            "had left it",
                "removed": f"removed {self.aside.name}, the previous {self.dest.name} that a replacement killed "
                           "before its cleanup left",
                "kept": f"could not remove {self.aside.name}, the previous {self.dest.name} that a replacement "
                        "killed before its cleanup left: remove it to free its space"}[self.done]


def finish_interrupted_swap(dest: Path) -> FinishedSwap | None:
    """Undo or finish what a killed ``swap_folder_in`` left beside ``dest``: with ``dest`` missing, the old folder
    is renamed back (the new one never got in); with ``dest`` in place, the old one is removed (only its removal was
    cut short). Returns what it did, as found on the disk after it, or None where nothing was left."""
    aside = set_aside_folder(dest)
    if aside is None:
        return None
    if os.path.lexists(dest):
        shutil.rmtree(aside, ignore_errors=True)
        return FinishedSwap(dest, aside, "kept" if os.path.lexists(aside) else "removed")
    os.replace(aside, dest)
    fsync_folder(dest.parent)
    return FinishedSwap(dest, aside, "restored")


def check_out_dir(out_dir: Path, overwrite: bool, source: Path | None = None, flag: str = "OUT_DIR") -> None:
    """OUT_DIR checked before any work: creatable, not the source, and only an earlier export is replaced. ``flag``:
    how the caller's user named the folder (a script that exports into its ``--export``), for the refusals."""
    done = finish_interrupted_swap(out_dir)  # (an export killed while replacing OUT_DIR: its old one comes back)
    restored = done is not None and done.done == "restored"
    if restored and not overwrite and out_dir.is_dir() and any(out_dir.iterdir()):
        # (one line: the note of the restore and a bare "exists" refusal read as if this export had made OUT_DIR)
        raise ZoodipError(f"{flag} {out_dir} holds its earlier export again: an export that was replacing it was "
                          f"killed half-way and had left it aside as {done.aside.name}, now put back; add --overwrite "
                          f"to replace it with this export, or choose another {flag}")
    if done is not None:
        print(done, file=sys.stderr)
    check_output_dir(out_dir, flag)  # not a file, not under one, creatable: before any work
    if source is not None:
        if lies_within(source, out_dir):
            raise ZoodipError(f"{flag} {out_dir} is the source folder or holds it, which the export must not replace: "
                              f"choose another {flag}")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not overwrite:
            raise ZoodipError(f"output folder {out_dir} exists and is not empty (use --overwrite to replace it)")
        # --overwrite replaces a previous export, never an arbitrary folder someone pointed us at.
        manifest = out_dir / MANIFEST
        if not manifest.is_file() or _format_of(manifest) != FORMAT:
            raise ZoodipError(f"refusing to overwrite {flag} {out_dir}: it is not a zoodip export folder: choose "
                              f"another {flag}")


def _format_of(manifest: Path) -> object:
    """The ``format`` a manifest file names (None where it is no readable JSON object)."""
    try:
        data = parse_json(manifest_text(manifest))
    except (ZoodipError, ValueError):
        return None
    return data.get("format") if isinstance(data, dict) else None

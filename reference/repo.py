"""The repository's root, and paths as results record them: relative to it, never a machine's absolute path.

Scripts under ``benchmarks/`` and ``reference/`` import ``REPO`` from here (after putting the
repository on ``sys.path`` when run as files). The SDK keeps its own: it imports nothing from here.
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Callable, Iterable

REPO = Path(__file__).resolve().parents[1]

# Stands for the folders above a path outside the repository; the last name still says which it was.
OUTSIDE_REPO = "<outside-repo>"


def repo_relative(path: str | os.PathLike[str], repo: Path = REPO) -> str:
    """``path`` as results record it: POSIX-style relative to ``repo`` when inside it, else
    ``<outside-repo>/<name>``, so a results file reads the same on every machine and names no local folder."""
    resolved, root = Path(path).resolve(), Path(repo).resolve()
    try:
        return resolved.relative_to(root).as_posix()
    except ValueError:
        return f"{OUTSIDE_REPO}/{resolved.name}"


def relative_args(args: Iterable[str], repo: Path = REPO) -> list[str]:
    """Command-line arguments as results record them: each absolute path (``PATH`` or ``--opt=PATH``)
    through ``repo_relative``, everything else as typed."""
    recorded = []
    for arg in args:
        option, equals, value = arg.partition("=")
        if equals and os.path.isabs(value):  # --opt=PATH, or a NAME=PATH value (problem_dimension.py --models)
            recorded.append(f"{option}={repo_relative(value, repo)}")
        elif os.path.isabs(arg):
            recorded.append(repo_relative(arg, repo))
        else:
            recorded.append(arg)
    return recorded


def check_new_output(path: Path, flag: str, overwrite: bool, sources: Iterable[Path] = (), is_file: bool = False) -> Path:
    """``path`` checked before any work as a script's output folder (or file, ``is_file``):
    writable, not one of ``sources`` nor holding one, and not an existing non-empty output unless ``overwrite``,
    so that a mistyped or default path never replaces a committed model (reference/model, model-768) by accident."""
    from zoodip.errors import ZoodipError
    from zoodip.paths import check_output_dir, check_output_file, lies_within

    path = check_output_file(path, flag) if is_file else check_output_dir(path, flag)
    for source in sources:
        if lies_within(source, path):
            raise ZoodipError(f"{flag} {path} is the source folder or holds it, which this run reads: "
                              f"choose another {flag}")
    if not overwrite and (path.is_file() or (path.is_dir() and any(path.iterdir()))):
        raise ZoodipError(f"{flag} {path} already exists: name a new {'file' if is_file else 'folder'}, "
                          "or add --overwrite to replace it")
    return path


def write_folder_beside(dest: Path, write: Callable[[Path], None]) -> Path:
    """``write(folder)`` creates a new folder beside ``dest``, which then takes ``dest``'s place
    (``zoodip.paths.swap_folder_in``). A failed or interrupted write (a full disk, Ctrl-C) removes its partial folder
    and leaves ``dest`` as it was. A link's target is replaced, not the link (a link cannot take a folder's place),
    and ``.`` is resolved so that it has a name to write beside. Returns the resolved ``dest``."""
    from zoodip.paths import left_by_ended_process, swap_folder_in

    dest = Path(dest).resolve()
    partial = dest.with_name(f"{dest.name}.partial-{os.getpid()}")  # one per process: two may build one cache
    shutil.rmtree(partial, ignore_errors=True)
    for entry in left_by_ended_process(dest.parent, re.compile(rf"^{re.escape(dest.name)}\.partial-(\d+)$")):
        shutil.rmtree(entry, ignore_errors=True)  # (a killed run ran no cleanup)
    try:
        write(partial)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    swap_folder_in(partial, dest)
    return dest


__all__ = ["OUTSIDE_REPO", "REPO", "check_new_output", "relative_args", "repo_relative", "write_folder_beside"]

"""Output locations, checked before any work starts, and the temp-file convention of atomic writes.

A run that trains for an hour and then cannot write its result has wasted the hour, and one that
fails half-way through creating its folder leaves debris. So every output path is checked up front
(without creating anything): it must not be an existing file where a folder is wanted (or a folder
where a file is wanted), must not lie under a file, and its nearest existing folder must be
writable. Each failure is one ``ZoodipError`` line naming the flag.

Atomic writes go to ``.{name}.tmp-{pid}-{random}`` beside the target and are renamed over it; a
crash between the two leaves such a file behind, which ``remove_stale_temp_files`` deletes when
the next run in that folder starts. A run folder is used by one process at a time (``run_folder_lock``):
a second run in it would delete the first's in-flight temp files and interleave their checkpoints.
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
import tempfile
import time
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from .errors import Given, ZoodipError

try:
    import fcntl as _fcntl
except ImportError:  # Windows: no advisory locks, nothing is locked
    _fcntl = None


def _nearest_existing(path: Path) -> Path:
    """``path`` or its closest ancestor that exists (as anything)."""
    current = path
    while not os.path.lexists(current):
        if current.parent == current:
            break
        current = current.parent
    return current


def _writable_folder(folder: Path) -> bool:
    """Whether an entry can be created in ``folder``, found by creating and removing one.

    Permission bits alone do not say (root ignores them; read-only mounts and /proc do not).
    """
    try:
        probe = tempfile.mkdtemp(prefix=".zoodip-probe-", dir=folder)
    except OSError:
        return False
    os.rmdir(probe)
    return True


def _check_creatable(path: Path, flag: str) -> None:
    """``path`` does not exist yet: its nearest existing ancestor must be a writable folder."""
    anchor = _nearest_existing(path.absolute())
    if anchor == path.absolute():  # a link to nothing (or a loop): the path is there, and is nothing to write to
        raise ZoodipError(f"{flag} ", Given(path), f" {why_missing(path)}: remove the link, or name another path")
    if os.path.islink(anchor):  # a link to nothing on the way
        raise ZoodipError(f"{flag} ", Given(path), f" lies under {anchor}, which {why_missing(anchor)}: choose another path")
    if not anchor.is_dir():
        raise ZoodipError(f"{flag} ", Given(path), f" lies under {anchor}, which is a file, not a folder: choose another path")
    if not _writable_folder(anchor):
        raise ZoodipError(f"{flag} ", Given(path), f" cannot be created: {anchor} is not writable; choose a writable location")


def check_output_dir(path: str | os.PathLike[str], flag: str = "output_dir") -> Path:
    """Check that ``path`` is, or can become, a writable folder; creates nothing. Returns it as a Path. ``flag``: how
    the messages name it (by default the API's ``output_dir``, which the command line says as its flag)."""
    if not str(path).strip():
        raise ZoodipError(f"{flag} is empty: name the folder to write into, e.g. {flag} my-run")
    path = Path(path)
    if path.exists():
        if not path.is_dir():
            raise ZoodipError(f"{flag} ", Given(path), " is an existing file, not a folder: choose a folder path")
        if not _writable_folder(path):
            raise ZoodipError(f"{flag} ", Given(path), " is not writable: choose a writable folder")
        return path
    _check_creatable(path, flag)
    return path


def check_output_file(path: str | os.PathLike[str], flag: str, suffixes: tuple[str, ...] | None = None) -> Path:
    """Check that ``path`` can be written as a file (replacing an existing file); creates nothing."""
    if not str(path).strip():
        raise ZoodipError(f"{flag} is empty: name the file to write")
    path = Path(path)
    if path.is_dir():
        raise ZoodipError(f"{flag} ", Given(path), f" is a folder: name a file inside it, e.g. {path / ('out' + (suffixes or ('',))[0])}")
    if suffixes is not None and path.suffix.lower() not in suffixes:
        raise ZoodipError(f"{flag} ", Given(path), f" must end in {', '.join(suffixes)}")
    if path.exists():
        if not os.access(path, os.W_OK) or not _writable_folder(path.absolute().parent):
            raise ZoodipError(f"{flag} ", Given(path), " is not writable: choose another file")
        return path
    _check_creatable(path, flag)
    return path


def os_error_line(exc: OSError, flag: str | None = None) -> str:
    """One line for an error the system raised on a path wherever it was first touched (a name past the file
    system's length, a loop of links, a folder that went away): the flag that gave it, the path, shortened, and
    what to do."""
    if not isinstance(exc.filename, (str, bytes)):  # NumPy's short write on a full disk names no file, no errno
        reason, fix = write_failure(exc)
        return f"a file could not be read or written ({reason}): {fix} and check the paths given"
    advice = {errno.ENAMETOOLONG: "the name is too long for the file system: use a shorter one",
              errno.ELOOP: "its links form a loop: point the link at a real file"}.get(
        exc.errno or 0, f"{(exc.strerror or type(exc).__name__).lower()}: check the path")
    name = os.fsdecode(exc.filename)
    return f"{flag + ' ' if flag else ''}{name[:60] + '...' if len(name) > 60 else name}: {advice}"


def check_utf8_path(path: str | os.PathLike[str], what: str, reader: str) -> None:
    """Refuse ``path`` where its bytes are no UTF-8 (a name made in another encoding) before ``reader`` opens it:
    onnxruntime and safetensors take UTF-8 paths only, and their own errors blamed the files ("re-run 'zoodip
    export'", "a weights file there may be damaged")."""
    try:
        str(Path(path).absolute()).encode("utf-8")
    except UnicodeEncodeError:
        raise ZoodipError(f"{what} ", Given(path), f" has a path that is not UTF-8 (a name in another encoding), which {reader} "
                          "cannot open: rename it, or the folder above it, in UTF-8 characters") from None


def why_missing(path: str | os.PathLike[str]) -> str:
    """Why an input the user named is not there, said after its name: "does not exist", or what hides it (a link
    whose target is gone, a loop of links, a file where the path needs a folder), which "does not exist" would
    send the user looking in the wrong place for."""
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "is a loop of symbolic links (a link that leads back to itself)"
        if exc.errno == errno.ENOTDIR:
            return "does not exist (a part of the path is a file, not a folder)"
        if exc.errno == errno.ENOENT and os.path.islink(path):
            return f"is a symbolic link to {os.readlink(path)}, which does not exist"
        if exc.errno not in (errno.ENOENT, None):
            return f"cannot be read ({exc.strerror or exc})"
        return "does not exist"
    # There after all: said as what it is (the caller wanted the other kind, or a regular file)
    return ("is a folder" if os.path.isdir(path) else "is a file" if os.path.isfile(path)
            else "is neither a file nor a folder (a device, pipe or socket)")


def lies_within(path: str | os.PathLike[str], folder: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is ``folder`` or lies under it, links and ``..`` resolved (an output among the inputs)."""
    where, place = _resolved(path), _resolved(folder)
    return where == place or place in where.parents


def _resolved(path: str | os.PathLike[str]) -> Path:
    """``path`` absolute with its links resolved; a loop of links as the OSError it is (pathlib raises RuntimeError
    before Python 3.13)."""
    try:
        return Path(path).absolute().resolve()
    except RuntimeError:
        raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), os.fspath(path)) from None


def is_same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Whether ``a`` and ``b`` are one existing file (links, hard links and spellings alike); False if either is not."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def temp_path(path: Path) -> Path:
    """A fresh temp-file name beside ``path`` for an atomic write (see ``remove_stale_temp_files``)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")


_TEMP_WRITER = re.compile(r"\.tmp-(\d+)-")  # the writing process's id in a ``temp_path`` name


def open_new_file(path: Path):  # -> BinaryIO
    """Create ``path`` exclusively for writing, with the umask's ordinary permissions (0644 usually).

    ``tempfile.mkstemp`` would make it 0600, and the rename keeps that mode on the final file.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    return os.fdopen(fd, "wb")


def remove_stale_temp_files(folder: Path, names: tuple[str, ...], writer_gone: bool = False) -> list[Path]:
    """Delete the temp files that interrupted atomic writes of ``names`` left in ``folder`` (and, for a name that is
    a link, beside its target, where ``atomic_write_bytes`` writes them). ``writer_gone``: only those whose writing
    process (its id in the name, ``temp_path``) has ended and that were not written to for minutes, where no lock
    keeps other writers out (``generate``; a process of another machine or container may share the id)."""
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    places: dict[Path, set[str]] = {folder: set(names)}
    for name in names:
        target = write_target(folder / name)
        places.setdefault(target.parent, set()).add(target.name)
    for place, held in places.items():
        patterns = [re.compile(rf"^\.{re.escape(name)}\.(tmp-.*|.+\.tmp)$") for name in held]
        try:
            entries = list(place.iterdir()) if place.is_dir() else []
        except OSError:  # a folder it may write but not list (a drop box): nothing of its to clean
            continue
        for entry in entries:
            if entry.is_file() and any(p.match(entry.name) for p in patterns) and (
                    not writer_gone or not _writer_may_run(entry)):
                with contextlib.suppress(OSError):
                    entry.unlink()
                    removed.append(entry)
    return removed


_WRITING_FOR_S = 300.0  # a temp file written to more recently may be a live write's (an image's takes seconds)


def _writer_may_run(entry: Path) -> bool:
    """Whether the process that writes the temp file ``entry`` may still run: its id (in the name, ``temp_path``)
    is a live process's here, or the file was written to within ``_WRITING_FOR_S``."""
    try:
        if time.time() - entry.stat().st_mtime < _WRITING_FOR_S:
            return True
    except OSError:
        return True  # (gone already, or not ours to read)
    found = _TEMP_WRITER.search(entry.name)
    return found is not None and process_is_running(int(found.group(1)))


def missing_parents(path: Path) -> list[Path]:
    """The folders above ``path`` that do not exist yet, innermost first: what making it would create (and what a
    failed or refused run removes again)."""
    missing = []
    for parent in path.parents:
        if parent.exists():
            break
        missing.append(parent)
    return missing


def left_by_ended_process(folder: Path, pattern: re.Pattern[str]) -> list[Path]:
    """The entries of ``folder`` whose names match ``pattern``, its first group the id of the process that made
    them, where that process no longer runs: what an export, a swap or a build killed before its cleanup left."""
    try:
        entries = list(folder.iterdir())
    except OSError:  # (no such folder, or not ours to list: nothing of ours to clean)
        return []
    return [entry for entry in entries
            if (match := pattern.match(entry.name)) and not process_is_running(int(match.group(1)))]


def process_is_running(pid: int) -> bool:
    """Whether process ``pid`` may still be running (a file or folder named after it is not left over yet)."""
    try:
        os.kill(pid, 0)
    except PermissionError:  # another user's process
        return True
    except (OSError, OverflowError):  # none such (or an id past the system's range)
        return False
    return True


def check_files_to_replace(paths: list[Path], then: str) -> None:
    """Refuse, before any work, a path a run will write its file to that holds a folder (or a device): its write
    would fail only at the end, after all the steps. ``then``: what the user does once it is moved."""
    for path in paths:
        if path.exists() and not path.is_file():
            raise ZoodipError(f"{path} is not a file (a folder or a device), and the run writes its own there at the "
                              f"end: move it, then {then}")
        folder = write_target(path).absolute().parent  # (a link's: its target's, there or not yet)
        if (path.exists() or path.is_symlink()) and not _writable_folder(folder):
            where = f"links into {folder}, a folder" if path.is_symlink() else "is in a folder"
            raise ZoodipError(f"{path} {where} this process cannot write (or that is not there), and the run writes "
                              f"it at the end: make the folder writable, then {then}")


def write_failure(exc: OSError) -> tuple[str, str]:
    """Why a write failed and what fixes it, for its one line: a full disk (also NumPy's short write, which has no
    errno), a folder the process may not write (read-only, immutable, another owner's), or what the system said."""
    short_write = exc.errno is None and " requested and " in str(exc)  # NumPy's words: no errno, no file
    if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)) or short_write:
        return "the disk is full", "free space"
    said = exc.strerror or str(exc) or type(exc).__name__
    return (said, "make the folder writable") if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS) else (
        said, "check the folder")


def write_target(path: Path) -> Path:
    """The file a write to ``path`` replaces: a symbolic link's target where that is a file or not there yet (a rename
    over the link itself would turn it into a plain file and leave the target stale), else ``path`` (a link to a
    device, a pipe or a folder is replaced, never what it points at)."""
    if not os.path.islink(path):
        return path
    target = Path(os.path.realpath(path))
    return target if target.is_file() or not os.path.lexists(target) else path


def atomic_write_bytes(path: Path, write: Callable[[BinaryIO], None] | bytes | str, then: str = "try again") -> None:
    """Write through ``write(handle)`` (or the bytes, or the text as UTF-8, given as ``write``) into a temp file beside
    ``path``, fsync, then rename over it.

    A crash, an interrupt or a full disk leaves the previous file intact and no partial file behind; the refusal's
    line ends with the fix for the failure (``write_failure``) and ``then``, what the caller's user does after it. A
    symbolic link is written through (``write_target``).
    """
    if not callable(write):
        data = write.encode("utf-8") if isinstance(write, str) else write
        write = lambda handle: handle.write(data)  # noqa: E731
    target = write_target(path)
    tmp = temp_path(target)
    try:
        write_synced(tmp, write)
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if not isinstance(exc, OSError):
            raise
        reason, fix = write_failure(exc)
        kept = "; the previous version is intact" if target.is_file() else ""
        shown = f"{path} (a link to {target})" if target != path else path
        raise ZoodipError(f"cannot write {shown}: {reason}{kept}: {fix} and {then}") from None
    fsync_folder(target.parent)


def write_synced(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Create ``path`` (``open_new_file``), write it through ``write(handle)`` and flush it to the disk before a rename
    puts it in place: a power cut after the rename otherwise can leave an empty file under the final name (the rename
    may reach the disk before the data). Every temp file an atomic write renames is written through this."""
    with open_new_file(path) as handle:
        write(handle)
        handle.flush()
        os.fsync(handle.fileno())


def swap_folder_in(built: Path, dest: Path) -> None:
    """Rename the finished folder ``built`` to ``dest`` (both in one folder). An old ``dest`` is renamed aside first
    (``.NAME.old-PID``) and removed only once the new one is in place, so an interruption never leaves a half-removed
    ``dest``: at worst, between the two renames, the old folder waits under that name, for
    ``export_folder.finish_interrupted_swap`` to rename back (``set_aside_note`` names it where ``dest`` is read)."""
    if not os.path.lexists(dest):
        os.replace(built, dest)
        return
    old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(dest, old)
    os.replace(built, dest)
    shutil.rmtree(old, ignore_errors=True)


def set_aside_folder(dest: Path) -> Path | None:
    """The old ``dest`` that a ``swap_folder_in`` killed between its renames left aside (``.NAME.old-PID``, its
    process ended), or None."""
    found = [entry for entry in left_by_ended_process(dest.parent, re.compile(rf"^\.{re.escape(dest.name)}\.old-(\d+)$"))
             if entry.is_dir() and not entry.is_symlink()]
    return max(found, key=lambda entry: entry.stat().st_mtime) if found else None


def set_aside_note(dest: Path) -> str:
    """For a missing ``dest``: where an interrupted replacement left the previous one, and how it comes back ("")."""
    aside = set_aside_folder(Path(dest).absolute())
    return "" if aside is None or os.path.lexists(dest) else (
        f"; a replacement of it was killed half-way and left the previous one at {aside}: rename it back to "
        f"{Path(dest).name} (the next 'zoodip export' to it does so)")


def append_whole(handle: BinaryIO, data: bytes) -> None:
    """Append ``data`` through the unbuffered binary ``handle`` whole or not at all: a write that falls short (a full
    disk) is cut back, so that an append-only log never holds half a line for a reader (or a resumed run) to meet."""
    end = os.fstat(handle.fileno()).st_size
    try:
        if handle.write(data) != len(data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    except OSError:
        with contextlib.suppress(OSError):
            os.ftruncate(handle.fileno(), end)
        raise


def fsync_folder(folder: Path) -> None:
    """Persist the renames into ``folder`` (POSIX); best effort, since not every platform allows it."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


RUN_LOCK_NAME = ".zoodip-run.lock"


@contextlib.contextmanager
def exclusive_lock(path: Path, busy: str | None = None) -> Iterator[None]:
    """Hold an exclusive lock on the file ``path`` (created if missing) while the block runs.

    An advisory ``flock``: the OS drops it when its process ends, however it ends (kill -9 included),
    so a lock is never left stale. ``busy``: raise ``ZoodipError(busy)`` at once if another process
    holds it; None: wait for it. Where ``fcntl`` does not exist (Windows) nothing is locked.
    """
    if _fcntl is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        with open(path, "a") as handle:
            if not take_flock(handle, wait=busy is None):
                raise ZoodipError(busy or "")
            if _same_file(handle.fileno(), path):
                yield
                return
        # The holder removed the file as it ended (run_folder_lock) after we opened it: ours is a lock on a
        # file nobody else will open; take the one at the path now.


def take_flock(handle: object, wait: bool = False) -> bool:
    """An exclusive advisory ``flock`` on the open file ``handle`` (a file object or descriptor), held until it is
    closed; False where another process holds one and ``wait`` is off; True where taken, or where ``fcntl`` does not
    exist. A file system that cannot lock raises its OSError."""
    if _fcntl is None:
        return True
    try:
        _fcntl.flock(handle, _fcntl.LOCK_EX | (0 if wait else _fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    return True


def _same_file(fd: int, path: Path) -> bool:
    try:
        held, now = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (held.st_dev, held.st_ino) == (now.st_dev, now.st_ino)


@contextlib.contextmanager
def _folder_lock(folder: Path, busy: str) -> Iterator[None]:
    """The folder's own flock beside the lock file's: a user who deletes the lock file (left by a killed run, it
    looks stale) would otherwise let a second run in beside a live one. Where a file system cannot lock a folder,
    the lock file alone holds."""
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        yield
        return
    try:
        try:
            taken = take_flock(handle)
        except OSError:
            taken = True  # no folder locks here
        if not taken:
            raise ZoodipError(busy)
        yield
    finally:
        os.close(handle)


@contextlib.contextmanager
def run_folder_lock(folder: Path) -> Iterator[None]:
    """One run at a time in ``folder``: a second process gets one line naming it. The lock file goes when
    the run ends (as does the folder, if the run created it and wrote nothing)."""
    busy = f"{folder} is in use by another zoodip run: wait for it to end, or choose another output_dir"
    folder = Path(folder).absolute()  # (a host's chdir during the run must not send the cleanup elsewhere)
    created = not folder.exists()
    lock = folder / RUN_LOCK_NAME
    try:
        with exclusive_lock(lock, busy=busy), _folder_lock(folder, busy):
            try:
                yield
            finally:  # still holding the lock: a run that starts after this finds no file, or a fresh one
                with contextlib.suppress(OSError):
                    lock.unlink()
    finally:
        if created:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if empty

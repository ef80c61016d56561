"""sha256 integrity of an export folder, at a cost a phone can pay.

Hashing all of SD1.5's INT8 weights at every start would make each start wait for it. So each
file is hashed in full once, and the result is remembered under its identity (resolved path, size,
modification time in ns, inode, device, inode change time). A later load re-hashes only files whose identity
changed: a file rewritten in place, replaced or restored from a backup gets a new mtime, inode or change time and
is hashed again. ``zoodip verify MODEL`` ignores what is remembered and hashes everything.

The memory lives in ``$ZOODIP_CACHE_DIR`` (default ``$XDG_CACHE_HOME/zoodip`` or ``~/.cache/zoodip``),
file ``verified-files.json``. It is an optimization only: when it cannot be read or written,
files are simply hashed again next time.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping

from .errors import ZoodipError
from .json_text import parse_json
from .paths import atomic_write_bytes

CACHE_FILE = "verified-files.json"


def cache_dir() -> Path:
    explicit = os.environ.get("ZOODIP_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "zoodip"


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    """sha256 of a file, read in chunks (export files can be GBs)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def file_identity(path: Path) -> list[int]:
    """What changes when a file's content may have: size, mtime (ns), inode, device, and the inode's change time (a
    write whose mtime was set back, as ``touch -r``, ``cp -p`` and ``rsync -t`` do, still moves it)."""
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev, st.st_ctime_ns]


def _load_cache() -> dict[str, Any]:
    path = cache_dir() / CACHE_FILE
    try:
        if not path.is_file():  # (a named pipe there would block the read for ever)
            return {}
        data = parse_json(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _save_cache(learned: Mapping[str, Any], forgotten: set[str]) -> None:
    """Write this call's entries into the cache as it is now on disk, not as it was when the call started: two
    processes that hash at once (seconds for SD's files) would otherwise each write back their own start's copy,
    and the later one would drop what the other had learned."""
    folder = cache_dir()
    cache = {**_load_cache(), **learned}
    # (and forget the files of deleted exports)
    cache = {key: entry for key, entry in cache.items() if key not in forgotten and os.path.exists(key)}
    text = json.dumps(cache).encode("utf-8")
    try:  # (a temp file per write: threads of one process that load models at once each write their own)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(folder / CACHE_FILE, lambda handle: handle.write(text))
    except (OSError, ZoodipError):  # only a cache: the files are hashed again next time
        pass


def verify_files(folder: Path, files: Mapping[str, Mapping[str, Any]], *, force: bool = False) -> tuple[int, int]:
    """Check every listed file's sha256; returns (files hashed now, bytes hashed now).

    Without ``force``, a file whose identity and expected hash match what was remembered is not
    read again. A mismatch raises a one-line ``ZoodipError``.
    """
    cache = {} if force else _load_cache()
    learned: dict[str, Any] = {}
    hashed = hashed_bytes = 0
    for name, info in files.items():
        expected = info.get("sha256")
        if expected is None:
            continue
        path = Path(folder) / name
        key = str(path.resolve())
        try:
            identity = file_identity(path)
        except OSError as exc:
            raise ZoodipError(f"cannot read {path} ({exc.strerror or exc}): re-run 'zoodip export'") from None
        entry = cache.get(key)
        if isinstance(entry, dict) and entry.get("identity") == identity and entry.get("sha256") == expected:
            continue
        try:
            actual = file_sha256(path)
        except OSError as exc:
            raise ZoodipError(f"cannot read {path} ({exc.strerror or exc}): re-run 'zoodip export'") from None
        hashed += 1
        hashed_bytes += identity[0]
        if actual != expected:
            _save_cache(learned, forgotten={key})
            raise ZoodipError(f"{path} does not match its sha256 in the manifest: the file is damaged or was "
                              "replaced; re-run 'zoodip export'")
        learned[key] = {"identity": identity, "sha256": actual}
    if hashed:
        _save_cache(learned, forgotten=set())
    return hashed, hashed_bytes

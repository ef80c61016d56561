"""The one writer of the benchmarks' result files (results.json/.md, memory.png, ...): each is written under a temp
name beside it, flushed to the disk, then renamed over the old one (zoodip.paths.atomic_write_bytes), so a Ctrl-C,
a kill or a full disk in the middle leaves the old file or the new one whole, never a truncated one."""
from __future__ import annotations

from pathlib import Path
from typing import Any, BinaryIO, Callable

from zoodip.paths import atomic_write_bytes


def write_file(path: Path, content: str | bytes | Callable[[BinaryIO], None]) -> None:
    """``path`` (its folder made if need be) with ``content``: text (UTF-8), bytes, or what ``content(handle)``
    writes; a failure is the one line of a ZoodipError."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, content, then="run again (the other result files may be from the previous run)")


def png(image: Any, **options: Any) -> Callable[[BinaryIO], None]:
    """A Pillow image's PNG, for ``write_file`` (saved to the handle: no file name to guess the format from)."""
    return lambda handle: image.save(handle, format="PNG", **options)

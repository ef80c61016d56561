"""The benchmarks' result files are each written under a temp name and renamed over the old one
(benchmarks/_results_files.write_file): a write that fails or is interrupted at the last moment (a full disk, a Ctrl-C)
leaves the previous file whole; with plain writes it left a truncated or emptied results.json/.md/.png."""
from __future__ import annotations

import errno
import json
import os
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
for folder in (REPO, REPO / "benchmarks"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))


def _disk_full(fd: int) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _files(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def test_a_full_disk_while_writing_results_keeps_the_previous_files_whole(tmp_path, monkeypatch):
    from benchmarks._quality_report import write_results
    from zoodip.errors import ZoodipError

    write_results(tmp_path, {"rows": [1]}, "old report\n")
    before = _files(tmp_path)
    monkeypatch.setattr(os, "fsync", _disk_full)  # the data reaches the disk only when flushed
    with pytest.raises(ZoodipError, match="the disk is full"):
        write_results(tmp_path, {"rows": [1, 2]}, "new report\n")
    assert _files(tmp_path) == before  # (and no temp file left beside them)


def test_memory_render_interrupted_while_writing_keeps_the_previous_files_whole(tmp_path, monkeypatch):
    import memory

    committed = REPO / "benchmarks" / "results" / "memory"
    for name in ("memory.json", "memory.md", "memory.png"):
        shutil.copy(committed / name, tmp_path / name)
    memory.render(tmp_path)  # (the files as this code writes them)
    report = json.loads((tmp_path / "memory.json").read_text())
    (tmp_path / "memory.json").write_text(json.dumps({**report, "resolution": report["resolution"] + 64}))
    before = _files(tmp_path)  # (a render now would change memory.md and memory.png)

    def interrupted(fd: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        memory.render(tmp_path)
    assert _files(tmp_path) == before

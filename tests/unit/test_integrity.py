"""The remembered sha256 checks (zoodip.integrity) as several threads of one process load models at once."""
from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

import pytest

from zoodip.integrity import CACHE_FILE, verify_files


def test_two_threads_saving_the_cache_at_once_each_write_their_own_temp_file(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The cache's temp file was named by the process only: two threads that loaded a model at once wrote the same
    file, and the second rename found it gone (or renamed the other's half-written text over the cache)."""
    monkeypatch.setenv("ZOODIP_CACHE_DIR", str(tmp_path / "cache"))
    exports = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "unet.onnx").write_bytes(name.encode())
        exports.append((tmp_path / name, {"unet.onnx": {"sha256": hashlib.sha256(name.encode()).hexdigest()}}))
    both_written = threading.Barrier(2, timeout=10)
    real_replace, renamed, failed = os.replace, [], []

    def replace(src: os.PathLike, dst: os.PathLike) -> None:  # both temp files are written before either is renamed
        if Path(dst).name == CACHE_FILE:
            both_written.wait()
        try:
            real_replace(src, dst)
            renamed.append(Path(src).name)
        except OSError as exc:
            failed.append(exc)
            raise

    monkeypatch.setattr(os, "replace", replace)
    threads = [threading.Thread(target=verify_files, args=export) for export in exports]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failed and len(set(renamed)) == 2, (failed, renamed)
    assert len(json.loads((tmp_path / "cache" / CACHE_FILE).read_text())) == 1  # (the later save wins: a cache only)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [CACHE_FILE]

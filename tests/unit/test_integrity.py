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


def test_a_save_keeps_what_another_load_remembered_while_this_one_was_hashing(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Each load wrote back the cache as it had read it at its start, plus its own entries: a load that finished
    while another was still hashing lost its entries to the later save, and its files were hashed again next time."""
    import zoodip.integrity as integrity

    monkeypatch.setenv("ZOODIP_CACHE_DIR", str(tmp_path / "cache"))
    exports = {}
    for name in ("slow", "quick"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "unet.onnx").write_bytes(name.encode())
        exports[name] = (tmp_path / name, {"unet.onnx": {"sha256": hashlib.sha256(name.encode()).hexdigest()}})
    real_sha256, other_loads = integrity.file_sha256, [exports["quick"]]

    def sha256_while_another_load_runs(path: Path, chunk: int = 1 << 22) -> str:
        while other_loads:  # the quick load starts and ends while the slow one is hashing
            assert verify_files(*other_loads.pop()) == (1, 5)
        return real_sha256(path, chunk)

    monkeypatch.setattr(integrity, "file_sha256", sha256_while_another_load_runs)
    assert verify_files(*exports["slow"]) == (1, 4)
    assert verify_files(*exports["quick"]) == (0, 0)  # still remembered: not hashed again
    assert verify_files(*exports["slow"]) == (0, 0)

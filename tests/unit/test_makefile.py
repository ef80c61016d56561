"""`make setup` as a newcomer meets it: an old Python refused before a .venv exists, a changed Makefile redone."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="no make here")


def _copy(tmp_path: Path) -> Path:
    folder = tmp_path / "a clone"  # (a space in the path, as in many home folders)
    folder.mkdir()
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy2(REPO / name, folder / name)
    return folder


def test_setup_with_an_old_python_stops_before_the_venv(tmp_path: Path):
    folder = _copy(tmp_path)
    fake = tmp_path / "python3.10"  # runs the Makefile's `-c` checks as Python 3.10 would; anything else fails
    fake.write_text(f"#!{sys.executable}\nimport sys\nsys.version_info = (3, 10, 12, 'final', 0)\n"
                    "exec(sys.argv[2]) if sys.argv[1:2] == ['-c'] else sys.exit('not a check: ' + ' '.join(sys.argv))\n")
    fake.chmod(0o755)
    proc = subprocess.run(["make", "-s", "setup", f"PYTHON={fake}"], cwd=folder, capture_output=True, text=True,
                          timeout=60, env=dict(os.environ, MAKEFLAGS=""))
    assert proc.returncode != 0
    assert "needs Python 3.11+" in proc.stderr and "3.10" in proc.stderr and "not a check" not in proc.stderr
    assert not (folder / ".venv").exists()


def _dry_setup(folder: Path) -> str:
    proc = subprocess.run(["make", "-n", "setup"], cwd=folder, capture_output=True, text=True, timeout=60)
    return proc.stdout + proc.stderr


def test_a_changed_makefile_redoes_the_setup(tmp_path: Path):
    folder = _copy(tmp_path)
    stamp = folder / ".venv" / ".zoodip-installed"
    stamp.parent.mkdir()
    stamp.touch()
    for path, when in ((folder / "pyproject.toml", 1), (folder / "Makefile", 1), (stamp, 2)):
        os.utime(path, (when, when))
    assert "-m venv" not in _dry_setup(folder)  # set up after the last change: nothing to do
    os.utime(folder / "Makefile", (3, 3))  # a pull that changed the Makefile (a new install step) after the setup
    assert "-m venv" in _dry_setup(folder)

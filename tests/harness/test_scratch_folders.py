"""The benchmarks' default --work (memory.py's, quality.py's): an interrupted run (kill, a test's timeout) left its
temporary folder behind in the temp directory; a SIGTERM now removes it, and the next run removes those of runs
killed harder."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from benchmarks._scratch import scratch_folder  # noqa: E402

PREFIX = "zoodip-quality-"


def test_a_killed_run_removes_its_scratch_folder(tmp_path):
    """What the benchmarks make their default --work with, in a process that is then killed (SIGTERM)."""
    code = ("import sys, time; sys.path.insert(0, sys.argv[1]); from benchmarks._scratch import scratch_folder; "
            "work = scratch_folder('zoodip-memory-'); print(work.name, flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(REPO)], env=dict(os.environ, TMPDIR=str(tmp_path)),
                            stdout=subprocess.PIPE, text=True)
    try:
        folder = Path(proc.stdout.readline().strip())
        assert folder.is_dir() and folder.parent == tmp_path
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        proc.kill()
        proc.stdout.close()
    assert not folder.exists()


def test_the_next_run_removes_the_folders_of_dead_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f"{PREFIX}{dead.stdout.strip()}-abc"
    living = tmp_path / f"{PREFIX}{os.getppid()}-abc"  # a run still going: kept
    other = tmp_path / f"zoodip-memory-{dead.stdout.strip()}-abc"  # another benchmark's: its next run's to remove
    smoke_out = tmp_path / f"{PREFIX}smoke-abc"  # a --smoke run's output: kept
    for folder in (stale, living, smoke_out, other):
        folder.mkdir()
    previous = signal.getsignal(signal.SIGTERM)
    try:
        scratch = scratch_folder(PREFIX)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert not stale.exists() and living.exists() and smoke_out.exists() and other.exists()
    assert Path(scratch.name).name.startswith(f"{PREFIX}{os.getpid()}-")
    scratch.cleanup()


def test_a_script_s_sigterm_says_its_line_and_still_removes_the_folder(tmp_path):
    """In a script_main (memory.py, quality.py) the folder's own SIGTERM handler, an exit without a word, replaced
    the script's: the one line 'interrupted: ...' was lost. The script's is kept; the folder still goes."""
    code = ("import sys, time; sys.path.insert(0, sys.argv[1]); from benchmarks._scratch import scratch_folder; "
            "from zoodip.console import script_main\n"
            "@script_main('nothing was written')\n"
            "def main():\n    work = scratch_folder('zoodip-memory-'); print(work.name, flush=True); time.sleep(60)\n"
            "sys.exit(main())")
    proc = subprocess.Popen([sys.executable, "-c", code, str(REPO)], env=dict(os.environ, TMPDIR=str(tmp_path)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        folder = Path(proc.stdout.readline().strip())
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.stdout.close()
    assert proc.returncode == 128 + signal.SIGTERM and err == "interrupted: nothing was written\n", err
    assert folder.parent == tmp_path and not folder.exists()

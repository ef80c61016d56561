"""demo_seeds.py runs the demo in a child process per seed (quality.py its workers): a Ctrl-C, which reaches both
processes, was two 'interrupted:' lines (the child's naming its own --out, the user's --work); a failing child a
CalledProcessError traceback after its own 'error:' line. Both are now the parent's one line. The child here is a
stand-in shell script run in the interpreter's place."""
from __future__ import annotations

import stat
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
# The stand-in demo: says a line of progress, then its closing line as the real one would.
CHILDREN = {
    "fails": "echo 'demo: exporting' >&2; echo 'error: --out X: no space left' >&2; exit 2",
    # (a terminal's Ctrl-C reaches both processes: here the child signals its parent and itself)
    # (a SIGTERM, from `timeout` or a process manager, reaches the parent alone: the parent passes it on)
    "terminated": "trap \"echo 'interrupted: what the demo finished in --out is kept' >&2; exit 143\" TERM\n"
                  "echo 'demo: exporting' >&2; sleep 0.5; kill -TERM $PPID; for i in $(seq 50); do sleep 0.1; done",
    # (a SIGTERM that reached the child alone: its own line and status 143, or the signal's default end, -15)
    "ends_143": "trap \"echo 'interrupted: what the demo finished in --out is kept' >&2; exit 143\" TERM\n"
                "echo 'demo: exporting' >&2; kill -TERM $$; for i in $(seq 50); do sleep 0.1; done",
    "killed": "echo 'demo: exporting' >&2; kill -TERM $$; sleep 5",
    # (the parent's SIGTERM lands while the child's progress line is half written: the line is passed on whole)
    "mid_line": "trap \"printf ' of 2, stopped\\n' >&2; echo 'interrupted: the last checkpoint is kept' >&2; exit 143\" TERM\n"
                "printf 'demo: exporting' >&2; sleep 0.5; kill -TERM $PPID; for i in $(seq 50); do sleep 0.1; done",
    "interrupted": "trap \"echo 'interrupted: what the demo finished in --out is kept' >&2; exit 130\" INT\n"
                   "echo 'demo: exporting' >&2; sleep 0.5; kill -INT $PPID; kill -INT $$; sleep 30",  # (its line passed on first)
}


@pytest.mark.parametrize("child, code, line", [
    ("fails", 2, "error: the demo of seed 0 failed: --out X: no space left"),
    ("interrupted", 130, "interrupted: --out was not written"),
    ("terminated", 143, "interrupted: --out was not written"),
    ("ends_143", 143, "interrupted: --out was not written"),  # (it ended the parent as a Ctrl-C: 130)
    ("killed", 143, "interrupted: --out was not written"),
])
def test_a_failed_or_interrupted_demo_seed_is_the_parent_s_one_line(child, code, line, tmp_path, capfd, monkeypatch):
    from benchmarks import demo_seeds

    fake = tmp_path / "python"
    fake.write_text(f"#!/bin/bash\n{CHILDREN[child]}\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setattr(sys, "executable", str(fake))
    argv = ["--seeds", "0", "--steps", "1", "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out")]
    started = time.monotonic()
    assert demo_seeds.main(argv) == code
    assert time.monotonic() - started < 4  # (the child stopped by the signal passed on, not its own end after 5 s)
    err = capfd.readouterr().err
    lines = err.splitlines()  # (the child's progress passed on, then the parent's closing line alone)
    assert len(lines) == 2 and lines[0] == "demo: exporting" and lines[1].startswith(line), err
    assert not (tmp_path / "out").exists()


def test_a_failed_quality_worker_is_a_zoodip_error_with_its_own_words(tmp_path, capfd, monkeypatch):
    """A worker that failed was SystemExit('method X failed on J (exit status 2)'): a line without 'error:', exit
    status 1, after the worker's own error line."""
    from benchmarks import quality
    from benchmarks._quality_snapshots import Job
    from zoodip.errors import ZoodipError

    fake = tmp_path / "python"
    fake.write_text(f"#!/bin/bash\n{CHILDREN['fails']}\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setattr(sys, "executable", str(fake))
    job = Job("star", str(tmp_path), "<star>", "star")
    with pytest.raises(ZoodipError, match=r"^zoodip on star failed: --out X: no space left$"):
        quality.run_method("zoodip", [job], tmp_path, None, tmp_path / "work", 3, 1, 0, (500, 900), in_process=False)
    assert capfd.readouterr().err == "demo: exporting\n"


def test_a_progress_line_half_written_when_the_parent_is_interrupted_is_passed_on_whole(tmp_path, capfd, monkeypatch):
    """The parent read its child's stderr in its main thread, where its interrupt is raised: the part of a line read
    before the interrupt was lost (' of 2, stopped' came out without its start)."""
    from benchmarks import demo_seeds

    fake = tmp_path / "python"
    fake.write_text(f"#!/bin/bash\n{CHILDREN['mid_line']}\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setattr(sys, "executable", str(fake))
    argv = ["--seeds", "0", "--steps", "1", "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out")]
    assert demo_seeds.main(argv) == 143
    lines = capfd.readouterr().err.splitlines()
    assert lines[0] == "demo: exporting of 2, stopped" and lines[1].startswith("interrupted: --out was not written")
    assert len(lines) == 2, lines

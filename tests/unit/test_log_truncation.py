"""A resume cuts the run's log back to its checkpoint's step in place."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from zoodip.errors import ZoodipError
from zoodip.run_checks import append_log, read_log, truncate_log


def test_a_resume_cuts_the_log_back_in_place_not_by_rewriting_it(tmp_path: Path) -> None:
    """It read every record and wrote the whole log anew (18 MB for a 30,000-step run) to drop a few lines."""
    log = tmp_path / "log.jsonl"
    lines = [json.dumps({"step": i, "loss": 1.0 / (i + 1)}) + "\n" for i in range(6)]
    log.write_text("".join(lines) + '{"step": 6, "lo')  # (and a line torn by a kill)
    inode = log.stat().st_ino
    truncate_log(log, 3)
    assert log.read_text() == "".join(lines[:4]) and log.stat().st_ino == inode
    truncate_log(log, 3)  # (nothing to cut: left as it is)
    assert log.read_text() == "".join(lines[:4])
    truncate_log(log, 0)
    assert log.read_text() == lines[0]


def test_a_damaged_line_before_the_cut_is_still_refused(tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    log.write_text('{"step": 0}\nnot json\n{"step": 2}\n{"step": 3}\n')
    with pytest.raises(ZoodipError, match="damaged at line 2"):
        truncate_log(log, 2)


def test_a_kept_last_record_without_its_newline_gets_one_before_the_next_append(tmp_path: Path) -> None:
    """A log whose last record lacked its newline (a power cut between the record and it, an editor) was kept as it
    was: the resumed run's first record joined that line, and the log was damaged from then on."""
    log = tmp_path / "log.jsonl"
    log.write_text('{"step": 0}\n{"step": 1}')
    truncate_log(log, 1)
    append_log(log, {"step": 2})
    assert read_log(log) == [{"step": 0}, {"step": 1}, {"step": 2}]
    log.write_text('{"step": 0}\n{"step": 1}\n{"step": 2}')  # (and where the cut is elsewhere, as before)
    truncate_log(log, 0)
    assert log.read_text() == '{"step": 0}\n'

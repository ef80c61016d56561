"""benchmarks/fd_fidelity.py runs on any diffusers folder and its exports (here the tiny ones) and prints its table."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks import fd_fidelity  # noqa: E402


def test_fd_fidelity_prints_one_row_per_export(tiny_sd_folder, tiny_export, capsys):
    assert fd_fidelity.main([str(tiny_sd_folder), str(tiny_export)]) == 0
    rows = capsys.readouterr().out.strip().splitlines()
    assert rows[0].startswith("| export | recipe | fidelity | slope |") and len(rows) == 3
    cells = [c.strip() for c in rows[2].strip("|").split("|")]
    assert cells[1] == "w8a32" and float(cells[2]) >= 0.9  # the W8A32 export is smooth at mu

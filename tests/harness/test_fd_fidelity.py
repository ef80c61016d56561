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
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "seed 123, 48 directions"  # the sample tests/integration/test_fidelity.py checks
    rows = [line for line in lines if line.startswith("|")]
    assert rows[0].startswith("| export | recipe | mu | fidelity | slope |") and len(rows) == 3
    cells = [c.strip() for c in rows[2].strip("|").split("|")]
    assert cells[1:3] == ["w8a32", "0.001"] and float(cells[3]) >= 0.9  # the W8A32 export is smooth at mu


def test_another_sample_of_more_directions_than_one_batch(tiny_sd_folder, tiny_export, capsys):
    assert fd_fidelity.main([str(tiny_sd_folder), str(tiny_export), "--seed", "5", "--directions", "60"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "seed 5, 60 directions"  # 48 + 12: two batches, each with its own L(v0)
    assert float(lines[-1].strip("|").split("|")[3]) >= 0.9


def test_the_smoothness_floor_one_row_per_mu(tiny_sd_folder, tiny_export, capsys):
    """Below the floor (zoodip.gradient_estimate.MU_MIN) float32 rounding takes the differences over."""
    assert fd_fidelity.main([str(tiny_sd_folder), str(tiny_export), "--directions", "16", "--mu", "1e-3", "1e-8"]) == 0
    rows = [line.strip("|").split("|") for line in capsys.readouterr().out.splitlines() if "| w8a32 |" in line]
    assert [row[2].strip() for row in rows] == ["0.001", "1e-08"]
    assert float(rows[0][3]) >= 0.9 and float(rows[1][3]) < 0.6


@pytest.mark.parametrize("flags, words", [(["--directions", "1"], "--directions >= 2"), (["--seed", "-1"], "--seed"),
                                          (["--mu", "0"], "--mu must be a finite number in (0, 1]")])
def test_bad_sample_flags_exit_2(tiny_sd_folder, tiny_export, flags, words, capsys):
    assert fd_fidelity.main([str(tiny_sd_folder), str(tiny_export), *flags]) == 2
    err = capsys.readouterr().err
    assert words in err and err.startswith("error: ") and err.count("\n") == 1

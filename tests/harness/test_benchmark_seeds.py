"""quality.py, problem_dimension.py and attribute_signal.py took --seed -1 and failed in numpy (a traceback) once
the model was loaded; now one line before any work."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))


@pytest.mark.parametrize("script", ["quality.py", "problem_dimension.py", "attribute_signal.py"])
def test_a_negative_seed_is_one_line_before_any_work(tmp_path, capsys, script):
    module = __import__(Path(script).stem)
    assert module.main(["--seed", "-1", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--seed" in err and "0" in err and not (tmp_path / "out").exists()


def test_quality_refuses_training_seeds_torch_cannot_take(tmp_path, capsys):
    """(--seed 2**64 reached torch.manual_seed inside the backprop contender: a traceback after the model was ready.)"""
    import quality

    for seed, seeds in ((2 ** 64, 1), (2 ** 64 - 1, 2)):
        assert quality.main(["--seed", str(seed), "--seeds", str(seeds), "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"--seed {seed}: give 0 to {2 ** 64 - seeds}" in err, err
    assert not (tmp_path / "out").exists()

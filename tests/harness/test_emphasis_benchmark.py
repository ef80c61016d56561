"""benchmarks/emphasis.py: the prompt variants it measures, and its refusal of a folder that is not a demo run.
(The measurement itself needs a make demo run: benchmarks/results/emphasis/.)"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

from emphasis import variants  # noqa: E402


def test_the_variants_weight_the_edit_word_or_the_token_in_a1111_syntax():
    got = variants("a photo of <striped-star> on a black background", "<striped-star>", "black")
    assert got == {"plain": "a photo of <striped-star> on a black background",
                   "edit x1.2": "a photo of <striped-star> on a (black:1.2) background",
                   "edit x1.4": "a photo of <striped-star> on a (black:1.4) background",
                   "edit x1.6": "a photo of <striped-star> on a (black:1.6) background",
                   "token x0.8": "a photo of (<striped-star>:0.8) on a black background"}
    assert variants("a photo of a red <x>", "<x>", "red")["edit x1.4"] == "a photo of a (red:1.4) <x>"


def test_a_folder_that_is_not_a_demo_run_is_one_line(tmp_path):
    run = subprocess.run([sys.executable, "benchmarks/emphasis.py", "--demo", str(tmp_path), "--out", str(tmp_path / "o")],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and run.stderr.count("\n") == 1 and "is not a make demo output folder" in run.stderr
    assert not (tmp_path / "o").exists()

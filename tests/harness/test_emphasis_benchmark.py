"""benchmarks/emphasis.py: the prompt variants it measures (its refusal of a folder that is not a demo run: test_demo_runs.py).
(The measurement itself needs a make demo run: benchmarks/results/emphasis/.)"""
from __future__ import annotations

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

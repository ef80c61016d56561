"""benchmarks/_quality_plot.py: axis ticks and a chart, also for curves that are flat up to float rounding."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks._quality_plot import _nice_ticks, line_panel  # noqa: E402


def test_ticks_are_round_steps_inside_the_range():
    assert _nice_ticks(0.0, 1.0) == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert _nice_ticks(0.7, 0.96) == pytest.approx([0.7, 0.8, 0.9])
    assert _nice_ticks(0.0, 4500.0) == pytest.approx([0.0, 1000.0, 2000.0, 3000.0, 4000.0])


def test_a_range_below_float_resolution_ends():
    # Two means of the same numbers summed in another order differ by an ulp; the old loop never left such a range.
    ticks = _nice_ticks(0.2625, 0.2625 + 1e-16)
    assert len(ticks) <= 22 and all(0.2625 - 1e-12 <= t <= 0.2625 + 1e-12 for t in ticks)


def test_a_chart_of_curves_flat_up_to_rounding():
    series = {"init": [(0.0, 0.2625), (900.0, 0.2625)], "ti-backprop": [(0.0, 0.2625), (900.0, 0.26250000000000007)]}
    image = line_panel("prompt_requested_acc", series)
    assert image.size == (520, 360)

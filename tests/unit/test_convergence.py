"""evaluation_trend: the end-of-run verdict on the evaluation loss."""
from __future__ import annotations

import numpy as np

from zoodip.convergence import evaluation_trend


def _history(values, every=50):
    return [(every * i, float(v)) for i, v in enumerate(values)]


def test_a_curve_that_levels_off_has_flattened():
    values = 1.0 - 0.3 * (1 - np.exp(-np.arange(21) / 3))  # most of the gain in the first few evaluations
    trend = evaluation_trend(_history(values))
    assert trend is not None and trend.flattened
    assert trend.recent_steps == 250 and 0 < trend.recent_gain < 0.1 * trend.total_gain
    assert "flattened" in trend.describe()


def test_a_curve_still_falling_steadily_has_not():
    trend = evaluation_trend(_history(1.0 - 0.01 * np.arange(21)))
    assert trend is not None and not trend.flattened
    assert abs(trend.recent_gain - 0.05) < 1e-9 and "(resume=True with a larger max_train_steps)" in trend.describe()
    # A schedule that follows the run's length refuses that resume: a new run is the advice then
    assert "(a longer run in a new output_dir" in trend.describe(resumable=False)


def test_ups_and_downs_above_the_plateau_do_not_count():
    rng = np.random.default_rng(0)
    values = np.r_[1.0, 0.8, 0.7, 0.65, 0.64, 0.64 + np.abs(0.05 * rng.standard_normal(16))]
    trend = evaluation_trend(_history(values))
    assert trend is not None and trend.flattened and trend.recent_gain == 0


def test_a_run_that_never_improved_has_not_flattened_and_short_histories_give_no_verdict():
    trend = evaluation_trend(_history([1.0, 1.1, 1.2, 1.05, 1.3]))
    assert trend is not None and not trend.flattened and trend.total_gain == 0
    assert evaluation_trend(_history([1.0, 0.9, 0.8])) is None
    assert evaluation_trend([]) is None


def test_the_flattened_verdict_claims_the_loss_only():
    """The verdict said 'more steps are unlikely to help' where the demo's images go on settling long after its
    evaluation loss flattens (flat by step 1600 of 4000; 2 of 5 seeds at the bar at 1500 steps, 5 at 4000)."""
    history = [(0, 1.0), (100, 0.8), (200, 0.7), (300, 0.7), (400, 0.7), (500, 0.7)]
    message = evaluation_trend(history).describe()
    assert message.startswith("the evaluation loss has flattened") and "unlikely to lower it" in message
    assert "unlikely to help" not in message and "images may still change" in message
    assert "validation_prompt" in message  # (a run that wrote previews is sent to them, not to the flag it used)
    assert "--validation_prompt" not in evaluation_trend(history).describe(previews=True)

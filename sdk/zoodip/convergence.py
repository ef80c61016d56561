"""Has the run flattened? A verdict on the evaluation-loss history, for the end-of-run message.

The evaluation loss (fixed photos, noises and timesteps) is deterministic in the embedding, but a
forward-only iterate wanders, so single evaluations go up and down. The verdict reads the running best
b_j = min(e_0..e_j) instead, which only falls:

    total gain   G = e_0 - b_m
    recent gain  R = b_{m-w} - b_m      (w: the evaluations of the last ``window`` fraction of the steps)
    flattened    iff  R <= tolerance * G

So "flattened" means the last quarter of the run (by default) bought less than a tenth of what the whole
run bought: more steps of the same kind are unlikely to lower the loss much. Not that the embedding is final:
on the reference world the images go on settling after the loss flattens (benchmarks/README.md, demo_seeds.py),
so the message says so. Too short a history gives no verdict.
"""
from __future__ import annotations

from dataclasses import dataclass

MIN_EVALUATIONS = 5  # e_0 and at least four more: fewer say nothing about a trend


@dataclass(frozen=True)
class Trend:
    flattened: bool
    total_gain: float  # G, relative to e_0
    recent_gain: float  # R, relative to e_0
    recent_steps: int  # the steps the recent window covers

    def describe(self, resumable: bool = True, previews: bool = False) -> str:
        """The verdict in one line; ``resumable``: whether a longer run can continue this one (a learning-rate
        schedule that follows the run's length cannot: its rates would change under the steps already taken);
        ``previews``: whether the run wrote preview images (then the images to judge are those)."""
        if self.flattened:
            judge = "in its previews" if previews else "e.g. with validation_prompt"
            return (f"the evaluation loss has flattened (the last {self.recent_steps} steps improved it by "
                    f"{self.recent_gain:.1%}, the whole run by {self.total_gain:.1%}): more steps are unlikely to "
                    f"lower it much (the images may still change: judge them, {judge})")
        return (f"the evaluation loss was still falling (the last {self.recent_steps} steps improved it by "
                f"{self.recent_gain:.1%} of {self.total_gain:.1%} in all): more steps may help "
                + ("(resume=True with a larger max_train_steps)" if resumable else
                   "(a longer run in a new output_dir: this lr_scheduler follows the run's length)"))


def evaluation_trend(history: list[tuple[int, float]], window: float = 0.25, tolerance: float = 0.1) -> Trend | None:
    """The verdict on ``history`` = [(step, eval loss), ...] from step 0; None if it is too short."""
    if len(history) < MIN_EVALUATIONS or history[0][1] <= 0:
        return None
    steps = [s for s, _ in history]
    best, running = [], float("inf")
    for _, value in history:
        running = min(running, value)
        best.append(running)
    first, last_step = history[0][1], steps[-1]
    start = last_step - window * (last_step - steps[0])
    # The last evaluation at or before the window's start (so the window holds at least one interval).
    j = max(i for i, s in enumerate(steps[:-1]) if s <= start)
    total, recent = (first - best[-1]) / first, (best[j] - best[-1]) / first
    flattened = total > 0 and recent <= tolerance * total
    return Trend(flattened, total, recent, last_step - steps[j])

"""What a personalization run reports while it runs (Progress) and when it ends (PersonalizeResult)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .convergence import Trend, evaluation_trend


def duration(seconds: float) -> str:
    """12.3 s, 4 min 05 s, 1 h 02 min: rounded for people."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    return f"{minutes // 60} h {minutes % 60:02d} min"


@dataclass(frozen=True)
class Progress:
    """What a progress callback receives after every step (and at evaluations and the end).

    Frozen: one event is handed to every callback and kept as ``PersonalizationJob.latest``, so that a callback that
    changed the one it got changed what the others and ``latest`` report (``dataclasses.replace`` makes a changed copy).
    """

    event: str  # "setup", "step", "eval", "validation", "done", "cancelled", "early-stopped"
    step: int
    total: int
    loss: float | None
    eval_loss: float | None
    kept_dims: int | None
    forwards: int  # UNet forward passes of this session (training + evaluation): a resumed run's start at 0
    elapsed_s: float
    forwards_per_s: float
    eta_s: float | None  # from the steps' own times and, once one is timed, the previews' (setup excluded)
    phase: str | None = None  # event "setup": what is being done before the first step
    path: str | None = None  # event "validation": the preview grid written


@dataclass
class PersonalizeResult:
    status: str  # "done", "cancelled" or "early-stopped"
    steps: int
    embedding_path: Path | None
    checkpoint_path: Path
    log_path: Path
    initial_eval_loss: float | None
    final_eval_loss: float | None
    best_eval_loss: float | None
    eval_history: list[tuple[int, float]] = field(default_factory=list)
    forwards: int = 0  # training UNet forwards of the whole run (all sessions)
    wall_s: float = 0.0  # this session, setup included
    start_step: int = 0  # the step this session began at: the checkpoint's on --resume, 0 for a fresh run

    @property
    def trend(self) -> Trend | None:
        """Whether the evaluation loss had flattened by the end (None: too few evaluations to tell)."""
        return evaluation_trend(self.eval_history)

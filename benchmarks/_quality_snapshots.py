"""What every method of the quality benchmark consumes (a Job) and produces (Snapshots of v along its run)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Job:
    """One personalization problem (JSON round-trippable)."""

    name: str
    photos: str  # folder of training photos
    placeholder: str
    initializer: str
    planted: list[float] | None = None  # optimization-only check: the target embedding v*
    attributes: dict[str, str] = field(default_factory=dict)
    seed: int | None = None  # training seed of this job (None: the run's --seed)

    def training_seed(self, run_seed: int) -> int:
        """This job's training seed (its photos, training noise and generation noise) in a run of ``--seed run_seed``."""
        return run_seed if self.seed is None else self.seed

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Job:
        return cls(**data)


@dataclass
class Snapshot:
    step: int
    forwards: int
    wall_s: float
    v: np.ndarray


def checkpoint_steps(total_steps: int, count: int) -> list[int]:
    """Steps at which to snapshot: ``count`` evenly spaced points ending at ``total_steps`` (plus 0)."""
    points = sorted({int(round(total_steps * k / count)) for k in range(1, count + 1)} | {0})
    return [p for p in points if 0 <= p <= total_steps]

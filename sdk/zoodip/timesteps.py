"""Partial Uniform Timestep Sampling (ZOODiP's PUTS): the timesteps a training step draws from."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import ZoodipError

PAPER_T_RANGE = (500, 900)  # ZOODiP's PUTS range of T = 1000: the SDK's default


@dataclass(frozen=True)
class PartialUniformTimesteps:
    """Partial Uniform Timestep Sampling (PUTS): timesteps uniform on ``[t_min, t_max)``.

    ZOODiP observes that the text condition matters most at intermediate-to-high noise levels: at
    low ``t`` the UNet mostly denoises from the image itself and the loss barely depends on the
    embedding, so those steps only add noise to a zeroth-order estimate. The paper samples
    ``[500, 900)`` of ``T = 1000``; :meth:`uniform` is the usual full range (the ablation).
    """

    t_min: int = PAPER_T_RANGE[0]
    t_max: int = PAPER_T_RANGE[1]
    num_train_timesteps: int = 1000

    def __post_init__(self) -> None:
        for name in ("t_min", "t_max", "num_train_timesteps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ZoodipError(f"timestep range: {name} must be an integer, got {value!r}")
        if not 0 <= self.t_min < self.t_max <= self.num_train_timesteps:
            raise ZoodipError(
                f"timestep range must satisfy 0 <= t_min < t_max <= {self.num_train_timesteps} "
                f"(num_train_timesteps), got t_min={self.t_min}, t_max={self.t_max}"
            )

    @classmethod
    def of_setting(cls, t_range: tuple[int, int], num_train_timesteps: int) -> PartialUniformTimesteps:
        """A run's ``t_range`` setting on a model with ``num_train_timesteps``: one line naming the setting where the
        range does not fit (the dataclass's own check names its fields, which the setting's user never typed)."""
        t_min, t_max = t_range
        if not 0 <= t_min < t_max <= num_train_timesteps:
            paper = tuple(t * num_train_timesteps // 1000 for t in PAPER_T_RANGE)  # (its range is of T = 1000)
            raise ZoodipError(f"t_range must satisfy 0 <= T_MIN < T_MAX <= {num_train_timesteps} (the model's "
                              f"num_train_timesteps), got ({t_min}, {t_max}): e.g. the paper's {paper}")
        return cls(t_min, t_max, num_train_timesteps)

    @classmethod
    def uniform(cls, num_train_timesteps: int = 1000) -> PartialUniformTimesteps:
        """Standard uniform sampling over all ``[0, T)`` timesteps."""
        return cls(0, num_train_timesteps, num_train_timesteps)

    def sample(self, rng: np.random.Generator, size: int | tuple[int, ...]) -> np.ndarray:
        """``size`` int64 timesteps, uniform on ``[t_min, t_max)``."""
        return rng.integers(self.t_min, self.t_max, size=size, dtype=np.int64)

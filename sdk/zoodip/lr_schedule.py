"""Learning-rate schedules with warmup, as diffusers' ``get_scheduler`` defines them.

The learning rate of optimizer step ``step`` (0-based, the number of steps already taken) is a pure
function of ``(step, base, kind, warmup, total)``: nothing is stored, so a run resumed from a
checkpoint at step k uses exactly the rates an uninterrupted run uses from step k on.

The formulas are diffusers' (``diffusers.optimization``), step for step, so ``--lr_scheduler``
and ``--lr_warmup_steps`` mean what a diffusers ``textual_inversion.py`` user expects. In particular,
as there, the first warmup step has rate 0, and ``constant`` ignores the warmup.
"""
from __future__ import annotations

import math

from .errors import ZoodipError

# The one list of schedule names (the CLI's choices and the config's check read it).
LR_SCHEDULERS: tuple[str, ...] = ("constant", "constant_with_warmup", "linear", "cosine")
# Schedules whose rate depends on the run length: resuming with another --max_train_steps changes them.
LENGTH_DEPENDENT: frozenset[str] = frozenset({"linear", "cosine"})


def lr_factor(step: int, kind: str, warmup: int, total: int) -> float:
    """The multiplier of the base learning rate at 0-based optimizer step ``step``.

    ``warmup`` steps rise linearly from 0; then ``constant_with_warmup`` stays at 1, ``linear``
    falls to 0 at ``total``, ``cosine`` follows half a cosine period down to 0 at ``total``.
    """
    if kind not in LR_SCHEDULERS:
        raise ZoodipError(f"lr_scheduler must be one of {', '.join(LR_SCHEDULERS)}, got {kind!r}")
    if kind == "constant":
        return 1.0
    if step < warmup:
        return step / max(1, warmup)
    if kind == "constant_with_warmup":
        return 1.0
    progress_steps = max(1, total - warmup)
    if kind == "linear":
        return max(0.0, (total - step) / progress_steps)
    progress = (step - warmup) / progress_steps  # cosine, diffusers' num_cycles = 0.5
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


def lr_at(step: int, base: float, kind: str = "constant", warmup: int = 0, total: int = 1) -> float:
    """The learning rate of 0-based optimizer step ``step``: ``base * lr_factor(...)``."""
    return float(base) * lr_factor(step, kind, warmup, total)

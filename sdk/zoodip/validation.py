"""Checks of user-facing hyperparameters and checkpoint state (a bad value raises ZoodipError)."""
from __future__ import annotations

import math

import numpy as np

from .errors import ZoodipError


def positive_int(name: str, value: object, minimum: int = 1, maximum: int | None = None, why: str = "") -> int:
    """``value`` as an int >= ``minimum`` and, where given, <= ``maximum``: a count a script's work grows with (steps,
    repetitions, draws, a side), capped where a slip (100000 for 1000) starts work that can only fail after minutes or
    exhaust the memory; ``why`` says in the refusal what the cap stands for."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ZoodipError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if maximum is not None and value > maximum:
        raise ZoodipError(f"{name} must be at most {maximum}{f' ({why})' if why else ''}, got {value!r}")
    return int(value)


def finite_float(name: str, value: object, *, low: float, high: float = math.inf,
                  low_open: bool = True, high_open: bool = False) -> float:
    """``value`` as a float inside the interval; ``low_open``/``high_open`` exclude the ends."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float, np.floating, np.integer))
    x = float(value) if ok else math.nan  # type: ignore[arg-type]
    if ok and math.isfinite(x):
        ok = (x > low if low_open else x >= low) and (x < high if high_open else x <= high)
    else:
        ok = False
    if not ok:
        if math.isinf(high):
            where = f"{'>' if low_open else '>='} {low:g}"
        else:
            where = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ZoodipError(f"{name} must be a finite number {where}, got {value!r}")
    return x


def as_vector(name: str, x: np.ndarray, dim: int) -> np.ndarray:
    x = np.asarray(x)
    if x.shape != (dim,):
        raise ValueError(f"{name} must have shape ({dim},), got {x.shape}")
    return x


def check_state_shape(what: str, key: str, array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    array = np.asarray(array)
    if array.shape != shape:
        raise ZoodipError(
            f"checkpoint {what} '{key}' has shape {array.shape}, expected {shape}; "
            "resume with the same model and settings the checkpoint was made with"
        )
    return array


def optional_path(name: str, value: object, kind: str = "file") -> None:
    """An optional path given as "" (an unset shell variable) refused in one line: it would read as not given, or as
    ``Path("")``, the current folder. ``name``: as the caller says it (the API's name, or the flag); ``kind``: what
    to name instead ("JSON file"). The one rule for every optional path, the API's and the command line's."""
    if isinstance(value, str) and not value.strip():
        raise ZoodipError(f"{name} is empty: name the {kind}, or drop {name}")

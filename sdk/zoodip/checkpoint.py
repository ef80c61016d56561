"""A run's checkpoint file: written atomically, read back with one clear line for each way it can be wrong.

What goes into the state is the trainer's (Personalizer.state_dict); this module only checks that a file
belongs to the run that wants to resume from it, and that its vectors fit the model.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from .errors import ZoodipError
from .paths import atomic_write_bytes, why_missing

CHECKPOINT_NAME = "checkpoint.npz"


def write_checkpoint(path: Path, state: dict[str, np.ndarray]) -> Path:
    """Write ``state`` to ``path`` atomically: an interrupted write leaves the previous checkpoint."""
    # The first checkpoint's failure ends a fresh run, whose folder is then removed: nothing to resume yet.
    then = "resume with resume=True" if path.exists() else "run again"
    atomic_write_bytes(path, lambda handle: np.savez(handle, **state), then)
    return path


def checkpoint_step(path: Path) -> int | None:
    """The step a checkpoint file holds; None when it cannot be read (missing, partial, not a checkpoint)."""
    try:
        with np.load(path, allow_pickle=False) as state:
            return int(state["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def check_checkpoint_file(path: Path) -> None:
    """Refuse a resume whose checkpoint is missing or is no file (before any work, and again as it is read)."""
    if path.exists() and not path.is_file():
        raise ZoodipError(f"checkpoint {path} is not a file: remove it and start again without resume=True")
    if not path.is_file():
        raise ZoodipError(f"nothing to resume: {path} {why_missing(path)} (run without resume=True to start)")


def read_checkpoint(path: Path, fingerprint: str | tuple[str, ...], photos_id: str, model_id: str,
                    vectors: tuple[int, int] | None = None,
                    changed: Callable[[], list[str]] | None = None) -> dict[str, np.ndarray]:
    """The arrays of the checkpoint at ``path``, refused unless it has the run's settings, photos and model.

    ``fingerprint``: the run's settings' fingerprint, or those a checkpoint of the same run may hold (older ones).

    ``vectors``: the run's (num_vectors, width); a checkpoint of another ``--num_vectors`` is refused
    naming that flag (the fingerprint differs too, but its message cannot say which setting did).
    ``changed``: where the settings differ, which ones (from what the run folder recorded), for the message.
    """
    check_checkpoint_file(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            state = {k: data[k] for k in data.files}
    except Exception as exc:  # numpy's own words would suggest loading it with pickles: never
        raise ZoodipError(f"checkpoint {path} is unreadable (damaged, or not a zoodip checkpoint: "
                          f"{type(exc).__name__}): delete it and start again without resume=True") from None
    # The model first: another model's width would make the vector count below meaningless.
    _check_identity(state, path, "model", model_id, "another export")
    if vectors is not None and "v" in state:
        _check_vector_count(state["v"], path, *vectors)
    if str(state.get("fingerprint")) not in ((fingerprint,) if isinstance(fingerprint, str) else fingerprint):
        names = changed() if changed is not None else []
        which = f" ({', '.join(names)} {'differ' if len(names) > 1 else 'differs'})" if names else ""
        raise ZoodipError(
            f"checkpoint {path} belongs to a run with other settings{which}: resume with the same settings, "
            "or use a new output_dir"
        )
    _check_identity(state, path, "photos", photos_id, "other photos (or captions)")
    problem = _number_problem(state) or _count_problem(state)
    if problem:
        raise ZoodipError(f"checkpoint {path} is damaged ({problem}): delete it and start again without resume=True")
    return state


# The counts a run's state holds (a damaged or edited file could make them fractional or negative), and the entries
# that are never negative (Adam's second moment). best_eval's NaN stands for "no evaluation yet".
_COUNTS = ("step", "train_forwards", "evals_without_improvement", "opt/steps", "sg/count", "sg/rank")
_MAX_COUNT = 10**12  # far past any run (a million steps is weeks of SD forwards), far below int64's end
_NON_NEGATIVE = ("opt/exp_avg_sq",)


def _number_problem(state: dict[str, np.ndarray]) -> str | None:
    """What makes the state's numbers impossible for a run to have written, or None: the trainer's own checks are
    of shapes, and a NaN resumed would surface steps later as a diverged loss or a failed SVD."""
    for key, value in state.items():
        array = np.asarray(value)
        if array.dtype.kind == "f" and not np.isfinite(array[~np.isnan(array)] if key == "best_eval" else array).all():
            return f"'{key}' holds values that are no finite numbers"
        if key in _COUNTS and (array.shape != () or array.dtype.kind not in "iu" or not 0 <= int(array) <= _MAX_COUNT):
            return f"'{key}' is {array.tolist()!r:.40}, not a count"
        if key == "sg/kept_dims" and (array.shape != () or array.dtype.kind not in "iu" or int(array) < -1):
            return f"'{key}' is {array.tolist()!r:.40}, not a count (or -1)"
        if key in _NON_NEGATIVE and array.dtype.kind == "f" and (array < 0).any():
            return f"'{key}' holds negative values, which it never does"
    return None


def _count_problem(state: dict[str, np.ndarray]) -> str | None:
    """Where the counts disagree as no run writes them (an edited file): each step is one optimizer step and one
    observation of Subspace Gradient's history, takes at least two forwards (L(v) and one direction), and is
    evaluated in order. Read after ``_number_problem``: every count is a whole number."""
    step = int(state["step"]) if "step" in state else None
    if step is None:
        return None
    for key in ("opt/steps", "sg/count"):
        if key in state and int(state[key]) != step:
            return f"'{key}' is {int(state[key])} at step {step}, and a run steps both together"
    if "train_forwards" in state and int(state["train_forwards"]) < 2 * step:
        return f"'train_forwards' is {int(state['train_forwards'])}, fewer than 2 per step over {step} steps"
    history = np.asarray(state.get("eval_history", np.zeros((0, 2))))
    if not history.size:  # (a run without evaluations may store it flat)
        return None
    if history.ndim != 2 or history.shape[1] != 2 or history.dtype.kind not in "fiu":
        return f"'eval_history' is {list(history.shape)} {history.dtype}, not [evaluations, 2] numbers"
    steps = history[:, 0]
    if np.any(steps != np.round(steps)) or np.any(np.diff(steps) < 0) or steps[0] < 0 or steps[-1] > step:
        return f"'eval_history' holds steps {steps.tolist()!r:.60}, not evaluations in order up to step {step}"
    if np.any(history[:, 1] < 0):
        return "'eval_history' holds negative losses, which a mean of squares never is"
    return None


def _check_identity(state: dict[str, np.ndarray], path: Path, key: str, mine: str, what: str) -> None:
    # Checkpoints written before these keys existed carry none; they resume as before.
    if key in state and str(state[key]) != mine:
        raise ZoodipError(f"checkpoint {path} belongs to a run with {what}: resume with the same "
                          "images=DIR and export_dir=DIR, or use a new output_dir")


def _check_vector_count(v: np.ndarray, path: Path, num_vectors: int, width: int) -> None:
    """Refuse a checkpoint whose flat embedding holds another number of width-wide vectors."""
    size = int(np.asarray(v).size)
    if width <= 0 or not size or size % width or size // width == num_vectors:
        return  # the right count, or a damaged vector, which loading the state reports
    held = size // width
    raise ZoodipError(f"checkpoint {path} holds {held} vector{'s' if held != 1 else ''} per token but this run asks "
                      f"for num_vectors={num_vectors}: resume with num_vectors={held}, or use a new output_dir")


def checkpoint_vector(state: dict[str, np.ndarray], key: str, dim: int) -> np.ndarray:
    """``state[key]`` as a float32 vector of length ``dim`` (num_vectors x width, flat); KeyError or ValueError
    where it is missing or wrong."""
    value = np.asarray(state[key])
    if value.shape != (dim,) or not np.issubdtype(value.dtype, np.floating):
        raise ValueError(f"'{key}' has shape {list(value.shape)} ({value.dtype}), this run needs [{dim}] floats")
    return value.astype(np.float32)

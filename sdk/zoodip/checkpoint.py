"""A run's checkpoint file: written atomically, read back with one clear line for each way it can be wrong.

What goes into the state is the trainer's (Personalizer.state_dict); this module only checks that a file
belongs to the run that wants to resume from it, and that its vectors fit the model.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import ZoodipError
from .paths import atomic_write_bytes

CHECKPOINT_NAME = "checkpoint.npz"


def write_checkpoint(path: Path, state: dict[str, np.ndarray]) -> Path:
    """Write ``state`` to ``path`` atomically: an interrupted write leaves the previous checkpoint."""
    atomic_write_bytes(path, lambda handle: np.savez(handle, **state))
    return path


def read_checkpoint(path: Path, fingerprint: str, photos_id: str, model_id: str) -> dict[str, np.ndarray]:
    """The arrays of the checkpoint at ``path``, refused unless it has the run's settings, photos and model."""
    if not path.is_file():
        raise ZoodipError(f"nothing to resume: {path} does not exist (run without --resume to start)")
    try:
        with np.load(path, allow_pickle=False) as data:
            state = {k: data[k] for k in data.files}
    except Exception as exc:
        raise ZoodipError(f"checkpoint {path} is unreadable ({exc}): delete it and start again without --resume") from None
    if str(state.get("fingerprint")) != fingerprint:
        raise ZoodipError(
            f"checkpoint {path} belongs to a run with other settings: resume with the same flags, "
            "or use a new --output_dir"
        )
    # Checkpoints written before these keys existed carry neither; they resume as before.
    for key, mine, what in (("photos", photos_id, "other photos (or captions)"), ("model", model_id, "another export")):
        if key in state and str(state[key]) != mine:
            raise ZoodipError(f"checkpoint {path} belongs to a run with {what}: resume with the same "
                              "--train_data_dir and --model, or use a new --output_dir")
    return state


def checkpoint_vector(state: dict[str, np.ndarray], key: str, dim: int) -> np.ndarray:
    """``state[key]`` as a float32 vector of width ``dim``; KeyError or ValueError where it is missing or wrong."""
    value = np.asarray(state[key])
    if value.shape != (dim,) or not np.issubdtype(value.dtype, np.floating):
        raise ValueError(f"'{key}' has shape {list(value.shape)} ({value.dtype}), this model needs [{dim}] floats")
    return value.astype(np.float32)

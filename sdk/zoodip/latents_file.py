"""Initial latents as .npy files: what ``generate --save-latents`` writes and ``--latents`` reads.

The same integer seed does not give diffusers' image (zoodip draws with NumPy, diffusers with torch), but
the same *initial latents* do: a pipeline that was given them follows the same sampler steps. So the
latents are the portable part of a seed. A file is judged by its header before its data is read, so a
huge or foreign file is refused without loading it.
"""
from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import numpy as np

from .errors import ZoodipError
from .paths import atomic_write_bytes, why_missing

NPY_MAGIC = b"\x93NUMPY"  # the first bytes of every .npy file (numpy.lib.format)


def load_latents(path: str | Path, shape: tuple[int, ...]) -> np.ndarray:
    """The float32 latents of ``path`` (a .npy file), which must have exactly ``shape`` and finite values."""
    path = Path(path)
    if not path.is_file():
        raise ZoodipError(f"--latents {path} {why_missing(path)}: pass a .npy file written by --save-latents "
                          "(or numpy.save of a [images, channels, height/8, width/8] float array)")
    try:
        with open(path, "rb") as handle:
            magic = handle.read(len(NPY_MAGIC))
    except OSError as exc:
        raise ZoodipError(f"--latents {path} cannot be read ({exc.strerror or exc}): check its permissions") from None
    if magic != NPY_MAGIC:  # else numpy guesses a pickle and suggests loading it unsafely
        raise ZoodipError(f"--latents {path} is not a .npy file (it does not start with numpy's header): "
                          "write it with numpy.save or --save-latents")
    try:
        data = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ZoodipError(f"--latents {path} is not a readable .npy array ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}): "
                          "write it with numpy.save or --save-latents") from None
    if not isinstance(data, np.ndarray) or not np.issubdtype(data.dtype, np.floating):
        raise ZoodipError(f"--latents {path} holds {getattr(data, 'dtype', type(data).__name__)}, not floats: "
                          "save a float32 array")
    if tuple(data.shape) != tuple(shape):
        raise ZoodipError(f"--latents {path} has shape {list(data.shape)}, this call needs {list(shape)} "
                          "([images, channels, height/8, width/8]): match --num-images, --height and --width to it")
    latents = np.array(data, dtype=np.float32)
    if not np.all(np.isfinite(latents)):
        raise ZoodipError(f"--latents {path} contains NaN or infinite values: write the file again")
    return latents


def write_latents(handle: BinaryIO, latents: np.ndarray) -> None:
    """``latents`` as a float32 .npy into the open binary file ``handle``."""
    np.save(handle, np.asarray(latents, np.float32), allow_pickle=False)


def save_latents(path: str | Path, latents: np.ndarray) -> Path:
    """Write ``latents`` to ``path`` (.npy) atomically."""
    path = Path(path)
    atomic_write_bytes(path, lambda handle: write_latents(handle, latents), "try again (or choose another file)")
    return path

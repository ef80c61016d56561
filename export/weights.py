"""Checks of a model's weights as torch holds them, before they are exported (a folder's, a single file's)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

from zoodip.errors import ZoodipError
from zoodip.paths import why_missing


def first_non_finite(tensors: Mapping[str, Any]) -> str | None:
    """The name of the first floating-point tensor holding NaN or infinity, else None: weights that quantization would
    turn into arbitrary codes while the export looked done."""
    import torch

    return next((name for name, tensor in tensors.items()
                 if tensor.is_floating_point() and not torch.isfinite(tensor).all()), None)


def load_checked(component: str, loader: Callable[[Path], Any], folder: Path) -> Any:
    """``loader(folder)``, its failures and non-finite weights each one line naming the folder (where it is a link
    into a staging folder, the folder it points to: the user's)."""
    from safetensors import SafetensorError

    shown = Path(folder).resolve()
    try:
        module = loader(folder)
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as exc:
        refused = _refused_pickle(exc)
        if refused is not None:  # torch's weights-only unpickler met a global: the file would run code if trusted
            raise ZoodipError(f"cannot load the {component}: a pickled weights file (.bin) in {shown} holds more than "
                              f"tensors ({refused}), which zoodip does not unpickle: it may run code; use the model's "
                              ".safetensors weights") from None
        weights = [path for path in Path(folder).iterdir() if path.suffix in (".safetensors", ".bin")]
        gone = next((path for path in weights if not path.exists()), None)
        if gone is not None and not any(path.exists() for path in weights):  # a link into a cache whose file is gone
            # (diffusers said it found no *.bin); beside a file that is there, the link is not what failed
            raise ZoodipError(f"cannot load the {component}: {shown / gone.name} {why_missing(gone)}: copy the "
                              "model's weights there again") from None
        if not weights:
            raise ZoodipError(f"cannot load the {component}: {shown} holds no weights file (.safetensors): copy the "
                              "model's weights there") from None
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ZoodipError(f"cannot load the {component} from {shown} ({first_line}): a weights file there may be "
                          "damaged or incomplete: copy it again") from None
    broken = first_non_finite(module.state_dict())
    if broken is not None:  # quantized, they would become arbitrary codes and the export would look done
        raise ZoodipError(f"the {component} in {shown} holds non-finite values (NaN or infinity) in {broken}: the "
                          "weights are damaged")
    return module


def _refused_pickle(exc: BaseException) -> str | None:
    """The line naming what the weights-only unpickler refused (a global such as ``posix.system``) in ``exc``'s chain
    (diffusers and transformers wrap it in their own errors), else None."""
    import pickle

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, pickle.UnpicklingError) and "Weights only load failed" in str(current):
            lines = [line.strip() for line in str(current).splitlines() if "global" in line.lower()]
            return (lines[-1] if lines else "Weights only load failed")[:120].rstrip(".")
        current = current.__cause__ or current.__context__
    return None

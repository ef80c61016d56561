"""Checks of a model's weights as torch holds them, before they are exported (a folder's, a single file's)."""
from __future__ import annotations

from typing import Any, Mapping


def first_non_finite(tensors: Mapping[str, Any]) -> str | None:
    """The name of the first floating-point tensor holding NaN or infinity, else None: weights that quantization would
    turn into arbitrary codes while the export looked done."""
    import torch

    return next((name for name, tensor in tensors.items()
                 if tensor.is_floating_point() and not torch.isfinite(tensor).all()), None)

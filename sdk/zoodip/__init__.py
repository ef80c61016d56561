"""zoodip: forward-only (zeroth-order) textual inversion for INT8 ONNX Stable Diffusion.

The runtime is NumPy + onnxruntime (+ Pillow). It never imports torch.
"""
from __future__ import annotations

from .errors import ZoodipError

__version__ = "0.1.0"

__all__ = ["ZoodipError", "__version__"]

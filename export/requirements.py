"""What the exporter needs beyond the SDK: pyproject.toml's ``export`` extra, by import name.

The wheel carries ``zoodip_export`` beside the SDK, so ``zoodip export`` is there in an install without the extra;
it is told in one line what is missing, before the first of them is imported (the exporter imports them lazily,
deep in the work, where a missing one was a traceback).
"""
from __future__ import annotations

import importlib.util

from zoodip.errors import ZoodipError

# The export extra's packages by the names they are imported as (tests/unit/test_packaging.py holds it to the extra).
REQUIRED_MODULES = ("torch", "diffusers", "transformers", "onnx", "safetensors")
INSTALL_HINT = "install the export extra: pip install '.[export]' in a zoodip clone (or 'make setup' there)"


def check_export_requirements() -> None:
    """Raise ``ZoodipError`` naming the export extra's packages that are not installed."""
    missing = [name for name in REQUIRED_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        raise ZoodipError(f"the export needs {', '.join(missing)}, not installed here: {INSTALL_HINT} "
                          "(the SDK itself does not need them)")

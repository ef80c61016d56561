"""JSON read from what a user hands over: text that may be anything, nested as deep as it likes."""
from __future__ import annotations

import json
from typing import Any


def parse_json(text: str | bytes) -> Any:
    """``json.loads(text)``, JSON nested past the parser's depth refused as any other text that is no JSON: a
    ValueError (the standard library raises RecursionError, which no reader of a damaged file expects)."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply to read") from None

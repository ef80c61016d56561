"""`zoodip demo` (what `make demo` runs), shortened: export of the built-in model, a few steps, the report."""
from __future__ import annotations

import json

import pytest

from zoodip import demo


@pytest.mark.skipif(not demo.reference_available(), reason="reference/ is not in this checkout")
def test_demo_on_the_reference_model_writes_its_report(tmp_path):
    summary = demo.run_demo(tmp_path, steps=6, threads=1, progress=False)
    assert summary["model"] == "reference" and summary["steps"] == 6
    assert (tmp_path / "before_after.png").is_file() and (tmp_path / "run" / "learned_embeds.safetensors").is_file()
    assert json.loads((tmp_path / "summary.json").read_text())["grid"] == summary["grid"]
    for name in ("before", "after"):
        accuracy = summary[f"concept_accuracy_{name}"]
        assert set(accuracy) == {"shape", "color", "background", "style", "size"}
        # All five right on an image implies each one right: the joint share is at most every attribute's.
        assert 0.0 <= summary[f"concept_all_five_{name}"] <= min(accuracy.values())

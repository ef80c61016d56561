"""benchmarks/prompt_editing.py: the edited captions, a whole run on the tiny export (its images are noise to the
evaluator: only the bookkeeping is checked) (its refusal of a folder that is not a demo run: test_demo_runs.py).
(The measurement itself needs a make demo run: benchmarks/results/prompt-editing/.)"""
from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

from prompt_editing import SWITCHES, edited_caption, edited_pairs, main, variants  # noqa: E402


def test_each_edit_names_the_caption_word_and_a_drawable_other():
    from reference import world
    from zoodip.prompt_schedule import prompt_schedule

    for attrs, seconds in edited_pairs(20):
        for name, second in seconds.items():
            assert second != getattr(attrs, name) and second in world.ATTRIBUTES[name]
        caption = world.caption(attrs)
        for variant, (name, construct) in variants().items():
            prompt = edited_caption(attrs, name, seconds[name], construct)
            other = caption.replace(f" {getattr(attrs, name)} ", f" {seconds[name]} ", 1)
            if construct == "AND":
                assert prompt == f"{caption} AND {other}", variant
                continue
            phases = prompt_schedule(prompt, 20)
            first, last = phases.at(0), phases.at(19)
            if variant.endswith(":1.0]"):
                assert first == last == caption, variant
            elif variant.endswith(":0.0]"):
                assert first == last == other, variant
            else:  # a switch, or alternation: the caption, then the other word
                assert first == caption and other in phases.values, variant
    assert len(variants()) == 2 * (len(SWITCHES) + 2)


def test_a_whole_run_on_the_tiny_export(tiny_export, tmp_path):
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "model").symlink_to(tiny_export)
    assert main(["--demo", str(tmp_path / "demo"), "--captions", "2", "--out", str(tmp_path / "out")]) == 0
    result = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [row["variant"] for row in result["rows"]] == list(variants())
    assert all(0 <= row["first"] + row["second"] <= 1 and row["first"] * row["second"] >= 0 for row in result["rows"])
    assert "| `color [first|second]` |" in (tmp_path / "out" / "results.md").read_text()

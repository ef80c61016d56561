"""benchmarks/long_prompts.py: the variants' chunk layout, a whole run on the tiny export (its images are noise to the
evaluator: only the bookkeeping is checked) (its refusal of a folder that is not a demo run: test_demo_runs.py).
(The measurement itself needs a make demo run: benchmarks/results/long-prompts/.)"""
from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

from long_prompts import FILLER, SHORT_FILLER, main, variants  # noqa: E402


def test_the_fillers_place_the_caption_where_the_variants_say(tiny_export):
    from zoodip.emphasis import CHUNK_TOKENS, chunked_token_ids
    from zoodip.model import ExportedModel

    tokenizer = ExportedModel.load(tiny_export).tokenizer
    assert len(tokenizer.encode(FILLER)) == CHUNK_TOKENS and len(tokenizer.encode(SHORT_FILLER)) == 30
    caption = "a small red star with stripes on a blue background"
    ids, _ = chunked_token_ids(tokenizer, variants(caption)["filler + caption, A1111's chunks"][0])
    assert np_equal(ids[1], tokenizer([caption])[0])  # the whole caption, alone in the second chunk
    ids, _ = chunked_token_ids(tokenizer, variants(caption)["short filler BREAK caption, A1111's chunks"][0])
    assert np_equal(ids[1], tokenizer([caption])[0])


def np_equal(a, b) -> bool:
    return list(map(int, a)) == list(map(int, b))


def test_a_whole_run_on_the_tiny_export(tiny_export, tmp_path):
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "model").symlink_to(tiny_export)
    assert main(["--demo", str(tmp_path / "demo"), "--captions", "2", "--out", str(tmp_path / "out")]) == 0
    result = json.loads((tmp_path / "out" / "results.json").read_text())
    chunks = {row["variant"]: row["chunks"] for row in result["rows"]}
    assert chunks == {name: [2] if "A1111's chunks" in name else [1] for name in variants("x")}
    assert all(0 <= row["mean"] <= 1 for row in result["rows"]) and result["filler_tokens"] == 75
    assert "| caption alone | 1 |" in (tmp_path / "out" / "results.md").read_text()

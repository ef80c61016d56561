"""benchmarks/text_free_prefix.py: the prefix it counts is the part of a UNet forward that reads no text."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

import text_free_prefix  # noqa: E402

from zoodip_export.tiny import tiny_configs  # noqa: E402


def _folder(tmp_path: Path, cross_attention_dim: int) -> Path:
    configs = tiny_configs()
    configs["unet"]["cross_attention_dim"] = cross_attention_dim
    for part in ("unet", "vae"):
        (tmp_path / part).mkdir(parents=True)
        (tmp_path / part / "config.json").write_text(json.dumps(configs[part]))
    return tmp_path


def test_the_prefix_reads_no_text_and_the_rest_does(tmp_path: Path) -> None:
    # A wider text changes every cross-attention's cost: the whole forward's count, never the prefix's.
    narrow, factor = text_free_prefix.load_unet(_folder(tmp_path / "a", 32))
    wide, _ = text_free_prefix.load_unet(_folder(tmp_path / "b", 256))
    resolution = factor * 2 ** (len(narrow.down_blocks) - 1) * 4
    a, b = text_free_prefix.count_flops(narrow, resolution, factor), text_free_prefix.count_flops(wide, resolution, factor)
    assert 0 < a["prefix"] < a["total"]
    assert a["prefix"] == b["prefix"] and b["total"] > a["total"]


def test_the_first_text_reader_is_the_first_cross_attention(tmp_path: Path) -> None:
    unet, _ = text_free_prefix.load_unet(_folder(tmp_path, 32))
    assert text_free_prefix.first_text_reader(unet) is unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2


def test_the_table_for_a_model_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = _folder(tmp_path, 32)
    unet, factor = text_free_prefix.load_unet(folder)
    side = factor * 2 ** (len(unet.down_blocks) - 1)
    assert text_free_prefix.main(["--model", str(folder), "--resolutions", f"{side},{2 * side}"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith(f"| {side} px") or
            line.startswith(f"| {2 * side} px")]
    assert len(rows) == 2
    assert text_free_prefix.main(["--model", str(folder), "--resolutions", str(side + 1)]) == 2

"""benchmarks/int4_gradient.py on the tiny model: one row per layer-group change, each with the cosine of
the fake-quantized gradient to the fp32 one."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks import int4_gradient  # noqa: E402


def test_rows_switch_one_group_each(tiny_sd_folder, tiny_w4_export, tmp_path, capsys):
    out = tmp_path / "rows.json"
    assert int4_gradient.main([str(tiny_sd_folder), str(tiny_w4_export), "--seeds", "123", "--json", str(out)]) == 0
    rows = {row["variant"]: row for row in json.loads(out.read_text())["rows"]}
    w8, own = rows["W8A32 (every layer int8)"], rows["the export's own widths"]
    assert w8["four_bit_weights"] == 0 and own["four_bit_weights"] > 0 and own["unet_bytes"] < w8["unet_bytes"]
    # The export keeps the text-reading keys and values int8, so their row makes them 4-bit: more 4-bit
    # weights, fewer bytes than the export's own widths.
    kv = rows["cross-attention keys and values (read the text): 4-bit"]
    assert kv["four_bit_weights"] > own["four_bit_weights"] and kv["unet_bytes"] < own["unet_bytes"]
    for row in rows.values():
        assert 0.9 < row["cosine"]["123"] <= 1.0 + 1e-9, row  # the tiny model's exports are smooth (as fd_fidelity)
    assert w8["cosine"]["123"] > own["cosine"]["123"]  # 4 bits bend the gradient more than 8
    table = capsys.readouterr().out
    assert "| UNet widths | 4-bit weights | UNet weight bytes | seed 123 |" in table


def test_an_export_without_widths_is_refused(tiny_sd_folder, tiny_export, capsys):
    assert int4_gradient.main([str(tiny_sd_folder), str(tiny_export)]) == 2
    err = capsys.readouterr().err
    assert "--recipe w4a32" in err and err.startswith("error: ") and err.count("\n") == 1

"""benchmarks/random_lora.py: a flag value that would write a meaningless LoRA (alpha nan or inf, or beyond
float16, which stores it) or never finish (a rank above the layers' widths, a seed torch cannot take) is refused in
one line, exit 2, with nothing written."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

import random_lora  # noqa: E402


@pytest.mark.parametrize("flags, named", [(["--alpha", "nan"], "--alpha"), (["--alpha", "inf"], "--alpha"),
                                          (["--alpha", "1e6"], "--alpha"), (["--alpha", "-1"], "--alpha"),
                                          (["--alpha", "1e-9"], "--alpha"),
                                          (["--rank", "0"], "--rank"), (["--rank", "1000000000"], "--rank"),
                                          (["--seed", "-1"], "--seed"), (["--seed", str(2 ** 70)], "--seed")])
def test_a_value_that_makes_no_lora_is_one_line(tiny_sd_folder, tmp_path, capsys, flags, named):
    out = tmp_path / "lora.safetensors"
    assert random_lora.main(["--source", str(tiny_sd_folder), "--out", str(out), *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and named in err and "Traceback" not in err
    assert not out.exists()


def test_the_default_settings_write_the_lora(tiny_sd_folder, tmp_path):
    out = tmp_path / "lora.safetensors"
    assert random_lora.main(["--source", str(tiny_sd_folder), "--out", str(out), "--rank", "2"]) == 0
    assert out.stat().st_size > 0

"""``zoodip generate --guidance-rescale`` (diffusers' ``guidance_rescale``; its arithmetic: test_samplers.py)."""
from __future__ import annotations

import numpy as np
from PIL import Image

from zoodip.cli import main


def test_the_flag_in_both_spellings_and_its_range(tiny_export, tmp_path, capsys):
    common = ["generate", "--model", str(tiny_export), "--prompt", "a red star", "--steps", "2", "--threads", "1"]
    for name, flags in (("plain", []), ("rescaled", ["--guidance-rescale", "0.7"]),
                        ("diffusers", ["--guidance_rescale", "0.7"])):
        assert main(common + flags + ["--out", str(tmp_path / f"{name}.png")]) == 0, capsys.readouterr().err
    images = {name: np.asarray(Image.open(tmp_path / f"{name}.png")) for name in ("plain", "rescaled", "diffusers")}
    assert np.array_equal(images["rescaled"], images["diffusers"])
    assert not np.array_equal(images["plain"], images["rescaled"])
    for bad in ("1.5", "-1", "nan"):
        assert main(common + ["--guidance-rescale", bad, "--out", str(tmp_path / "x.png")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "--guidance-rescale must be a number from 0 to 1" in err
    assert not (tmp_path / "x.png").exists()

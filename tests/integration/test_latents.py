"""generate --latents / --save-latents: the initial latents in and out, as diffusers' latents= argument."""
from __future__ import annotations

import numpy as np
import pytest

from PIL import Image

from cli_helpers import run_cli
from zoodip.image_parameters import read_parameters
from zoodip.generate import generate, initial_latents
from zoodip.model import ExportedModel


def _gen(export, out, *extra):
    return ["generate", "--model", export, "--prompt", "a photo of a star", "--steps", "2", "--threads", "1",
            "--out", out, *extra]


def test_saved_latents_reproduce_the_image_under_another_seed(tiny_export, tmp_path, capsys):
    saved = tmp_path / "noise.npy"
    code, _, err = run_cli(_gen(tiny_export, tmp_path / "a.png", "--seed", "5", "--save-latents", saved), capsys)
    assert code == 0, err
    model = ExportedModel.load(tiny_export)
    np.testing.assert_array_equal(np.load(saved), initial_latents(model, 5))
    code, _, err = run_cli(_gen(tiny_export, tmp_path / "b.png", "--seed", "9", "--latents", saved), capsys)
    assert code == 0, err
    pixels = {name: np.asarray(Image.open(tmp_path / name)) for name in ("a.png", "b.png")}
    assert np.array_equal(pixels["a.png"], pixels["b.png"])  # (their parameters differ: the seed, latents given)
    assert "Initial latents: given" in read_parameters(tmp_path / "b.png")
    code, _, err = run_cli(_gen(tiny_export, tmp_path / "c.png", "--seed", "9"), capsys)
    assert not np.array_equal(np.asarray(Image.open(tmp_path / "c.png")), pixels["a.png"])


def test_the_api_takes_latents_and_checks_them(tiny_export):
    model = ExportedModel.load(tiny_export)
    latents = initial_latents(model, 3, num_images=2)
    assert latents.shape == (2, model.latent_channels, model.default_resolution // 8, model.default_resolution // 8)
    a = generate(model, "a star", steps=2, seed=3, num_images=2)
    b = generate(model, "a star", steps=2, seed=0, num_images=2, latents=latents)
    assert [np.asarray(x).tobytes() for x in a] == [np.asarray(x).tobytes() for x in b]
    with pytest.raises(Exception, match="latents must be finite floats of shape"):
        generate(model, "a star", steps=2, latents=latents)  # one image asked, two given
    with pytest.raises(Exception, match=r"latents hold values up to \S+e\+30: initial latents are unit-variance noise"):
        generate(model, "a star", steps=2, num_images=2, latents=latents * np.float32(1e30))  # a flat gray image


@pytest.mark.parametrize("content,needle", [
    (None, "does not exist"),
    (b"not an npy file", "is not a .npy file"),
    (b"\x93NUMPY\x01\x00garbage", "not a readable .npy"),  # the header starts right, the rest is damaged
    ("objects", "not a readable .npy"),  # an object array: refused without unpickling
    (np.zeros((1, 4, 2, 2), np.float32), "has shape [1, 4, 2, 2]"),
    (np.zeros((1, 4, 4, 4), np.int64), "not floats"),
    ("nan", "NaN or infinite"),
])
def test_bad_latent_files_are_one_line_and_nothing_is_written(tiny_export, tmp_path, capsys, content, needle):
    path = tmp_path / "bad.npy"
    model = ExportedModel.load(tiny_export)
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str) and content == "objects":
        np.save(path, np.array([object()], dtype=object), allow_pickle=True)
    elif isinstance(content, str):
        bad = initial_latents(model, 0)
        bad[0, 0, 0, 0] = np.nan
        np.save(path, bad)
    elif content is not None:
        shape = content.shape if content.dtype != np.int64 else initial_latents(model, 0).shape
        np.save(path, content if content.dtype != np.int64 else np.zeros(shape, np.int64))
    code, _, err = run_cli(_gen(tiny_export, tmp_path / "x.png", "--latents", path), capsys)
    assert code == 2 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], err
    assert not (tmp_path / "x.png").exists()


def test_save_latents_must_be_a_writable_npy_before_any_work(tiny_export, tmp_path, capsys):
    code, _, err = run_cli(_gen(tiny_export, tmp_path / "x.png", "--save-latents", tmp_path / "noise.txt"), capsys)
    assert code == 2 and "must end in .npy" in err
    assert not (tmp_path / "x.png").exists()


def test_a_refused_generate_writes_no_latents(tiny_export, tmp_path, capsys):
    """--save-latents was written before generate() checked its settings: a call refused with status 2 still left
    (or replaced) the .npy. It is written once the images are made."""
    saved = tmp_path / "noise.npy"
    np.save(saved, np.ones(3, np.float32))  # a file of the user's, which a refused call must leave as it is
    for extra in (["--steps", "0"], ["--guidance-rescale", "2"], ["--hires-scale", "1.01"]):
        code, _, err = run_cli(_gen(tiny_export, tmp_path / "x.png", "--save-latents", saved, *extra), capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1, (extra, err)
        assert np.array_equal(np.load(saved), np.ones(3, np.float32)) and not (tmp_path / "x.png").exists(), extra
    assert run_cli(_gen(tiny_export, tmp_path / "x.png", "--save-latents", saved), capsys)[0] == 0
    assert np.load(saved).shape == initial_latents(ExportedModel.load(tiny_export), 0).shape

"""tools/pt_embedding_to_safetensors.py, the desktop converter for pickled embeddings: the layouts it reads, and one
line (exit 2) for every input it cannot use, without touching the input or an existing file."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from zoodip.embeddings import load_embedding_file  # noqa: E402

TOOL = Path(__file__).resolve().parents[2] / "tools" / "pt_embedding_to_safetensors.py"


def convert(*args):
    done = subprocess.run([sys.executable, str(TOOL), *map(str, args)], capture_output=True, text=True, timeout=120)
    return done.returncode, done.stdout, done.stderr


def test_the_three_layouts_convert_to_files_the_sdk_loads(tmp_path):
    vectors = torch.randn(2, 32)
    for name, data in (("diffusers", {"<my-dog>": vectors}), ("a1111", {"string_to_param": {"*": vectors}, "name": "x"}),
                       ("bare", vectors)):
        torch.save(data, tmp_path / f"{name}.pt")
        code, out, err = convert(tmp_path / f"{name}.pt", tmp_path / f"{name}.safetensors")
        assert code == 0 and err == "", err
        token, loaded = load_embedding_file(tmp_path / f"{name}.safetensors")
        assert np.array_equal(loaded, vectors.numpy()) and token == ("<my-dog>" if name == "diffusers" else f"<{name}>")


def test_every_unusable_input_is_one_line_and_nothing_is_overwritten(tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"<a>": torch.randn(1, 8)}, good)
    before = good.read_bytes()
    (tmp_path / "text.pt").write_text("not a pickle")
    torch.save({"string_to_param": {"x": torch.randn(1, 8)}}, tmp_path / "nostar.pt")
    torch.save({"a": torch.randn(1, 8), "b": torch.randn(1, 8)}, tmp_path / "two.pt")
    torch.save({"<a>": torch.ones(1, 8, dtype=torch.int64)}, tmp_path / "ints.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    (tmp_path / "exists.safetensors").write_bytes(b"keep")
    cases = [((tmp_path / "missing.pt", tmp_path / "o.safetensors"), "is not a file"),
             ((tmp_path / "text.pt", tmp_path / "o.safetensors"), "cannot read"),
             ((tmp_path / "nostar.pt", tmp_path / "o.safetensors"), "without a '*' tensor"),
             ((tmp_path / "two.pt", tmp_path / "o.safetensors"), "holds 2 tensors"),
             ((tmp_path / "ints.pt", tmp_path / "o.safetensors"), "torch.int64"),
             ((tmp_path / "list.pt", tmp_path / "o.safetensors"), "holds a list"),
             ((good, good), "NAME.safetensors"),
             ((good, tmp_path / "o.txt"), "NAME.safetensors"),
             ((good, tmp_path), "NAME.safetensors"),
             ((good, tmp_path / "exists.safetensors"), "exists"),
             ((good, tmp_path / "nowhere" / "o.safetensors"), "is not a folder"),
             ((good,), "usage")]
    for args, needle in cases:
        code, out, err = convert(*args)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], (args, err)
    assert good.read_bytes() == before and (tmp_path / "exists.safetensors").read_bytes() == b"keep"
    assert not (tmp_path / "o.safetensors").exists() and not list(tmp_path.glob(".*partial"))

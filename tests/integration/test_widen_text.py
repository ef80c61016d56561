"""reference/widen_text.py: an exactly equivalent copy of an SD folder with a wider text-embedding space."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from reference import widen_text  # noqa: E402
from zoodip.errors import ZoodipError  # noqa: E402


def test_widened_folder_predicts_the_same(tiny_sd_folder, tmp_path):
    from transformers import CLIPTextModel

    narrow = CLIPTextModel.from_pretrained(tiny_sd_folder / "text_encoder").config.hidden_size
    report = widen_text.widen(tiny_sd_folder, tmp_path / "wide", width=4 * narrow)
    assert report["unet_parity_rel_max"] < 1e-5  # the check inside widen() refuses anything above 1e-4
    wide = CLIPTextModel.from_pretrained(tmp_path / "wide" / "text_encoder")
    assert wide.config.hidden_size == 4 * narrow
    table = wide.text_model.embeddings.token_embedding.weight.detach().double()
    # Real tokens occupy a (narrow - 1)-dimensional subspace of the wide space.
    singular = torch.linalg.svdvals(table[:2000])
    assert (singular > 1e-6 * singular[0]).sum() == narrow - 1
    assert json.loads((tmp_path / "wide" / "widened.json").read_text())["width"] == 4 * narrow
    assert (tmp_path / "wide" / "vae").is_dir() and (tmp_path / "wide" / "tokenizer").is_dir()


def test_a_basis_that_is_not_centered_breaks_parity_and_writes_nothing(tiny_sd_folder, tmp_path, monkeypatch):
    def uncentered(narrow: int, wide: int, seed: int) -> torch.Tensor:
        q, _ = torch.linalg.qr(torch.randn(wide, narrow, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
        return q

    monkeypatch.setattr(widen_text, "embedding_basis", uncentered)
    with pytest.raises(ZoodipError, match="disagrees"):  # an error a caller can catch, not SystemExit
        widen_text.widen(tiny_sd_folder, tmp_path / "wide", width=128)
    assert not (tmp_path / "wide").exists()


@pytest.mark.parametrize("width", ["10", "770"])
def test_a_width_it_cannot_make_is_one_line_before_any_load(tiny_sd_folder, tmp_path, capsys, width):
    out = tmp_path / "wide"
    assert widen_text.main(["--src", str(tiny_sd_folder), "--out", str(out), "--width", width]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: --width {width}: must exceed") and not out.exists()


def test_the_api_refuses_a_width_it_cannot_make_with_an_error_a_caller_can_catch(tiny_sd_folder, tmp_path):
    """widen() ended the whole process (SystemExit) for a width it cannot make; a caller's ``except Exception`` missed it."""
    with pytest.raises(ZoodipError, match="width 10: must exceed"):
        widen_text.widen(tiny_sd_folder, tmp_path / "wide", width=10)
    assert not (tmp_path / "wide").exists()


def test_the_source_as_out_is_refused_and_kept(tiny_sd_folder, tmp_path, capsys):
    """--out equal to --src (``--out reference/model``) deleted the source after reading it, then failed."""
    before = sorted(p.relative_to(tiny_sd_folder) for p in tiny_sd_folder.rglob("*"))
    assert widen_text.main(["--src", str(tiny_sd_folder), "--out", str(tiny_sd_folder), "--width", "128"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: --out {tiny_sd_folder} is the source folder")
    assert sorted(p.relative_to(tiny_sd_folder) for p in tiny_sd_folder.rglob("*")) == before
    with pytest.raises(ZoodipError, match="is the source folder"):  # the API too: it replaces its destination
        widen_text.widen(tiny_sd_folder, tiny_sd_folder, width=128)


def test_an_existing_out_is_replaced_only_with_overwrite(tiny_sd_folder, tmp_path, capsys):
    """An existing folder as --out was deleted without a word, whatever it held."""
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep")
    assert widen_text.main(["--src", str(tiny_sd_folder), "--out", str(out), "--width", "128"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: --out {out} already exists: name a new folder, or add --overwrite")
    assert (out / "notes.txt").read_text() == "keep"


def test_out_through_a_link_replaces_its_target(tiny_sd_folder, tmp_path, capsys):
    """--out LINK --overwrite (a link to an older widened folder) was an OSError traceback after the whole widening
    (rmtree refuses links): the link's target is replaced, the link kept."""
    target = tmp_path / "old"
    target.mkdir()
    (target / "stale.txt").write_text("old")
    link = tmp_path / "link"
    link.symlink_to(target, target_is_directory=True)
    assert widen_text.main(["--src", str(tiny_sd_folder), "--out", str(link), "--width", "128", "--overwrite"]) == 0
    assert link.is_symlink() and (target / "widened.json").is_file() and not (target / "stale.txt").exists()

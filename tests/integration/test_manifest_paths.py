"""The manifest's paths as a hand edit or another writer spells them: "./x" and "d/../x" name the files they name;
a path through a link is compared as the file it opens, never taken for a listed file it only spells like."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from zoodip.errors import ZoodipError
from zoodip.model import ExportedModel


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny export without a curvature subspace (seconds; the shared fixture computes one)."""
    pytest.importorskip("torch")
    from zoodip_export.export_model import export_model

    folder = tmp_path_factory.mktemp("paths") / "export"
    export_model(None, folder, tiny=True, parity=False, progress=False, curvature_samples=0)
    return folder


def _edited(tiny_export: Path, tmp_path: Path, edit) -> Path:
    folder = shutil.copytree(tiny_export, tmp_path / "export")
    manifest = json.loads((folder / "manifest.json").read_text())
    edit(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def _respell(manifest: dict) -> None:
    manifest["graphs"]["unet"]["file"] = "./unet.onnx"
    manifest["graphs"]["vae_decoder"]["file"] = "tokenizer/../vae_decoder.onnx"
    manifest["files"]["./scheduler_config.json"] = manifest["files"].pop("scheduler_config.json")


def test_paths_written_otherwise_name_the_same_files(tiny_export: Path, tmp_path: Path) -> None:
    folder = _edited(tiny_export, tmp_path, _respell)  # each was refused: "does not list graphs.unet.file ..."
    model = ExportedModel.load(folder, verify_hashes=True)
    assert model.session("unet") is not None and model.session("vae_decoder") is not None


def test_a_respelled_graph_replaced_after_opening_is_still_caught(tiny_export: Path, tmp_path: Path) -> None:
    folder = _edited(tiny_export, tmp_path, _respell)
    model = ExportedModel.load(folder)
    data = (folder / "unet.onnx").read_bytes()
    (folder / "unet.onnx").write_bytes(data + b"\0")  # another file under the name (its check was skipped: "./")
    with pytest.raises(ZoodipError, match=r"changed since the model was opened \(\./unet\.onnx\)"):
        model.session("unet")


def test_a_path_through_a_link_is_the_file_it_opens(tiny_export: Path, tmp_path: Path) -> None:
    """'link/../scheduler_config.json' read sub/scheduler_config.json (where the link leads to sub/inner), a file no
    hash covers, as if it were the listed scheduler_config.json."""
    folder = _edited(tiny_export, tmp_path, lambda m: m.update(scheduler="link/../scheduler_config.json"))
    (folder / "sub" / "inner").mkdir(parents=True)
    (folder / "sub" / "scheduler_config.json").write_text(json.dumps({"prediction_type": "sample"}))
    os.symlink(Path("sub") / "inner", folder / "link")
    with pytest.raises(ZoodipError, match="does not list scheduler 'link/../scheduler_config.json' among its files"):
        ExportedModel.load(folder)


def test_an_export_link_repointed_after_opening_is_caught(tiny_export: Path, tmp_path: Path) -> None:
    """A model opened through a folder link ('current' -> v1) that is then pointed at another export (v2): its first
    session of a graph was made from v2's file without a word (the check looked up v2's resolved path, which the
    model never opened), mixing v2's UNet with v1's tokenizer and schedule."""
    first = shutil.copytree(tiny_export, tmp_path / "v1")
    second = shutil.copytree(tiny_export, tmp_path / "v2")  # (another export: other files, whatever they hold)
    os.symlink(first, tmp_path / "current")
    model = ExportedModel.load(tmp_path / "current")
    os.remove(tmp_path / "current")
    os.symlink(second, tmp_path / "current")
    with pytest.raises(ZoodipError, match=r"changed since the model was opened \(unet\.onnx\)"):
        model.session("unet")


def test_a_hand_added_entry_among_the_graphs_opens(tiny_export: Path, tmp_path: Path) -> None:
    """A manifest with a note among its graphs ("graphs": {..., "note": "..."}) opened with an AttributeError
    traceback (9efcfe4 walked every entry of graphs as a graph); only the SDK's graphs are its files."""
    folder = _edited(tiny_export, tmp_path, lambda manifest: manifest["graphs"].update(note="hand-added"))
    ExportedModel.load(folder).session("unet")

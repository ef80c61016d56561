"""The reports and models the reference and Android scripts write are written whole (a temp file beside, renamed in):
a Ctrl-C or a full disk in the middle left a torn file under the final name (or, for the evaluator's model, an
``.onnx.tmp`` beside it). Each write is interrupted here halfway, in this process."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
for folder in (REPO, REPO / "android_harness"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))


def _half_then_interrupt(data: bytes, stop: BaseException = KeyboardInterrupt()):
    """A writer that writes half its file, to a path or a handle, and is then interrupted (or fails: ``stop``)."""
    def write(target) -> None:
        handle = open(target, "wb") if isinstance(target, (str, Path)) else target
        handle.write(data)
        handle.flush()
        raise stop
    return write


def test_an_interrupted_evaluator_export_leaves_no_model_and_no_temp_file(tmp_path, monkeypatch, capsys):
    import torch

    from reference import train_evaluator

    write = _half_then_interrupt(b"half an onnx")
    monkeypatch.setattr(torch.onnx, "export", lambda net, args, f, **options: write(f))
    argv = ["--n-train", "4", "--n-test", "4", "--steps", "1", "--batch", "2", "--out", str(tmp_path / "eval.onnx")]
    assert train_evaluator.main(argv) == 130
    assert "interrupted: --out was not written" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_an_interrupted_generation_accuracy_report_leaves_no_torn_file(tmp_path, monkeypatch):
    from PIL import Image

    import zoodip.generate
    import zoodip.model
    from reference import eval_reference

    export, model = tmp_path / "export", tmp_path / "model"
    export.mkdir()
    (export / "manifest.json").write_text(json.dumps({"recipe": "w8a32"}))
    monkeypatch.setattr(eval_reference, "check_out_dir", lambda *args, **kwargs: None)
    monkeypatch.setattr(eval_reference, "_exported_from", lambda folder: model.resolve())
    monkeypatch.setattr(zoodip.model.ExportedModel, "load", lambda *args: None)
    monkeypatch.setattr(zoodip.generate, "generate", lambda *args, **kwargs: [Image.new("RGB", (32, 32))])

    class Reader:  # the evaluator's stand-in: every attribute right
        @classmethod
        def load(cls):
            return cls()

        def predict(self, images):
            return []

        def accuracy(self, images, targets):
            return {}
    monkeypatch.setattr(eval_reference, "Evaluator", Reader)
    monkeypatch.setattr(eval_reference, "attribute_accuracy", lambda predicted, targets: ({}, 1.0))
    write = _half_then_interrupt(b"\x89PNG half")
    monkeypatch.setattr(Image.Image, "save", lambda image, target, *args, **kwargs: write(target))
    out = tmp_path / "out"
    argv = ["--model", str(model), "--export", str(export), "--out", str(out), "--n", "8", "--steps", "1"]
    assert eval_reference.main(argv) == 130
    assert sorted(path.name for path in out.iterdir()) == ["generation_accuracy.json"]  # (written before the grid)
    assert json.loads((out / "generation_accuracy.json").read_text())["n"] == 8


def test_an_interrupted_arm_check_report_leaves_no_torn_json(tmp_path, monkeypatch):
    """The report was Path.write_text: a Ctrl-C in the middle of it (a stand-in here) left half of the JSON."""
    import arm_emulated

    for name, stand_in in (("check_cpu", lambda cpu: None), ("setup", lambda: None), ("status", lambda: (True, "")),
                           ("make_tiny_export", lambda work, recipe: work / "export"),
                           ("run_comparison", lambda *args, **kwargs: {"ok": True, "steps": [1.0] * 100}),
                           ("format_report", lambda report: "report")):
        monkeypatch.setattr(arm_emulated, name, stand_in)
    plain = _half_then_interrupt(b'{"ok": tr')
    monkeypatch.setattr(Path, "write_text", lambda path, text, *args, **kwargs: plain(path))
    report = tmp_path / "report.json"
    code = arm_emulated.main(["check", "--no-device", "--work", str(tmp_path / "work"), "--json", str(report)])
    assert code == 0 and json.loads(report.read_bytes())["ok"] is True


def test_an_interrupted_demo_benchmark_report_leaves_no_torn_file(tmp_path, monkeypatch):
    """emphasis.py, long_prompts.py and prompt_editing.py wrote results.json and results.md with Path.write_text."""
    from benchmarks import _demo_runs

    plain = _half_then_interrupt(b'{"rows": [', OSError(28, "No space left on device"))  # (a full disk's)
    monkeypatch.setattr(Path, "write_text", lambda path, text, *args, **kwargs: plain(path))
    _demo_runs.write_results(tmp_path / "out", "emphasis.py", ["--seeds", "2"], {"rows": []}, lambda command: command)
    assert json.loads((tmp_path / "out" / "results.json").read_text())["rows"] == []
    assert (tmp_path / "out" / "results.md").read_text().startswith("python benchmarks/emphasis.py")


def test_int4_gradient_checks_its_json_first_and_writes_it_whole(tmp_path, monkeypatch, capsys):
    """A folder as --json was an IsADirectoryError traceback after the whole measurement; the file a plain write."""
    from benchmarks import int4_gradient

    source = tmp_path / "source"
    source.mkdir()
    (source / "model_index.json").write_text("{}")
    measured = []
    monkeypatch.setattr(int4_gradient, "measure", lambda *args: measured.append(args) or [])
    assert int4_gradient.main([str(source), str(tmp_path / "export"), "--json", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith(f"error: --json {tmp_path} is a folder") and not measured
    plain = _half_then_interrupt(b'{"rows', OSError(28, "No space left on device"))
    monkeypatch.setattr(Path, "write_text", lambda path, text, *args, **kwargs: plain(path))
    assert int4_gradient.main([str(source), str(tmp_path / "export"), "--json", str(tmp_path / "rows.json")]) == 0
    assert json.loads((tmp_path / "rows.json").read_text())["rows"] == []

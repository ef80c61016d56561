"""benchmarks/threads.py: every thread setting measured quiet and busy, in its own process, on the tiny export."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

import threads  # noqa: E402


def test_each_setting_is_measured_quiet_and_busy(tiny_export, tmp_path):
    out = tmp_path / "out"
    assert threads.main(["--model", str(tiny_export), "--resolution", "32", "--forwards", "1", "--busy", "1",
                         "--out", str(out)]) == 0
    results = json.loads((out / "threads.json").read_text())
    assert set(results["settings"]) == set(threads.SETTINGS)
    for row in results["settings"].values():
        for case in ("quiet", "busy"):
            assert row[case]["s_per_forward"] > 0 and len(row[case]["times"]) == 1
    assert results["meta"]["busy"] == 1 and "--busy 1" in results["meta"]["command"]
    assert str(tmp_path) not in (out / "threads.md").read_text()
    assert "| 1 thread |" in (out / "threads.md").read_text()


@pytest.mark.parametrize("flags", [["--forwards", "0"], ["--busy", "0"], ["--resolution", "30"]])
def test_bad_settings_are_one_line_and_exit_2(flags, capsys):
    assert threads.main(flags) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")


def test_an_output_folder_that_cannot_be_one_is_refused_before_measuring(tiny_export, tmp_path, capsys, monkeypatch):
    """--out naming a file failed with FileExistsError after every measurement; '' wrote into the current folder."""
    (tmp_path / "afile").write_text("x")
    measured = []
    monkeypatch.setattr(threads, "measure", lambda *a: measured.append(a))
    for out, needle in ((tmp_path / "afile", "is an existing file"), ("", "--out is empty")):
        assert threads.main(["--model", str(tiny_export), "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and needle in err and "\n" not in err, err
    assert not measured


def test_the_table_rounds_each_number_to_its_forwards_spread():
    """Two fixed decimals showed a fast model's forwards as 0.00 (and their ratio from hidden digits), and a noisy
    setting's with digits its repeated forwards did not share."""
    meta = {"command": "python benchmarks/threads.py", "date": "d", "cpu": "c", "cores": 2, "model": "m",
            "resolution": 32, "forwards": 3, "busy": 1}

    def case(times):
        return {"s_per_forward": sorted(times)[len(times) // 2], "times": times}

    results = {"meta": meta, "settings": {
        "fast": {"quiet": case([0.00312, 0.00315, 0.00318]), "busy": case([0.00601, 0.00620, 0.00640])},
        "noisy": {"quiet": case([1.0, 1.4, 1.9]), "busy": case([2.0, 2.0, 2.0])},
    }}
    rows = {line.split(" | ")[0][2:]: line.split(" | ")[1:] for line in threads.markdown(results).splitlines()
            if line.startswith("| fast") or line.startswith("| noisy")}
    assert rows["fast"] == ["0.00315", "0.0062", "1.97 |"]
    assert rows["noisy"] == ["1.4", "2.00", "1.4 |"]  # 2.00: three identical forwards, three significant digits
    assert threads.rounded(0.6957, 0.0087) == "0.696" and threads.rounded(12.34, 3.0) == "12"


@pytest.mark.parametrize("manifest", [None, "{", "[]"])
def test_a_missing_or_damaged_model_is_one_line_naming_model_before_measuring(tmp_path, capsys, monkeypatch, manifest):
    """A bad --model failed inside the first measurement's process: 'the measurement with threads=0, spin=True
    failed: zoodip.errors.ZoodipError: ...' (its traceback's last line), never naming --model."""
    model = tmp_path / "model"
    if manifest is not None:
        model.mkdir()
        (model / "manifest.json").write_text(manifest)
    measured = []
    monkeypatch.setattr(threads, "measure", lambda *a: measured.append(a))
    assert threads.main(["--model", str(model), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --model: ") and "\n" not in err and "ZoodipError" not in err, err
    assert not measured and not (tmp_path / "out").exists()


def test_a_huge_busy_count_is_refused_before_starting_burners(tmp_path, capsys, monkeypatch):
    """--busy 100000 started a hundred thousand busy-looping processes."""
    monkeypatch.setattr(threads.subprocess, "Popen", lambda *a, **k: pytest.fail("a burner was started"))
    assert threads.main(["--busy", str(threads.MAX_BUSY + 1), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "--busy" in err and "\n" not in err, err

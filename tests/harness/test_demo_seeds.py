"""benchmarks/demo_seeds.py: the demo over training seeds, and backprop TI read the same way (shortened)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks import demo_seeds  # noqa: E402
from reference import demo  # noqa: E402
from zoodip.errors import ZoodipError  # noqa: E402


def test_seeds_are_a_range_or_a_list():
    assert demo_seeds.parse_seeds("0-4") == [0, 1, 2, 3, 4] and demo_seeds.parse_seeds("3,0") == [3, 0]
    for bad in ("a-b", "1-", "-1", "4-1", "0,,1", "", "1,1", "0-2,1"):
        with pytest.raises(ZoodipError, match="--seeds"):
            demo_seeds.parse_seeds(bad)


def test_an_unwritable_out_is_refused_before_any_run(tmp_path, capsys):
    assert demo_seeds.main(["--out", "/proc/zoodip-demo-seeds", "--work", str(tmp_path / "work")]) == 2
    assert capsys.readouterr().err.startswith("error: --out /proc/zoodip-demo-seeds cannot be created")
    assert not (tmp_path / "work").exists()


@pytest.mark.parametrize("flags", [["--seeds", "x"], ["--backprop", "0"], ["--backprop", "9", "--steps", "4"],
                                   ["--backprop", "9", "--threads", "1"], ["--save_steps", "-1"], ["--nope"],
                                   ["--clip-estimate", "0.5"], ["--backprop", "9", "--clip-estimate", "2"],
                                   ["--steps", "0"]])  # 0 ran the demo's own length before
def test_bad_flags_are_one_line_and_run_nothing(tmp_path, capsys, flags):
    assert demo_seeds.main(flags + ["--out", str(tmp_path / "out"), "--work", str(tmp_path / "work")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ")
    assert not (tmp_path / "out").exists() and not (tmp_path / "work").exists()


@pytest.mark.skipif(not demo.reference_available(), reason="reference/ is not in this checkout")
def test_backprop_rows_are_read_as_the_demo_reads_its_own(tmp_path, capsys):
    pytest.importorskip("torch")
    out = tmp_path / "out"
    assert demo_seeds.main(["--backprop", "3", "--seeds", "0", "--out", str(out), "--work", str(tmp_path / "work")]) == 0
    row = json.loads((out / "results.json").read_text())["rows"][0]
    assert row["method"] == "ti-backprop" and row["steps"] == 3 and row["seed"] == 0
    assert set(row["accuracy_after"]) == {"shape", "color", "background", "style", "size"}
    assert 0.0 <= row["all_five_after"] <= min(row["accuracy_after"].values())
    assert "backprop TI: " in (out / "results.md").read_text()


@pytest.mark.skipif(not demo.reference_available(), reason="reference/ is not in this checkout")
def test_demo_rows_read_the_runs_snapshots(tmp_path):
    out = tmp_path / "out"
    assert demo_seeds.main(["--steps", "4", "--save_steps", "2", "--seeds", "1", "--threads", "1", "--clip-estimate", "2",
                            "--out", str(out), "--work", str(tmp_path / "work")]) == 0
    assert json.loads((tmp_path / "work" / "run" / "config.json").read_text())["clip_estimate"] == 2.0  # passed through
    row = json.loads((out / "results.json").read_text())["rows"][0]
    assert row["seed"] == 1 and row["steps"] == 4 and [s["step"] for s in row["snapshots"]] == [2, 4]
    # The last snapshot is the final embedding, read the same way: the same figures as the row's.
    assert row["snapshots"][-1]["mean_accuracy_after"] == row["mean_accuracy_after"]
    assert row["snapshots"][-1]["all_five_after"] == row["all_five_after"]
    assert "- seed 1: 2: " in (out / "results.md").read_text()


def _row(seed: int, snapshots: list[tuple[int, float, float]]) -> dict:
    return {"seed": seed, "steps": snapshots[-1][0], "wall_s": 1.0, "mean_accuracy_before": 0.35,
            "mean_accuracy_after": snapshots[-1][1], "all_five_after": snapshots[-1][2],
            "snapshots": [{"step": step, "mean_accuracy_after": m, "all_five_after": a} for step, m, a in snapshots]}


def test_the_bar_and_the_budgets_that_meet_it_on_every_seed():
    assert demo_seeds.at_bar(0.85, 0.5) and not demo_seeds.at_bar(0.849, 1.0) and not demo_seeds.at_bar(1.0, 0.49)
    rows = [_row(0, [(500, 0.6, 0.0), (1000, 0.9, 0.5)]), _row(1, [(500, 0.9, 0.75), (1000, 0.85, 0.375)]),
            _row(2, [(1000, 0.95, 0.875)])]  # a run without the 500-step snapshot: that budget is not on every seed
    assert demo_seeds.budgets_at_bar(rows) == [{"steps": 1000, "seeds": 3, "at_bar": 2, "lowest_mean_accuracy": 0.85,
                                                "lowest_all_five": 0.375}]
    plain = [{"seed": s, "steps": 900, "mean_accuracy_after": m, "all_five_after": a}
             for s, (m, a) in enumerate([(0.9, 0.62), (0.8, 0.12)])]  # backprop rows: the final embedding only
    assert demo_seeds.budgets_at_bar(plain)[0]["at_bar"] == 1


def test_merge_joins_runs_of_disjoint_seeds(tmp_path):
    for name, rows in (("a", [_row(2, [(500, 0.9, 0.5)]), _row(0, [(500, 0.9, 0.75)])]), ("b", [_row(1, [(500, 0.7, 0.0)])])):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps({"command": f"run {name}", "rows": rows}))
    out = tmp_path / "out"
    assert demo_seeds.main(["--merge", str(tmp_path / "a"), str(tmp_path / "b" / "results.json"), "--out", str(out)]) == 0
    merged = json.loads((out / "results.json").read_text())
    assert [r["seed"] for r in merged["rows"]] == [0, 1, 2] and merged["parts"] == ["run a", "run b"]
    report = (out / "results.md").read_text()
    assert "    run a\n    run b\n" in report and "| 500 | 2 of 3 | 0.70 | 0.00 |" in report


@pytest.mark.parametrize("case", ["same seed twice", "not a results folder", "rows without seeds", "with a run flag",
                                  "other settings"])
def test_merge_refusals_are_one_line_and_write_nothing(tmp_path, capsys, case):
    part = tmp_path / "a"
    part.mkdir()
    (part / "results.json").write_text(json.dumps({"command": "run a", "rows": [_row(0, [(500, 0.9, 0.75)])]}))
    (tmp_path / "other.json").write_text(json.dumps({"rows": [{"steps": 4}]}))
    (tmp_path / "faster.json").write_text(json.dumps({  # another rate: one tally of the two measured nothing
        "command": "python benchmarks/demo_seeds.py --seeds 1 --learning_rate 0.02 --threads 1",
        "rows": [_row(1, [(500, 0.9, 0.75)])]}))
    flags = {"same seed twice": ["--merge", str(part), str(part)],
             "not a results folder": ["--merge", str(part), str(tmp_path)],
             "rows without seeds": ["--merge", str(part), str(tmp_path / "other.json")],
             "with a run flag": ["--merge", str(part), "--steps", "100"],
             "other settings": ["--merge", str(part), str(tmp_path / "faster.json")]}[case]
    assert demo_seeds.main(flags + ["--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ") and "--merge" in err
    assert not (tmp_path / "out").exists()

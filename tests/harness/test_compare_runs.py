"""benchmarks/compare_runs.py: the paired difference of one method between two quality runs."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

import compare_runs  # noqa: E402


def _run(values: dict[str, float], task: str = "world") -> dict:
    metrics = ("concept_fidelity", "attribute_acc", "prompt_fidelity", "prompt_requested_acc", "prompt_joint_acc")
    return {"task": task, "methods": {"zoodip": {"runs": {
        job: [{"step": 0, **{m: 0.0 for m in metrics}}, {"step": 10, **{m: value for m in metrics}}]
        for job, value in values.items()}}}}


def test_the_difference_and_its_interval(tmp_path: Path, capsys) -> None:
    rng = np.random.default_rng(0)
    base = {f"job{i}": float(v) for i, v in enumerate(rng.uniform(0.5, 0.9, 12))}
    shifted = {job: value + 0.05 for job, value in base.items()}
    shifted["only-in-a"] = 1.0  # a job one run lacks is left out
    paths = [tmp_path / "a.json", tmp_path / "b.json"]
    for path, run in zip(paths, (_run(shifted), _run(base))):
        path.write_text(json.dumps(run))
    assert compare_runs.main([str(p) for p in paths]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| concept_fidelity")]
    # A constant shift: the paired difference is exactly it, with no spread (the jobs' spread cancels).
    assert rows == [f"| concept_fidelity | {np.mean(list(base.values())) + 0.05:.3f} | {np.mean(list(base.values())):.3f} "
                    "| +0.050 [+0.050, +0.050] | 12 |"]


def test_mismatched_runs_are_refused_in_one_line(tmp_path: Path, capsys) -> None:
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(_run({"x": 0.5})))
    b.write_text(json.dumps(_run({"y": 0.5})))
    assert compare_runs.main([str(a), str(b)]) == 2
    assert capsys.readouterr().err.strip() == "error: the runs share no job: compare runs of the same jobs"
    assert compare_runs.main([str(a), str(b), "--method", "nope"]) == 2
    assert "method 'nope' is not in run A: pick one of zoodip with --method" in capsys.readouterr().err
    assert compare_runs.main([str(a), str(b), "--method-b", "nope"]) == 2
    assert "method 'nope' is not in run B" in capsys.readouterr().err


def test_a_variant_against_the_method_it_varies(tmp_path: Path, capsys) -> None:
    variant = _run({"x": 0.8, "y": 0.6})
    variant["methods"] = {"default[n=8]": variant["methods"]["zoodip"]}
    paths = [tmp_path / "a.json", tmp_path / "b.json"]
    for path, run in zip(paths, (variant, _run({"x": 0.7, "y": 0.5}))):
        path.write_text(json.dumps(run))
    assert compare_runs.main([str(p) for p in paths] + ["--method", "default[n=8]", "--method-b", "zoodip"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| prompt_fidelity"))
    assert row.endswith("| +0.100 [+0.100, +0.100] | 2 |")


def test_a_one_seed_run_pairs_with_that_seed_of_a_several_seed_run(tmp_path: Path, capsys) -> None:
    # quality.py names a job "star" in a one-seed run and "star-s0", "star-s1" in a run over seeds 0-1.
    one = _run({"star": 0.7, "moon": 0.6}) | {"meta": {"seed": 1, "seeds": 1}}
    several = _run({"star-s0": 0.1, "moon-s0": 0.1, "star-s1": 0.5, "moon-s1": 0.5}) | {
        "meta": {"seed": 0, "seeds": 2, "concept_refs": "job-photos"}}  # seed 1's jobs scored against seed 1's photos
    paths = [tmp_path / "one.json", tmp_path / "several.json"]
    for path, run in zip(paths, (one, several)):
        path.write_text(json.dumps(run))
    assert compare_runs.main([str(p) for p in paths]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| concept_fidelity"))
    assert row.endswith("| +0.150 [+0.100, +0.200] | 2 |")  # paired with seed 1's jobs, not seed 0's


def test_unreadable_or_foreign_files_are_one_line(tmp_path: Path, capsys) -> None:
    good = tmp_path / "good.json"
    good.write_text(json.dumps(_run({"x": 0.5})))
    damaged = {"missing.json": None, "text.json": "not json {", "list.json": "[1, 2]",
               "inside.json": json.dumps({"task": "world", "methods": {"zoodip": {"runs": {"x": []}}}})}
    for name, text in damaged.items():
        if text is not None:
            (tmp_path / name).write_text(text)
        assert compare_runs.main([str(tmp_path / name), str(good)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and "results.json" in err[0], (name, err)


def test_concept_fidelity_is_left_out_where_the_runs_scored_other_photos(tmp_path: Path, capsys) -> None:
    # Multi-seed runs made before meta.concept_refs scored each seed's job against the run's first seed's photos.
    values = {"a-s1": 0.6, "a-s2": 0.7}
    a = {**_run(values), "meta": {"seed": 0, "seeds": 3}}
    b = {**_run(values), "meta": {"seed": 1, "seeds": 2}}
    paths = [tmp_path / "a.json", tmp_path / "b.json"]
    for path, run in zip(paths, (a, b)):
        path.write_text(json.dumps(run))
    assert compare_runs.main([str(p) for p in paths]) == 0
    out = capsys.readouterr().out
    assert "| concept_fidelity" not in out and "| prompt_fidelity" in out
    assert "concept_fidelity left out: the runs scored a-s1, a-s2 against other training seeds' photos" in out
    b["meta"]["concept_refs"] = a["meta"]["concept_refs"] = "job-photos"  # both scored each job against its own
    for path, run in zip(paths, (a, b)):
        path.write_text(json.dumps(run))
    assert compare_runs.main([str(p) for p in paths]) == 0
    assert "| concept_fidelity" in capsys.readouterr().out


def test_jobs_generated_from_other_noise_are_named(tmp_path: Path, capsys) -> None:
    # A multi-seed run before meta.generation_seeds drew its seed-1 job's images from seed 0's noise; a one-seed
    # --seed 1 run from seed 1's: still a paired bootstrap over jobs, and the output says which jobs differ.
    one = _run({"star": 0.7}) | {"meta": {"seed": 1, "seeds": 1}}
    several = _run({"star-s0": 0.1, "star-s1": 0.5}) | {"meta": {"seed": 0, "seeds": 2, "concept_refs": "job-photos"}}
    paths = [tmp_path / "one.json", tmp_path / "several.json"]
    for path, run in zip(paths, (one, several)):
        path.write_text(json.dumps(run))
    assert compare_runs.main([str(p) for p in paths]) == 0
    assert "1 of 1 jobs' images were generated from other noise in the two runs (star-s1)" in capsys.readouterr().out
    several["meta"]["generation_seeds"] = "job-seed"  # each job from its own seed's noise, as quality.py now draws
    paths[1].write_text(json.dumps(several))
    assert compare_runs.main([str(p) for p in paths]) == 0
    assert "other noise" not in capsys.readouterr().out


def test_at_compares_each_runs_last_checkpoint_within_a_budget(tmp_path: Path, capsys) -> None:
    def curve(forwards: list[int], values: dict[str, list[float]]) -> dict:
        return {"task": "world", "methods": {"zoodip": {"runs": {
            job: [{"step": f, "forwards": f, "concept_fidelity": v, "prompt_fidelity": v} for f, v in zip(forwards, vs)]
            for job, vs in values.items()}}}}

    a = curve([0, 1500, 3000], {"x": [0.5, 0.7, 0.9], "y": [0.5, 0.6, 0.8]})  # checkpoints at other budgets than B's
    b = curve([0, 900, 1800, 2700, 3600], {"x": [0.5, 0.6, 0.65, 0.7, 0.99], "y": [0.5, 0.55, 0.6, 0.6, 0.99]})
    paths = [tmp_path / "a.json", tmp_path / "b.json"]
    for path, run in zip(paths, (a, b)):
        path.write_text(json.dumps(run))
    assert compare_runs.main([str(p) for p in paths] + ["--at", "3000"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("| concept_fidelity"))
    assert row == "| concept_fidelity | 0.850 | 0.650 | +0.200 [+0.200, +0.200] | 2 |"  # A at 3000 against B at 2700
    assert "compared at A: 3000 forwards; B: 2700 forwards" in out
    assert compare_runs.main([str(p) for p in paths]) == 0  # without --at: the ends (3000 against 3600)
    assert "| concept_fidelity | 0.850 | 0.990 |" in capsys.readouterr().out
    assert compare_runs.main([str(p) for p in paths] + ["--at", "-1"]) == 2
    assert capsys.readouterr().err.strip() == "error: --at must be a number of forwards >= 0, got -1"
    paths[0].write_text(json.dumps(curve([1500, 3000], {"x": [0.7, 0.9], "y": [0.6, 0.8]})))  # no step-0 record
    assert compare_runs.main([str(p) for p in paths] + ["--at", "1000"]) == 2
    assert "run A has no checkpoint of x within 1000 forwards (its first is at 1500): give a larger --at" in capsys.readouterr().err


def test_by_concept_shows_the_concept_a_mean_hides(tmp_path: Path, capsys) -> None:
    # Two concepts over two seeds each: A costs "hard" 0.2 and gives "easy" 0.2, a mean difference of 0.
    a = _run({"easy-s0": 0.9, "easy-s1": 0.9, "hard-s0": 0.5, "hard-s1": 0.7})
    b = _run({"easy-s0": 0.7, "easy-s1": 0.7, "hard-s0": 0.7, "hard-s1": 0.9})
    paths = [tmp_path / "a.json", tmp_path / "b.json"]
    for path, run in zip(paths, (a, b)):
        path.write_text(json.dumps(run))
    assert compare_runs.main([str(p) for p in paths]) == 0
    assert "| concept |" not in capsys.readouterr().out  # only on request
    assert compare_runs.main([str(p) for p in paths] + ["--by-concept"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert next(line for line in out if line.startswith("| prompt_fidelity")).split("|")[4].strip().startswith("+0.000")
    rows = {line.split("|")[1].strip(): line for line in out if line.startswith(("| easy ", "| hard "))}
    assert rows["easy"].startswith("| easy | 2 | 0.900 / 0.700 (+0.200) |")
    assert rows["hard"].startswith("| hard | 2 | 0.600 / 0.800 (-0.200) |")


def test_a_method_whose_records_are_damaged_is_not_said_to_be_missing(tmp_path: Path, capsys) -> None:
    """A run holding 'zoodip' without its 'runs' was refused as "method 'zoodip' is not in run A: pick one of zoodip"."""
    good, damaged = tmp_path / "good.json", tmp_path / "damaged.json"
    good.write_text(json.dumps(_run({"x": 0.5})))
    damaged.write_text(json.dumps({"task": "world", "methods": {"zoodip": {"jobs": [{"x": 1}]}}}))
    for pair in ([damaged, good], [good, damaged]):
        assert compare_runs.main([str(path) for path in pair]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "not in run" not in err[0] and "records quality.py writes" in err[0], err

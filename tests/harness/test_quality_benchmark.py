"""The quality benchmark (benchmarks/quality.py): its smoke mode on the tiny random model, and its helpers.

The full benchmark needs reference/model and reference/evaluator.py; here the planted-embedding check
(no evaluator) runs every method for a few steps, and the world task's scoring runs with a stand-in
evaluator, so neither needs the reference model.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import _quality_methods as qm  # noqa: E402
from benchmarks import _quality_merge, quality  # noqa: E402


def test_parse_method_training_resolution():
    low = qm.parse_method("default[res=16]")
    assert low.res == 16 and low.describe()["training_resolution"] == 16
    assert "training_resolution" not in qm.parse_method("default").describe()
    job = qm.Job(name="j", photos="p", placeholder="<j>", initializer="dog")
    assert qm._zo_config(low, job, Path("e"), Path("o"), steps=3, seed=0, num_train_timesteps=1000).resolution == 16
    assert qm._zo_config(qm.parse_method("default"), job, Path("e"), Path("o"), steps=3, seed=0,
                         num_train_timesteps=1000).resolution is None
    assert qm.parse_method("ti-backprop[res=16]").res == 16
    for bad in ("default[res=0]", "ti-backprop[res=20]", "init[res=16]"):
        with pytest.raises(ValueError, match="res=PX"):
            qm.parse_method(bad)


def test_parse_method_names_a_setting_that_is_not_a_number():
    for bad, words in (("zoodip[tau=abc]", "tau='abc' is not a whole number"), ("zoodip[lr=fast]", "lr='fast' is not a number"),
                       ("default[n=2.5]", "n='2.5' is not a whole number")):
        with pytest.raises(ValueError, match=re.escape(words)):
            qm.parse_method(bad)


def test_parse_method_variants():
    spec = qm.parse_method("zoodip[t=300-700,tau=64,lr=0.02]")
    assert spec.kind == "zo" and spec.subspace and spec.t_range == (300, 700) and spec.tau == 64 and spec.lr == 0.02
    assert qm.parse_method("zo-naive").t_range is None and not qm.parse_method("zo-naive").subspace
    for bad in ("zoodip[t=900-300]", "zoodip[t=0-2000]", "zoodip[t=abc]", "zoodip[t=5]"):  # refused now, not per job
        with pytest.raises(ValueError, match="give a timestep range LOW-HIGH with 0 <= LOW < HIGH <= 1000"):
            qm.parse_method(bad)
    assert qm.parse_method("zo-puts", puts=(200, 800)).t_range == (200, 800)
    assert qm.parse_method("es[pop=16]").forwards_per_step == 16
    assert qm.parse_method("ti-backprop").forwards_per_step == 1
    vocab = qm.parse_method("zo-puts[vocab=0.95]")
    assert vocab.vocab == 0.95 and vocab.describe()["vocabulary_variance"] == 0.95
    assert "vocabulary_variance" not in qm.parse_method("zo-puts").describe()
    config = qm._zo_config(vocab, qm.Job(name="j", photos="p", placeholder="<j>", initializer="dog"),
                           Path("e"), Path("o"), steps=3, seed=0, num_train_timesteps=1000)
    assert config.vocabulary_variance == 0.95 and config.t_range == (500, 900)
    assert config.adam_state_dtype == "float64" and "adam_state_dtype" not in vocab.describe()
    paper16 = qm.parse_method("zoodip[tau=16,adam16=1]")
    assert paper16.adam_state == "float16" and paper16.describe()["adam_state_dtype"] == "float16"
    assert qm._zo_config(paper16, qm.Job(name="j", photos="p", placeholder="<j>", initializer="dog"), Path("e"),
                         Path("o"), steps=3, seed=0, num_train_timesteps=1000).adam_state_dtype == "float16"
    assert qm.parse_method("zoodip[adam16=0]").adam_state == "float64"
    eps = qm.parse_method("default[eps=1e-4]")
    assert eps.adam_eps == 1e-4 and eps.describe()["adam_eps"] == 1e-4 and "adam_eps" not in paper16.describe()
    assert qm._zo_config(eps, qm.Job(name="j", photos="p", placeholder="<j>", initializer="dog"), Path("e"),
                         Path("o"), steps=3, seed=0, num_train_timesteps=1000).adam_eps == 1e-4
    ortho = qm.parse_method("default[n=30,ortho=1]")
    assert ortho.directions == "orthogonal" and ortho.describe()["directions"] == "orthogonal"
    assert "directions" not in paper16.describe() and ortho.forwards_per_step == 31
    assert qm._zo_config(ortho, qm.Job(name="j", photos="p", placeholder="<j>", initializer="dog"), Path("e"),
                         Path("o"), steps=3, seed=0, num_train_timesteps=1000).directions == "orthogonal"
    phased = qm.parse_method("default[ortho_after=1800,ortho_n=30]")  # 600 steps of 3 forwards, then 31 a step
    assert phased.describe()["orthogonal_after"] == 1800 and "orthogonal_after" not in ortho.describe()
    assert phased.budget_steps(9000) == 600 + 232 and ortho.budget_steps(9000) == 290
    snaps = phased.snapshot_steps(832, 6)  # evenly spaced in forwards, not in steps
    assert snaps[0] == 0 and snaps[-1] == 832 and snaps[1] == 499 and all(s > 600 for s in snaps[2:])
    assert qm.parse_method("default").snapshot_steps(3000, 10) == qm.checkpoint_steps(3000, 10)
    phased_config = qm._zo_config(phased, qm.Job(name="j", photos="p", placeholder="<j>", initializer="dog"), Path("e"),
                                  Path("o"), steps=3, seed=0, num_train_timesteps=1000)
    assert (phased_config.orthogonal_after, phased_config.orthogonal_n) == (1800, 30)
    with pytest.raises(ValueError, match="ortho_after=FORWARDS and ortho_n=N go together"):
        qm.parse_method("default[ortho_after=1800]")
    two = qm.parse_method("default[num_vectors=2]")
    assert two.num_vectors == 2 and two.describe()["num_vectors"] == 2 and "num_vectors" not in paper16.describe()
    assert qm._zo_config(two, qm.Job(name="j", photos="p", placeholder="<j>", initializer="dog"), Path("e"),
                         Path("o"), steps=3, seed=0, num_train_timesteps=1000).num_vectors == 2
    with pytest.raises(ValueError, match="forward-only"):
        qm.parse_method("ti-backprop[num_vectors=2]")
    with pytest.raises(ValueError, match="world task"):  # the planted check plants one vector
        qm.run_forward_only(two, qm.Job("j", "p", "<j>", "dog", planted=[0.0]), Path("e"), Path("w"), 9, 1, 0)
    with pytest.raises(ValueError):
        qm.parse_method("sgd")
    with pytest.raises(ValueError):
        qm.parse_method("zoodip[foo=1]")
    assert quality.split_methods("init,zoodip[t=1-2,tau=4],es") == ["init", "zoodip[t=1-2,tau=4]", "es"]


def test_checkpoints_and_interpolation():
    assert qm.checkpoint_steps(100, 5) == [0, 20, 40, 60, 80, 100]
    assert qm.checkpoint_steps(3, 5) == [0, 1, 2, 3]
    curve = [(0.0, 0.0), (10.0, 0.5), (20.0, 1.0)]
    assert quality.forwards_to_reach(curve, 0.75) == pytest.approx(15.0)
    assert quality.forwards_to_reach(curve, 0.0) == 0.0
    assert quality.forwards_to_reach(curve, 1.5) is None


def test_backprop_gain_is_measured_from_the_initializer_even_without_the_init_method():
    """Without ``init`` in --methods, the gain columns start from the curves' common first point."""
    def run(values):
        return [{"forwards": 100.0 * k, "step": k, "wall_s": 1.0, "concept_fidelity": v} for k, v in enumerate(values)]

    scores = {"ti-backprop": {"job": run([0.7, 0.9, 1.0])}, "zo-puts": {"job": run([0.7, 0.8, 0.9])}}
    trained = {name: {"memory": {}, "spec": {}} for name in scores}
    summary = quality.summarize("world", scores, trained)
    zo = summary["methods"]["zo-puts"]
    assert zo["gain_vs_backprop"] == pytest.approx(2 / 3)
    assert zo["forwards_to_50pct_backprop_gain"] == pytest.approx(150.0)  # 0.85, between 0.8 and 0.9
    assert zo["forwards_to_90pct_backprop_gain"] is None  # 0.97 is never reached
    assert summary["methods"]["ti-backprop"]["forwards_to_50pct_backprop_gain"] == pytest.approx(75.0)


def test_ratio_of_means_ci_is_a_paired_bootstrap():
    ref = np.array([0.8, 0.9, 0.7, 0.85])
    assert quality.ratio_of_means_ci(ref, ref) == (1.0, 1.0)
    assert quality.ratio_of_means_ci(2 * ref, ref) == pytest.approx((2.0, 2.0))
    ours = ref + np.array([0.05, -0.1, 0.02, -0.03])
    lo, hi = quality.ratio_of_means_ci(ours, ref)
    assert lo < ours.mean() / ref.mean() < hi and hi - lo < 0.2
    # Paired: a per-job offset shared by both methods does not widen the interval.
    lo2, hi2 = quality.ratio_of_means_ci(ours + 10, ref + 10)
    assert hi2 - lo2 < (hi - lo) / 5
    with pytest.raises(ValueError):
        quality.ratio_of_means_ci([1.0, 2.0], [1.0])


def _fake_results(folder: Path, methods: dict, jobs=("a-s0", "b-s0"), guidance=5.0, seed=0, seeds=1,
                  weights=None, concept_refs=None, generation_seeds=None) -> Path:
    """A results folder as quality.py writes it: per-job checkpoint records of world metrics."""
    def run(offset, forwards):
        return [{"step": k, "forwards": k * forwards / 2, "wall_s": 1.0, "concept_fidelity": 0.7 + offset * k,
                 "attribute_acc": 0.5, "prompt_fidelity": (0.5 + offset * k) if k != 1 else None,
                 "prompt_requested_acc": 0.9, "prompt_joint_acc": 0.1} for k in range(3)]
    folder.mkdir(parents=True)
    meta = {"command": f"python benchmarks/quality.py --out {folder}", "date": "2026-11-30T00:00:00+00:00",
            "machine": {"cpu": "test", "cpu_count": 2}, "model": f"/somewhere/{'quality-model-x-w8a32'}",
            "torch_model": None, "seed": seed, "seeds": seeds, "gen_steps": 20, "guidance": guidance,
            "images_per_prompt": 4, "max_heldout": None, "curve_prompts": "fidelity", "total_wall_s": 10.0,
            "puts": [500, 900], **({"model_weights": weights} if weights else {}),
            **({"concept_refs": concept_refs} if concept_refs else {}),
            **({"generation_seeds": generation_seeds} if generation_seeds else {})}
    results = {"task": "world", "meta": meta, "jobs": list(jobs), "summary": {"oracle": dict.fromkeys(quality.metric_names("world"), 0.99)},
               "methods": {name: {"spec": {}, "memory": {}, "runs": {j: run(offset + 0.01 * i, forwards)
                                                                      for i, j in enumerate(jobs)}}
                           for name, (offset, forwards) in methods.items()}}
    (folder / "results.json").write_text(json.dumps(results))
    return folder


def test_merge_combines_stored_runs_and_rates_both_target_metrics(tmp_path, capsys):
    short = _fake_results(tmp_path / "short", {"ti-backprop": (0.1, 100), "zo-puts": (0.05, 300)})
    long = _fake_results(tmp_path / "long", {"zo-puts": (0.09, 900)})
    out = tmp_path / "merged"
    assert quality.main(["--merge", f"{short}:ti-backprop", str(long), "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert list(results["methods"]) == ["ti-backprop", "zo-puts"]
    zo = results["summary"]["methods"]["zo-puts"]
    assert zo["forwards"] == 900  # the long run's zo-puts, not the short one's
    # Finals (job a, job b): backprop 0.90, 0.92 / 0.70, 0.72; long zo-puts 0.88, 0.90 / 0.68, 0.70.
    assert zo["vs_backprop_by_metric"]["concept_fidelity"] == pytest.approx(0.89 / 0.91)
    assert zo["vs_backprop_by_metric"]["prompt_fidelity"] == pytest.approx(0.69 / 0.71)
    lo, hi = zo["vs_backprop_ci95"]["prompt_fidelity"]
    assert lo <= 0.69 / 0.71 <= hi
    md = (out / "results.md").read_text()
    assert "**`zo-puts` / backprop: concept_fidelity 0.978" in md and "prompt_fidelity 0.972" in md
    assert "(target >= 0.95 on each: met)" in md and "Merged from" in md
    assert (out / "curves.png").stat().st_size > 0

    # A folder's runs below 0.95 on one metric: not met.
    weak = _fake_results(tmp_path / "weak", {"zo-naive": (0.02, 900)})
    assert quality.main(["--merge", f"{short}:ti-backprop", str(weak), "--out", str(tmp_path / "m2")]) == 0
    assert "(target >= 0.95 on each: not met)" in (tmp_path / "m2" / "results.md").read_text()


def test_merge_refuses_an_out_that_is_its_input_or_a_file_and_an_empty_method_list(tmp_path, capsys):
    """--out SRC rewrote the source run as a merge of itself (its record lost); a file as --out and 'DIR:' with no
    methods were tracebacks, the latter after writing half the reports."""
    src = _fake_results(tmp_path / "src", {"ti-backprop": (0.1, 100)})
    before = (src / "results.json").read_bytes()
    (tmp_path / "afile").write_text("x")
    for argv, needle in (([str(src), "--out", str(src)], "is the run"), ([str(src), "--out", str(src / "sub")], "is the run"),
                         ([str(src), "--out", str(tmp_path / "afile")], "is an existing file"),
                         ([f"{src}:", "--out", str(tmp_path / "m")], "no methods after ':'")):
        assert quality.main(["--merge", *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: --merge: ") and needle in err and err.count("\n") == 1, err
    assert (src / "results.json").read_bytes() == before and not (tmp_path / "m").exists()


def test_merge_takes_a_variant_whose_name_holds_an_equals_sign(tmp_path):
    # "DIR:old=new" renames; the "=" inside a variant's brackets is part of its name, not a rename.
    assert _quality_merge.rename_pair("paper[adam16=1]") == ("paper[adam16=1]", "paper[adam16=1]")
    assert _quality_merge.rename_pair("paper[adam16=1]=fp16") == ("paper[adam16=1]", "fp16")
    assert _quality_merge.rename_pair("zoodip=paper") == ("zoodip", "paper")
    src = _fake_results(tmp_path / "src", {"ti-backprop": (0.1, 100), "paper[adam16=1]": (0.05, 300)})
    out = tmp_path / "merged"
    assert quality.main(["--merge", f"{src}:ti-backprop,paper[adam16=1]", "--out", str(out)]) == 0
    assert list(json.loads((out / "results.json").read_text())["methods"]) == ["ti-backprop", "paper[adam16=1]"]
    assert quality.main(["--merge", f"{src}:ti-backprop,paper[adam16=1]=fp16", "--out", str(tmp_path / "m2")]) == 0
    assert list(json.loads((tmp_path / "m2" / "results.json").read_text())["methods"]) == ["ti-backprop", "fp16"]


def _respec(folder: Path, method: str) -> Path:
    results = json.loads((folder / "results.json").read_text())
    results["methods"][method]["spec"] = {"lr": 0.02}
    (folder / "results.json").write_text(json.dumps(results))
    return folder


def test_merge_joins_one_method_run_on_disjoint_jobs(tmp_path):
    # The same method in two processes, each on half of the concepts, against a baseline that ran all of them.
    base = _fake_results(tmp_path / "base", {"ti-backprop": (0.1, 100)}, jobs=("a-s0", "b-s0", "c-s0"))
    first = _fake_results(tmp_path / "first", {"zo-puts": (0.09, 900)}, jobs=("a-s0", "b-s0"))
    second = _fake_results(tmp_path / "second", {"zo-puts": (0.09, 900)}, jobs=("c-s0",))
    out = tmp_path / "merged"
    assert quality.main(["--merge", f"{base}:ti-backprop", str(first), str(second), "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["jobs"] == ["a-s0", "b-s0", "c-s0"]
    assert set(results["methods"]["zo-puts"]["runs"]) == {"a-s0", "b-s0", "c-s0"}
    # Finals: backprop 0.90, 0.92, 0.94 / zo-puts 0.88, 0.90 and 0.88 (job c is the second folder's first job).
    ratio = results["summary"]["methods"]["zo-puts"]["vs_backprop_by_metric"]["concept_fidelity"]
    assert ratio == pytest.approx((0.88 + 0.90 + 0.88) / (0.90 + 0.92 + 0.94))


def test_merge_extends_a_run_by_a_longer_run_of_the_same_jobs_that_repeats_its_checkpoints(tmp_path, capsys):
    # A stored run to 300 forwards (checkpoints 0, 150, 300) and a later run of the same jobs to 600 (0, 300, 600)
    # that repeats the 300-forward scores exactly, held-out prompts left unscored there.
    base = _fake_results(tmp_path / "base", {"ti-backprop": (0.1, 100)})
    short = _fake_results(tmp_path / "short", {"zo-puts": (0.05, 300)})
    long = _fake_results(tmp_path / "long", {"zo-puts": (0.05, 600)})
    stored = json.loads((short / "results.json").read_text())["methods"]["zo-puts"]["runs"]
    longer = json.loads((long / "results.json").read_text())
    for job, curve in longer["methods"]["zo-puts"]["runs"].items():
        assert curve[1]["forwards"] == 300 and curve[1]["prompt_fidelity"] is None
        curve[1]["concept_fidelity"] = stored[job][2]["concept_fidelity"]
    longer["methods"]["zo-puts"]["runs"]["a-s0"][1]["concept_fidelity"] += 5e-5  # scoring's float rounding elsewhere
    (long / "results.json").write_text(json.dumps(longer))
    out = tmp_path / "merged"
    assert quality.main(["--merge", f"{base}:ti-backprop", str(short), str(long), "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    curve = results["methods"]["zo-puts"]["runs"]["a-s0"]
    assert [r["forwards"] for r in curve] == [0, 150, 300, 600]
    assert curve[2]["prompt_fidelity"] == stored["a-s0"][2]["prompt_fidelity"]  # filled in from the stored run
    assert curve[2]["concept_fidelity"] == stored["a-s0"][2]["concept_fidelity"] + 5e-5  # the longer run's record
    assert results["summary"]["methods"]["zo-puts"]["forwards"] == 600

    # A longer run that does not repeat the shared checkpoint is another trajectory: refused, nothing written.
    longer["methods"]["zo-puts"]["runs"]["b-s0"][1]["concept_fidelity"] += 0.01
    other = tmp_path / "other"
    other.mkdir()
    (other / "results.json").write_text(json.dumps(longer))
    capsys.readouterr()
    assert quality.main(["--merge", f"{base}:ti-backprop", str(short), str(other), "--out", str(tmp_path / "m2")]) == 2
    err = capsys.readouterr().err
    assert f"b-s0 at 300 forwards has concept_fidelity 0.820000 in {short} and 0.830000 in {other}" in err
    assert "not one trajectory" in err and err.count("\n") == 1
    assert not (tmp_path / "m2").exists()


def test_merge_joins_runs_of_other_training_seeds_under_one_name_per_job(tmp_path):
    # Backprop over seeds 0-2; the ZO method on seed 0 alone (its job named "a") and on seeds 1-2 in another run.
    # Every job scored against its own photos and with its own seed's generation noise (meta.concept_refs and
    # meta.generation_seeds; a one-seed run's always are).
    base = _fake_results(tmp_path / "base", {"ti-backprop": (0.1, 100)}, jobs=("a-s0", "a-s1", "a-s2"), seeds=3,
                         concept_refs="job-photos", generation_seeds="job-seed")
    seed0 = _fake_results(tmp_path / "s0", {"zo-puts": (0.09, 900)}, jobs=("a",))
    seeds12 = _fake_results(tmp_path / "s12", {"zo-puts": (0.09, 900)}, jobs=("a-s1", "a-s2"), seed=1, seeds=2,
                            concept_refs="job-photos", generation_seeds="job-seed")
    out = tmp_path / "merged"
    assert quality.main(["--merge", f"{base}:ti-backprop", str(seed0), str(seeds12), "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["jobs"] == ["a-s0", "a-s1", "a-s2"]
    assert set(results["methods"]["zo-puts"]["runs"]) == {"a-s0", "a-s1", "a-s2"}
    assert (results["meta"]["seed"], results["meta"]["seeds"], results["meta"]["training_seeds"]) == (0, 3, [0, 1, 2])
    # Without the renaming, seed 0's "a" would be another job, and a-s0 would lack a zo-puts run.
    ratio = results["summary"]["methods"]["zo-puts"]["vs_backprop_by_metric"]["concept_fidelity"]
    assert ratio == pytest.approx((0.88 + 0.88 + 0.90) / (0.90 + 0.92 + 0.94))


def test_merge_refuses_jobs_whose_concept_fidelity_was_scored_against_other_photos(tmp_path, capsys):
    # Multi-seed runs made before meta.concept_refs scored every seed's job against the run's first seed's photos.
    base = _fake_results(tmp_path / "base", {"ti-backprop": (0.1, 100)}, jobs=("a-s0", "a-s1", "a-s2"), seeds=3)
    seeds12 = _fake_results(tmp_path / "s12", {"zo-puts": (0.09, 900)}, jobs=("a-s1", "a-s2"), seed=1, seeds=2)
    assert quality.main(["--merge", str(base), str(seeds12), "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert "a-s1's concept fidelity was scored against seed 0's photos" in err and err.count("\n") == 1
    assert not (tmp_path / "m").exists()


def test_merge_keeps_the_training_seeds_asked_for_and_records_each_jobs_reference_photos(tmp_path, capsys):
    # An old run over seeds 1-2 scored both against seed 1's photos: its seed-1 jobs are right, its seed-2 jobs
    # are replaced by a newer seed-2 run (DIR@1), and the merged run says which photos each job was scored against.
    base = _fake_results(tmp_path / "base", {"ti-backprop": (0.1, 100)}, jobs=("a-s0", "a-s1", "a-s2"), seeds=3,
                         concept_refs="job-photos", generation_seeds="job-seed")
    seed0 = _fake_results(tmp_path / "s0", {"zo-puts": (0.09, 900)}, jobs=("a",))
    old12 = _fake_results(tmp_path / "old12", {"zo-puts": (0.09, 900)}, jobs=("a-s1", "a-s2"), seed=1, seeds=2)
    seed2 = _fake_results(tmp_path / "s2", {"zo-puts": (0.05, 900)}, jobs=("a",), seed=2)
    # Without @1 the old seed-2 job clashes with the new one (and was scored against other photos than backprop's).
    assert quality.main(["--merge", f"{base}:ti-backprop", str(seed0), str(old12), str(seed2),
                         "--out", str(tmp_path / "refused")]) == 2
    assert "a-s2's concept fidelity was scored against" in capsys.readouterr().err
    assert not (tmp_path / "refused").exists()
    out = tmp_path / "merged"
    assert quality.main(["--merge", f"{base}:ti-backprop", str(seed0), f"{old12}@1", str(seed2), "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["methods"]["zo-puts"]["runs"]["a-s2"][-1]["concept_fidelity"] == pytest.approx(0.8)  # the new run's
    assert results["meta"]["concept_ref_seeds"] == {"a-s0": 0, "a-s1": 1, "a-s2": 2}
    assert results["meta"]["job_generation_seeds"] == {"a-s0": 0, "a-s1": 1, "a-s2": 2}
    assert (results["meta"]["seed"], results["meta"]["seeds"], results["meta"]["training_seeds"]) == (0, 3, [0, 1, 2])
    # A merged run merges again, its jobs' reference photos read from its record (not from the legacy rule).
    assert quality.main(["--merge", str(out), "--out", str(tmp_path / "again")]) == 0
    assert json.loads((tmp_path / "again" / "results.json").read_text())["meta"]["concept_ref_seeds"]["a-s2"] == 2
    # One seed's jobs of a multi-seed run with a one-seed run of that seed: the names of a one-seed run.
    one = tmp_path / "one"
    assert quality.main(["--merge", f"{base}:ti-backprop@1", f"{old12}@1", "--out", str(one)]) == 0
    results = json.loads((one / "results.json").read_text())
    assert results["jobs"] == ["a"] and (results["meta"]["seed"], results["meta"]["seeds"]) == (1, 1)
    assert set(results["methods"]["zo-puts"]["runs"]) == {"a"} and results["meta"]["concept_ref_seeds"] == {"a": 1}
    # A seed with no job: one line.
    assert quality.main(["--merge", f"{seed0}@4", "--out", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert "has no job of training seed 4" in err and err.count("\n") == 1 and not (tmp_path / "none").exists()


def test_merge_refuses_jobs_whose_images_were_generated_from_other_noise(tmp_path, capsys):
    # Multi-seed runs before meta.generation_seeds drew every job's images from the run's first seed's noise:
    # their seed-2 job does not pair with a one-seed --seed 2 run's (seed 2's noise), and is refused in one line.
    old12 = _fake_results(tmp_path / "old12", {"ti-backprop": (0.1, 100)}, jobs=("a-s1", "a-s2"), seed=1, seeds=2,
                          concept_refs="job-photos")
    new12 = _fake_results(tmp_path / "new12", {"ti-backprop": (0.1, 100)}, jobs=("a-s1", "a-s2"), seed=1, seeds=2,
                          concept_refs="job-photos", generation_seeds="job-seed")
    seed2 = _fake_results(tmp_path / "s2", {"zo-puts": (0.05, 900)}, jobs=("a",), seed=2)
    assert quality.main(["--merge", str(old12), str(seed2), "--out", str(tmp_path / "refused")]) == 2
    err = capsys.readouterr().err
    assert "a-s2's images were generated from seed 1's noise" in err and err.count("\n") == 1
    assert not (tmp_path / "refused").exists()
    # The new rule's seed-2 job pairs with the one-seed run's; the old run's seed-1 job still merges (@1).
    out = tmp_path / "ok"
    assert quality.main(["--merge", f"{new12}@2", str(seed2), "--out", str(out)]) == 0
    assert json.loads((out / "results.json").read_text())["meta"]["job_generation_seeds"] == {"a": 2}
    # Past the noise check (same seed for seed 1's job), and the same scores: one trajectory, whose curves join.
    assert quality.main(["--merge", f"{old12}@1", f"{new12}@1", "--out", str(tmp_path / "one")]) == 0


@pytest.mark.parametrize("case, message", [
    ("duplicate", "method zo-puts ran a-s0 in both"),
    ("jobs", "has no run of c-s0"),
    ("settings", "method zo-puts has other settings"),
    ("grid", "method zo-puts scored c-s0 at 0, 450, 900 forwards and a-s0 at 0, 150, 300"),
    ("scoring", "guidance="),
    ("weights", "another export"),
    ("missing", "does not exist"),
    ("unknown-method", "has no method es"),
    ("no-out", "--merge needs --out"),
])
def test_merge_refuses_runs_that_cannot_be_compared(tmp_path, capsys, case, message):
    short = _fake_results(tmp_path / "short", {"ti-backprop": (0.1, 100), "zo-puts": (0.05, 300)})
    other = {
        "duplicate": lambda: _fake_results(tmp_path / "o", {"zo-puts": (0.09, 900)}),
        "jobs": lambda: _fake_results(tmp_path / "o", {"zo-naive": (0.09, 900)}, jobs=("a-s0", "c-s0")),
        "grid": lambda: _fake_results(tmp_path / "o", {"ti-backprop": (0.1, 100), "zo-puts": (0.05, 900)}, jobs=("c-s0",)),
        "settings": lambda: _respec(_fake_results(tmp_path / "o", {"zo-puts": (0.09, 900)}, jobs=("c-s0",)), "zo-puts"),
        "scoring": lambda: _fake_results(tmp_path / "o", {"zo-naive": (0.09, 900)}, guidance=7.5),
        "weights": lambda: _fake_results(tmp_path / "o", {"zo-naive": (0.09, 900)}, weights='{"unet.onnx": "ab"}'),
        "missing": lambda: tmp_path / "nowhere",
        "unknown-method": lambda: f"{short}:es",
        "no-out": lambda: _fake_results(tmp_path / "o", {"zo-naive": (0.09, 900)}),
    }[case]()
    out = tmp_path / "merged"
    argv = ["--merge", str(short) if case != "unknown-method" else str(other)]
    argv += [str(other)] if case != "unknown-method" else []
    argv += [] if case == "no-out" else ["--out", str(out)]
    assert quality.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not out.exists()


def test_seeds_only_with_the_world_task(tiny_export, tmp_path, capsys):
    code = quality.main(["--task", "planted", "--seeds", "3", "--model", str(tiny_export), "--out", str(tmp_path / "out")])
    assert code == 2
    assert "--seeds 3" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_checkout_without_the_built_in_model_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(quality, "REFERENCE_MODEL", quality.REPO / "reference" / "deleted" / "model-768")
    assert quality.main(["--steps", "1", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "model-768 is missing" in err and "--model" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("manifest", ["{", "[]", '{"format": "zoodip-onnx"}'])
def test_a_damaged_export_given_as_model_is_one_line(tmp_path, capsys, manifest):
    """A --model folder whose manifest.json was damaged ended in a JSONDecodeError traceback (exit 1)."""
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "manifest.json").write_text(manifest)
    assert quality.main(["--model", str(tmp_path / "model"), "--cache", str(tmp_path / "cache"),
                         "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --model: ") and "manifest.json" in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flags,needle", [
    (["--steps", "0"], "--steps must be an integer >= 1"),  # 0 read as "the mode's default" before
    (["--checkpoints", "0"], "--checkpoints must be an integer >= 1"),
    (["--guidance", "nan"], "--guidance nan: give a finite guidance scale"),
    (["--concepts", "nope"], "--concepts: unknown concept 'nope'; use names of <striped-star>"),
    (["--concepts", "0"], "--concepts 0: give a count of at least 1"),
    (["--task", "planted", "--concepts", "striped-star"], "the planted task takes a count of targets"),
    (["--out", "/proc/zoodip-bench"], "--out /proc/zoodip-bench cannot be created"),
    # Checked by the worker only: a traceback after the methods before it had trained, their results not written.
    (["--methods", "zoodip[tau=-1]"], "method 'zoodip[tau=-1]': tau must be an integer >= 2"),
    (["--methods", "ti-backprop,zoodip[lr=nan]"], "lr='nan' is not finite"),
    (["--methods", ""], "names no method"),  # (it ran every method)
    (["--out", ""], "--out is empty"),  # (the current folder)
])
def test_bad_benchmark_flags_are_one_line_before_any_work(flags, needle, capsys):
    assert quality.main(flags) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and needle in err and err.count("\n") == 1, err


def test_the_cache_lock_keeps_a_second_process_out_until_released(tmp_path):
    import subprocess

    from benchmarks._models import cache_lock

    try_lock = "import fcntl, sys; fcntl.flock(open(sys.argv[1], 'w'), fcntl.LOCK_EX | fcntl.LOCK_NB)"
    with cache_lock(tmp_path / "cache"):
        held = subprocess.run([sys.executable, "-c", try_lock, str(tmp_path / "cache" / ".lock")], capture_output=True)
    released = subprocess.run([sys.executable, "-c", try_lock, str(tmp_path / "cache" / ".lock")], capture_output=True)
    assert held.returncode != 0 and b"BlockingIOError" in held.stderr
    assert released.returncode == 0, released.stderr


def test_smoke_planted_all_methods(tiny_export, tiny_sd_folder, tmp_path):
    out = tmp_path / "out"
    code = quality.main(["--smoke", "--model", str(tiny_export), "--torch-model", str(tiny_sd_folder),
                         "--in-process", "--steps", "6", "--checkpoints", "2", "--out", str(out),
                         "--work", str(tmp_path / "work")])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["task"] == "planted"
    assert set(results["methods"]) == set(qm.METHODS)
    summary = results["summary"]["methods"]
    budget = results["meta"]["budget_forwards"]
    assert budget == 18
    for method, entry in summary.items():
        assert entry["forwards"] <= budget, method
        runs = results["methods"][method]["runs"]
        (records,) = runs.values()
        assert records[0]["forwards"] == 0
        assert records[0]["gap_closed"] == pytest.approx(0.0, abs=1e-9)
        assert np.isfinite(entry["final"]["gap_closed"])
    assert summary["init"]["final"]["gap_closed"] == 0.0
    # The torch ceiling takes 18 steps of real gradients: it must close a good part of the gap.
    assert summary["ti-backprop"]["final"]["gap_closed"] > 0.3
    for method in ("zo-naive", "zoodip", "es"):
        assert summary[method]["final"]["loss"] < summary["init"]["final"]["loss"], method
    assert "zoodip" in results["summary"]["naive_vs"]
    for name in ("results.md", "curves.png"):
        assert (out / name).stat().st_size > 0
    assert "| `zoodip` |" in (out / "results.md").read_text()
    # Paths outside the repository are recorded by name only: no machine's folders in a results file.
    meta = results["meta"]
    assert (meta["model"], meta["torch_model"]) == ("<outside-repo>/tiny_int8", "<outside-repo>/tiny_sd")
    assert str(tmp_path) not in meta["command"] and "--out '<outside-repo>/out'" in meta["command"]
    assert str(tmp_path) not in (out / "results.md").read_text()


class _StandInEvaluator:
    """Features: the downsampled image; predictions: the world's attributes of the concept."""

    def __init__(self, attrs):
        self.attrs = attrs

    def features(self, images):
        x = np.stack([np.asarray(im.resize((8, 8)), np.float64).ravel() for im in images])
        x -= x.mean(axis=1, keepdims=True)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    def predict(self, images):
        return {k: [v] * len(images) for k, v in self.attrs.items()}


def test_world_task_scoring_with_stand_in_evaluator(tiny_export, tmp_path, monkeypatch):
    world = pytest.importorskip("reference.world", reason="reference/world.py is not available")
    concept = world.CONCEPTS[0]
    monkeypatch.setattr(quality, "load_evaluator", lambda: _StandInEvaluator(concept.attributes.as_dict()))
    out = tmp_path / "out"
    code = quality.main(["--task", "world", "--model", str(tiny_export), "--methods", "init,zoodip,default[num_vectors=2]",
                         "--concepts", concept.name, "--in-process", "--steps", "4", "--checkpoints", "1",
                         "--images-per-prompt", "1", "--gen-steps", "2", "--max-heldout", "2",
                         "--out", str(out), "--work", str(tmp_path / "work")])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    final = results["summary"]["methods"]["zoodip"]["final"]
    # The stand-in reads every image as the concept: attribute accuracy 1, and a held-out prompt
    # (which changes one of the five attributes) matches 4/5 of its target, never the requested one.
    assert final["attribute_acc"] == 1.0
    assert final["prompt_fidelity"] == pytest.approx(0.8)
    assert final["prompt_requested_acc"] == 0.0 and final["prompt_joint_acc"] == 0.0
    assert -1.0 <= final["concept_fidelity"] <= 1.0
    # Two vectors per token: the snapshots hold both, flattened, and the scoring prompts expand the token to both.
    assert results["summary"]["methods"]["default[num_vectors=2]"]["final"]["attribute_acc"] == 1.0
    assert (out / "samples.png").is_file()


@pytest.mark.skipif(quality.world_ready() is not None, reason=f"reference world not complete: {quality.world_ready()}")
def test_reference_world_is_usable():
    """With the reference model and evaluator present, the evaluator reads the concepts' own photos."""
    world = pytest.importorskip("reference.world")
    evaluator = quality.load_evaluator()
    concept = world.CONCEPTS[0]
    images = world.concept_images(concept, n=4)
    predicted = evaluator.predict(images)
    acc = np.mean([predicted[a][k] == v for a, v in concept.attributes.as_dict().items() for k in range(4)])
    assert acc >= 0.8
    feats = np.asarray(evaluator.features(images))
    assert np.allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-4)


def test_backprop_restricted_to_the_curvature_subspace(tiny_export, tiny_sd_folder, photos, tmp_path):
    """The diagnostic variants ti-backprop[curvature=F]: exact gradients and the SDK's search space."""
    from zoodip.model import ExportedModel

    job = qm.Job("star", str(photos), "<striped-star>", "star")
    basis = ExportedModel.load(tiny_export).curvature().basis(0.999).astype(np.float64)
    assert basis.shape[1] < basis.shape[0]

    def outside(method: str) -> float:
        snaps = qm.run_method(qm.parse_method(method), job, tiny_export, tmp_path, budget=4, checkpoints=1, seed=0,
                              torch_model=tiny_sd_folder)
        moved = snaps[-1].v.astype(np.float64) - snaps[0].v
        assert np.linalg.norm(moved) > 0, method
        return float(np.linalg.norm(moved - basis @ (basis.T @ moved)) / np.linalg.norm(moved))

    assert outside("ti-backprop[curvature=0.999,coords=1]") < 1e-5  # v = v0 + B c
    for method in ("default[coords=1]", "ti-backprop[coords=1]"):  # nothing to take coordinates of
        with pytest.raises(ValueError, match="coords"):
            qm.parse_method(method)
    # A projected gradient keeps the gradient in span(B), but AdamW's per-entry steps leave it.
    assert outside("ti-backprop[curvature=0.999,weight_decay=0]") > 0.05


def test_draws_rerun_a_method_on_other_training_draws_only(tiny_export, photos, tmp_path):
    """``name[draws=K]`` trains on other noise, timesteps and directions; the job itself (photos, scoring) stays."""
    job = qm.Job("star", str(photos), "<striped-star>", "star", seed=2)

    def final(method: str) -> np.ndarray:
        return qm.run_method(qm.parse_method(method), job, tiny_export, tmp_path, budget=6, checkpoints=1, seed=0)[-1].v

    same, again, other = final("default"), final("default[draws=0]"), final("default[draws=1]")
    assert np.array_equal(same, again)
    assert not np.allclose(same, other)
    # clip=K reaches the SDK's --clip-estimate: the first step is the default's, later ones are clipped.
    assert qm.parse_method("default[clip=1.5]").describe()["clip_estimate"] == 1.5
    assert not np.array_equal(final("default[clip=1.01]"), same)
    assert qm.parse_method("ti-backprop[draws=2]").describe()["training_draws"] == f"seed + {qm.DRAWS_STRIDE} x 2"
    assert "training_draws" not in qm.parse_method("ti-backprop").describe()
    for method in ("default[draws=-1]", "init[draws=1]"):
        with pytest.raises(ValueError, match="draws"):
            qm.parse_method(method)


def test_each_job_is_scored_with_its_own_training_seeds_generation_noise(tmp_path, monkeypatch):
    # A run over seeds 1-2 draws job "a-s2"'s images from seed 2's noise, as a one-seed --seed 2 run does, so that
    # the two pair in --merge (meta.generation_seeds); a one-seed run's job uses the run's --seed.
    from types import SimpleNamespace

    from PIL import Image

    from benchmarks import _quality_eval as qe
    from benchmarks._quality_snapshots import Job

    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (8, 8)).save(photos / "0.png")
    seen: list[tuple[str, int]] = []

    class RecordingScorer:
        def __init__(self, *args, **kwargs):
            pass

        def score(self, concept, token, v, refs, seed=None, **kwargs):
            seen.append(("oracle" if v is None else "run", seed))
            return {"concept_fidelity": 0.5}

    monkeypatch.setattr(qe, "WorldScorer", RecordingScorer)
    monkeypatch.setattr(quality, "load_evaluator", lambda: None)
    world = SimpleNamespace(CONCEPTS=[SimpleNamespace(name="<a>")])
    args = SimpleNamespace(images_per_prompt=1, gen_steps=1, guidance=1.0, seed=1, max_heldout=None, curve_prompts="fidelity")
    jobs = [Job("a-s1", str(photos), "<a>", "a", seed=1), Job("a-s2", str(photos), "<a>", "a", seed=2),
            Job("a", str(photos), "<a>", "a")]
    trained = {"m": {"runs": {job.name: [{"step": 0, "forwards": 0, "wall_s": 0.0, "v": [0.0]}] for job in jobs}}}
    quality._score_world(trained, jobs, tmp_path, args, world, {"m": {}}, {})
    assert seen == [("oracle", 1), ("run", 1), ("oracle", 2), ("run", 2), ("oracle", 1), ("run", 1)]


def test_a_merged_run_older_than_its_generation_seeds_record_reads_them_from_its_sources(tmp_path, monkeypatch, capsys):
    # Such a run (meta.merged_from, no meta.job_generation_seeds) joined a --seed 0 run and a --seed 1 --seeds 2
    # run of the old rule: its seed-1 and seed-2 jobs came from seed 1's noise, not from its first seed's (0).
    monkeypatch.setattr(_quality_merge, "REPO", tmp_path)
    _fake_results(tmp_path / "s0", {"zo-puts": (0.09, 900)}, jobs=("a",))
    _fake_results(tmp_path / "old12", {"zo-puts": (0.09, 900)}, jobs=("a-s1", "a-s2"), seed=1, seeds=2,
                  concept_refs="job-photos")
    merged = _fake_results(tmp_path / "merged", {"zo-puts": (0.09, 900)}, jobs=("a-s0", "a-s1", "a-s2"), seeds=3)
    record = json.loads((merged / "results.json").read_text())
    record["meta"] |= {"merged_from": [{"path": "s0"}, {"path": "old12"}],
                       "concept_ref_seeds": {"a-s0": 0, "a-s1": 1, "a-s2": 2}}
    (merged / "results.json").write_text(json.dumps(record))
    _, loaded = _quality_merge._load_source(f"{merged}")
    assert loaded["generation_seeds"] == {"a-s0": 0, "a-s1": 1, "a-s2": 1}
    new2 = _fake_results(tmp_path / "new2", {"ti-backprop": (0.1, 100)}, jobs=("a",), seed=2)
    assert quality.main(["--merge", str(new2), f"{merged}@2", "--out", str(tmp_path / "refused")]) == 2
    assert "a's images were generated from seed 2's noise" in capsys.readouterr().err
    # A source gone: one line saying so.
    (tmp_path / "old12" / "results.json").unlink()
    assert quality.main(["--merge", str(merged), "--out", str(tmp_path / "gone")]) == 2
    err = capsys.readouterr().err
    assert "one of the runs it was merged from, cannot be read" in err and err.count("\n") == 1


def test_merge_reads_weights_recorded_as_a_mapping_or_as_the_older_json_string(tmp_path, capsys):
    short = _fake_results(tmp_path / "short", {"ti-backprop": (0.1, 100)}, weights={"unet.onnx": "ab"})
    old = _fake_results(tmp_path / "old", {"zo-puts": (0.05, 900)}, weights='{"unet.onnx": "ab"}')
    assert quality.main(["--merge", str(short), str(old), "--out", str(tmp_path / "m")]) == 0
    assert json.loads((tmp_path / "m" / "results.json").read_text())["meta"]["model_weights"] == {"unet.onnx": "ab"}
    other = _fake_results(tmp_path / "other", {"zo-puts": (0.05, 900)}, weights={"unet.onnx": "cd"})
    assert quality.main(["--merge", str(old), str(other), "--out", str(tmp_path / "n")]) == 2
    assert "another export" in capsys.readouterr().err


def test_reference_features_are_cached_per_concept_and_photos() -> None:
    from types import SimpleNamespace

    from benchmarks._quality_eval import WorldScorer

    calls = []

    class Evaluator:
        def features(self, images):
            calls.append(len(images))
            return [np.asarray(image, np.float64).ravel()[:2] for image in images]

    scorer = object.__new__(WorldScorer)  # only the cache and the evaluator take part
    scorer.evaluator, scorer._ref_cache = Evaluator(), {}
    star = SimpleNamespace(name="star")
    photos_a = [np.zeros((2, 2, 3), np.uint8), np.ones((2, 2, 3), np.uint8)]
    photos_b = [np.full((2, 2, 3), 7, np.uint8)]  # another seed's photos of the same concept
    first = scorer.reference_features(star, photos_a)
    assert scorer.reference_features(star, [p.copy() for p in photos_a]) is first and calls == [2]
    assert scorer.reference_features(star, photos_b)[0, 0] == 7 and calls == [2, 1]
    assert scorer.reference_features(SimpleNamespace(name="moon"), photos_a) is not first


def test_merge_seeds_that_are_not_numbers_are_named_as_seeds(tmp_path, capsys):
    # "DIR:METHOD@x" was read as a method named "METHOD@x"; a folder whose own name holds "@" is still a folder.
    src = _fake_results(tmp_path / "src", {"ti-backprop": (0.1, 100)})
    for source in (f"{src}:ti-backprop@x", f"{src}@1,b"):
        assert quality.main(["--merge", source, "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "@SEEDS must be a comma list of training seeds" in err
    assert not (tmp_path / "out").exists()
    at_folder = _fake_results(tmp_path / "run@home", {"ti-backprop": (0.1, 100)})
    assert quality.main(["--merge", f"{at_folder}:ti-backprop", "--out", str(tmp_path / "ok")]) == 0


def _unrecorded_export(folder: Path, name: str, shift: float = 0.0) -> Path:
    """A run from before results recorded their export's weights, its export folder (``name``) gone; ``shift``
    moves its initializer's scores (as other weights would)."""
    record = json.loads((folder / "results.json").read_text())
    record["meta"]["model"] = f".cache/bench/{name}"
    for entry in record["methods"].values():
        for curve in entry["runs"].values():
            curve[0]["concept_fidelity"] += shift
    (folder / "results.json").write_text(json.dumps(record))
    return folder


def test_merge_of_runs_whose_weights_were_never_recorded_is_judged_by_their_initializer(tmp_path, capsys):
    # Runs before 2026-12-03 recorded no weights; once their exports were gone, --merge compared the exports'
    # cache names, whose stamp is the source folder's file times: committed merges of runs on the same weights
    # (the same initializer scores, job by job) were refused as "made on another export" when re-run.
    short = _unrecorded_export(_fake_results(tmp_path / "short", {"ti-backprop": (0.1, 100)}), "q-25bab677e6-w8a32")
    same = _unrecorded_export(_fake_results(tmp_path / "same", {"zo-puts": (0.05, 900)}), "q-73f5a900ee-w8a32")
    assert quality.main(["--merge", str(short), str(same), "--out", str(tmp_path / "m")]) == 0
    capsys.readouterr()
    # Other initializer scores on a shared job, or no shared job to tell: refused as before.
    other = _unrecorded_export(_fake_results(tmp_path / "other", {"zo-puts": (0.05, 900)}), "q-9f1d75255b-w8a32",
                               shift=0.01)
    apart = _unrecorded_export(_fake_results(tmp_path / "apart", {"zo-puts": (0.05, 900)}, jobs=("c-s0",)),
                               "q-9f1d75255b-w8a32")
    for run in (other, apart):
        assert quality.main(["--merge", str(short), str(run), "--out", str(tmp_path / "n")]) == 2
        err = capsys.readouterr().err
        assert "another export" in err and err.count("\n") == 1 and not (tmp_path / "n").exists()


def test_an_interrupted_training_leaves_no_out_folder(tiny_export, tmp_path, monkeypatch):
    """Ctrl-C during the training (minutes to hours) left the --out folder behind, created empty before it."""
    monkeypatch.setattr(quality, "prepare_model", lambda *args: (tiny_export, None))

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(quality, "make_jobs", interrupted)
    out = tmp_path / "out"
    assert quality.main(["--task", "planted", "--concepts", "1", "--methods", "init", "--out", str(out),
                         "--cache", str(tmp_path / "cache"), "--work", str(tmp_path / "work")]) == 130  # (one line)
    assert not out.exists()

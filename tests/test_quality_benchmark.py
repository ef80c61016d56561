"""The quality benchmark (benchmarks/quality.py): its smoke mode on the tiny random model, and its helpers.

The full benchmark needs reference/model and reference/evaluator.py; here the planted-embedding check
(no evaluator) runs every method for a few steps, and the world task's scoring runs with a stand-in
evaluator, so neither needs the reference model.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import _quality_methods as qm  # noqa: E402
from benchmarks import quality  # noqa: E402


def test_parse_method_variants():
    spec = qm.parse_method("zoodip[t=300-700,tau=64,lr=0.02]")
    assert spec.kind == "zo" and spec.subspace and spec.t_range == (300, 700) and spec.tau == 64 and spec.lr == 0.02
    assert qm.parse_method("zo-naive").t_range is None and not qm.parse_method("zo-naive").subspace
    assert qm.parse_method("zo-puts", puts=(200, 800)).t_range == (200, 800)
    assert qm.parse_method("es[pop=16]").forwards_per_step == 16
    assert qm.parse_method("ti-backprop").forwards_per_step == 1
    vocab = qm.parse_method("zo-puts[vocab=0.95]")
    assert vocab.vocab == 0.95 and vocab.describe()["vocabulary_variance"] == 0.95
    assert "vocabulary_variance" not in qm.parse_method("zo-puts").describe()
    config = qm._zo_config(vocab, qm.Job(name="j", photos="p", placeholder="<j>", initializer="dog"),
                           Path("e"), Path("o"), steps=3, seed=0, num_train_timesteps=1000)
    assert config.vocabulary_variance == 0.95 and config.t_range == (500, 900)
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


def test_seeds_only_with_the_world_task(tiny_export, tmp_path, capsys):
    code = quality.main(["--task", "planted", "--seeds", "3", "--model", str(tiny_export), "--out", str(tmp_path / "out")])
    assert code == 2
    assert "--seeds 3" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


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
    code = quality.main(["--task", "world", "--model", str(tiny_export), "--methods", "init,zoodip",
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

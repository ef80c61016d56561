"""The SD-width reference model (reference/sd_width.py) and the problem-dimension measures."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from reference import sd_width  # noqa: E402


def _basis(wide: int, narrow: int, seed: int = 0) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((wide, narrow)))
    return q


def test_fill_leaves_the_isometric_part_and_fills_the_rest() -> None:
    wide, narrow, vocab = 24, 4, 50
    rng = np.random.default_rng(1)
    q = _basis(wide, narrow)
    table = rng.standard_normal((vocab, narrow)) @ q.T  # rows inside the isometric span
    text = {sd_width.TABLE_KEY: table.copy()}
    for i in range(2):
        for name in sd_width.READS + sd_width.WRITES:
            text[f"text_model.encoder.layers.{i}.{name}.weight"] = rng.standard_normal((narrow, narrow))
            text[f"text_model.encoder.layers.{i}.{name}.weight"] = q @ text[f"text_model.encoder.layers.{i}.{name}.weight"] @ q.T
    unet = {"down.0.attn2.to_k.weight": rng.standard_normal((6, narrow)) @ q.T}
    before_text = {k: v.copy() for k, v in text.items()}
    before_unet = {k: v.copy() for k, v in unet.items()}
    trained = np.array([3, 7, 11])
    record = sd_width.fill(text, unet, q, trained, seed=5)

    rows = text[sd_width.TABLE_KEY]
    # Trained rows keep their part in the span and gain an equally large one outside it.
    np.testing.assert_allclose(rows[trained] @ q, table[trained] @ q, atol=1e-12)
    outside = rows[trained] - (rows[trained] @ q) @ q.T
    np.testing.assert_allclose(np.linalg.norm(outside, axis=1), np.linalg.norm(table[trained], axis=1), rtol=1e-9)
    # The other rows are the seeded isotropic rows, reproducible from the record alone.
    others = np.setdiff1d(np.arange(vocab), trained)
    regenerated = sd_width.untrained_rows(record["vocab_size"], record["width"], record["seed"], record["std"])
    np.testing.assert_array_equal(rows[others], regenerated[others].astype(np.float64))
    # Layers reading the stream see the span exactly as before; they now also read the rest.
    key = "text_model.encoder.layers.1.self_attn.q_proj.weight"
    np.testing.assert_allclose(text[key] @ q, before_text[key] @ q, atol=1e-12)
    assert np.linalg.norm(text[key] - before_text[key]) > 0.1 * np.linalg.norm(before_text[key])
    # Layers writing it write the span as before (plus a part outside it).
    key = "text_model.encoder.layers.0.mlp.fc2.weight"
    np.testing.assert_allclose(q.T @ text[key], q.T @ before_text[key], atol=1e-12)
    np.testing.assert_allclose(unet["down.0.attn2.to_k.weight"] @ q, before_unet["down.0.attn2.to_k.weight"] @ q,
                               atol=1e-12)


def test_untrained_rows_are_seeded_and_fp16() -> None:
    a = sd_width.untrained_rows(100, 8, seed=3, std=0.05)
    assert a.dtype == np.float16 and a.shape == (100, 8)
    np.testing.assert_array_equal(a, sd_width.untrained_rows(100, 8, seed=3, std=0.05))
    assert not np.array_equal(a, sd_width.untrained_rows(100, 8, seed=4, std=0.05))
    assert abs(float(a.astype(np.float64).std()) - 0.05) < 0.005


@pytest.mark.skipif(not (sd_width.PACKED / "model_index.json").is_file(), reason="reference/model-768 not here")
def test_materialize_the_committed_model(tmp_path: Path) -> None:
    from safetensors.numpy import load_file

    dest = sd_width.materialize(sd_width.PACKED, tmp_path / "full")
    table = load_file(dest / "text_encoder" / "model.safetensors")[sd_width.TABLE_KEY]
    packed = load_file(sd_width.PACKED / "text_encoder" / sd_width.PACK_FILE)
    record = json.loads((sd_width.PACKED / "text_encoder" / sd_width.PACK_RECORD).read_text())
    assert table.shape == (record["vocab_size"], 768)
    np.testing.assert_array_equal(table[packed["ids"]], packed["rows"])
    others = np.setdiff1d(np.arange(len(table)), packed["ids"])[:1000]
    regenerated = sd_width.untrained_rows(record["vocab_size"], record["width"], record["seed"], record["std"])
    np.testing.assert_array_equal(table[others], regenerated[others])
    assert not (dest / "text_encoder" / sd_width.PACK_FILE).exists()
    stamp = (dest / "text_encoder" / "model.safetensors").stat().st_mtime_ns
    assert sd_width.materialize(sd_width.PACKED, tmp_path / "full") == dest  # cached: not written again
    assert (dest / "text_encoder" / "model.safetensors").stat().st_mtime_ns == stamp


def test_problem_dimension_measures() -> None:
    import problem_dimension as pd

    rng = np.random.default_rng(0)
    rows = rng.standard_normal((2000, 5)) @ rng.standard_normal((5, 40))  # rank 5 in 40 dims
    assert pd.components_for(rows) <= 5
    assert pd.components_for(rng.standard_normal((4000, 40))) >= 36  # isotropic: nearly all of them
    spectrum = pd.curvature_spectrum(np.diag([4.0, 2.0, 2.0, 0.0]))
    assert spectrum["effective_rank"] == pytest.approx(2.0)
    assert spectrum["participation_ratio"] == pytest.approx(64.0 / 24.0)
    assert spectrum["eigenvalues_for_90pct"] == 3
    # Two concepts, each with two rank-1 draws: each draw's ratio is 1, one concept's 2 (two directions), all 4.
    e = np.eye(4)
    terms = [[np.outer(e[0], e[0]), np.outer(e[1], e[1])], [np.outer(e[2], e[2]), np.outer(e[3], e[3])]]
    assert pd.spectrum_by_scope(terms) == pytest.approx({"effective_rank_per_draw": 1.0, "participation_ratio_per_draw": 1.0,
                                                         "effective_rank_per_concept": 2.0,
                                                         "participation_ratio_per_concept": 2.0})


def test_problem_dimension_names_a_folder_or_says_what_is_wrong(tmp_path, capsys, monkeypatch) -> None:
    import problem_dimension as pd

    out = tmp_path / "out"
    assert pd.main(["--models", f"ladder={tmp_path / 'nowhere'}", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "not a diffusers folder" in err and not out.exists()
    measured = []
    monkeypatch.setattr(pd, "measure", lambda name, folder, samples, seed: measured.append((name, folder)) or {
        "model": name, "width": 64, "curvature_effective_rank": 1.0, "curvature_participation_ratio": 1.0,
        "table_95pct_components_all_rows": 1, "table_95pct_components_caption_rows": 1, "caption_rows": 1})
    model = REPO / "reference" / "model"
    assert pd.main(["--models", f"reference-64,mine={model}", "--out", str(out)]) == 0
    assert measured == [("reference-64", model), ("mine", model)]


def test_gradient_noise_ratio_and_the_random_estimate_variance_it_predicts() -> None:
    import problem_dimension as pd

    rng = np.random.default_rng(1)
    k, n, s, draws = 12, 2, 3.0, 20000
    g = rng.standard_normal(k)
    g *= 1.0 / np.linalg.norm(g)
    deltas = rng.standard_normal((draws, k)) * np.sqrt(s / k)  # E|g_k - g|^2 = s |g|^2
    samples = g + deltas
    assert pd.noise_ratio([samples[: draws // 2], samples[draws // 2 :]]) == pytest.approx(s, rel=0.05)
    # Monte Carlo of the n-direction estimate on each draw against the closed form.
    z = rng.standard_normal((draws, n, k))
    estimates = np.einsum("dnk,dn->dk", z, np.einsum("dnk,dk->dn", z, samples)) / n
    measured = np.mean(np.sum((estimates - g) ** 2, axis=1)) / np.mean(np.sum(deltas ** 2, axis=1))
    assert measured == pytest.approx(pd.zo_variance_ratio(s, k, n), rel=0.05)


def test_gradient_tails_and_the_clipping_gain_they_predict() -> None:
    """Clipping pays where a few draws hold much of the squared norm, and hardly changes light-tailed draws."""
    import problem_dimension as pd

    rng = np.random.default_rng(2)
    k = 12
    g = np.ones(k) / np.sqrt(k)
    light = [g + rng.standard_normal((400, k)) * np.sqrt(3.0 / k) for _ in range(3)]
    scale = np.where(rng.random((3, 400)) < 0.03, 8.0, 0.6)  # 3% of the draws 13x noisier
    heavy = [g + rng.standard_normal((400, k)) * np.sqrt(3.0 / k) * scale[i][:, None] for i in range(3)]
    assert pd.tail_share([np.ones((40, 3))], 0.05) == pytest.approx(0.05)
    assert pd.tail_share(light, 0.05) < 0.15 < 0.5 < pd.tail_share(heavy, 0.05)
    for kappa in (1.5, 3.0):
        assert 0.95 < pd.clipped_gain(light, kappa, 2, np.random.default_rng(0)) < 1.15
        assert pd.clipped_gain(heavy, kappa, 2, np.random.default_rng(0)) > 2.0


@pytest.mark.parametrize("command, message", [
    (["pack", "TRAINED", "MINE", "--start", "START"], "DEST {mine} already exists: name a new folder, or add --overwrite"),
    (["pack", "TRAINED", "TRAINED", "--start", "START"], "DEST {trained} is the source folder"),
    (["materialize", "PACKED", "MINE"], "DEST {mine} already exists"),
    (["materialize", "PACKED", "PACKED"], "DEST {packed} is the source folder"),
    (["start", "--src", "TRAINED", "--out", "MINE"], "--out {mine} already exists"),
])
def test_a_folder_it_would_replace_is_refused_before_any_work(tmp_path, capsys, command, message) -> None:
    """``pack``, ``materialize`` and ``start`` deleted their destination first, whatever it was: a typo such as
    ``pack X reference/model`` removed the 64-wide model."""
    from reference import sd_width

    folders = {name: tmp_path / name.lower() for name in ("TRAINED", "START", "PACKED", "MINE")}
    (folders["TRAINED"] / "model_index.json").parent.mkdir()
    (folders["TRAINED"] / "model_index.json").write_text("{}")
    folders["START"].mkdir()
    (folders["START"] / "sd_width_start.json").write_text("{}")
    (folders["PACKED"] / "text_encoder").mkdir(parents=True)
    (folders["PACKED"] / "text_encoder" / sd_width.PACK_RECORD).write_text("{}")
    folders["MINE"].mkdir()
    (folders["MINE"] / "notes.txt").write_text("keep")
    before = sorted(tmp_path.rglob("*"))
    assert sd_width.main([str(folders.get(a, a)) for a in command]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    wanted = message.format(**{name.lower(): path for name, path in folders.items()})
    assert len(err) == 1 and err[0].startswith(f"error: {wanted}"), err
    assert sorted(tmp_path.rglob("*")) == before and (folders["MINE"] / "notes.txt").read_text() == "keep"


def test_materialize_through_a_link_replaces_its_target(tmp_path: Path) -> None:
    """DEST a link to a folder: os.replace cannot put a folder in a link's place (a traceback after the work)."""
    target = tmp_path / "old"
    target.mkdir()
    (target / "stale.txt").write_text("old")
    link = tmp_path / "link"
    link.symlink_to(target, target_is_directory=True)
    assert sd_width.materialize(sd_width.PACKED, link) == target
    assert link.is_symlink() and (target / "text_encoder" / "model.safetensors").is_file()
    assert not (target / "stale.txt").exists()


def test_an_interrupted_materialize_leaves_its_destination_as_it_was(tmp_path: Path, monkeypatch) -> None:
    """Ctrl-C while the full folder was written left a ``.partial-PID`` copy of the model (hundreds of MB) beside the
    cache, one more for every interrupted run; now the partial folder goes and the old destination stays."""
    import safetensors.numpy

    dest = tmp_path / "full"
    dest.mkdir()
    (dest / "old.txt").write_text("old")

    def interrupted(*_args, **_kwargs) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.numpy, "save_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        sd_width.materialize(sd_width.PACKED, dest)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full"]
    assert [p.name for p in dest.iterdir()] == ["old.txt"]


@pytest.mark.skipif(not (sd_width.PACKED / "model_index.json").is_file(), reason="reference/model-768 not here")
def test_pack_refuses_a_folder_whose_untrained_rows_are_not_the_start_ones(tmp_path: Path) -> None:
    """pack() ended the whole process (SystemExit) here: a caller's ``except Exception`` missed it."""
    from safetensors.numpy import load_file, save_file
    from zoodip.errors import ZoodipError

    trained = sd_width.materialize(sd_width.PACKED, tmp_path / "trained")
    record = json.loads((sd_width.PACKED / "text_encoder" / sd_width.PACK_RECORD).read_text())
    ids = load_file(sd_width.PACKED / "text_encoder" / sd_width.PACK_FILE)["ids"]
    (tmp_path / "start").mkdir()
    (tmp_path / "start" / "sd_width_start.json").write_text(json.dumps({**record, "trained_ids": ids.tolist()}))
    weights = trained / "text_encoder" / "model.safetensors"
    tensors = load_file(weights)
    untrained = int(np.setdiff1d(np.arange(len(tensors[sd_width.TABLE_KEY])), ids)[0])
    tensors[sd_width.TABLE_KEY][untrained] += 1
    save_file(tensors, str(weights))
    with pytest.raises(ZoodipError, match="untrained token rows are not the seeded ones"):
        sd_width.pack(trained, tmp_path / "packed", tmp_path / "start")
    assert not (tmp_path / "packed").exists()

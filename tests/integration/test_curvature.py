"""The curvature subspace: export-time eigenvectors (torch) and the SDK's use of them (NumPy)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from zoodip.curvature import CURVATURE_FILE, DEFAULT_CURVATURE_FRACTION, CurvatureSubspace, save_curvature
from zoodip.errors import ZoodipError


def _psd(dim: int, spectrum: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    q = np.linalg.qr(np.random.default_rng(seed).standard_normal((dim, dim)))[0]
    return q @ np.diag(spectrum) @ q.T, q


def test_top_eigenvectors_match_the_exact_decomposition() -> None:
    torch = pytest.importorskip("torch")
    from zoodip_export.curvature import top_eigenvectors

    dim = 96
    spectrum = np.concatenate([10.0 * 0.6 ** np.arange(12), np.full(dim - 12, 1e-4)])
    matrix, q = _psd(dim, spectrum)
    op = torch.from_numpy(matrix)
    values, vectors = top_eigenvectors(lambda v: op @ v, dim, rank=8, seed=1)
    np.testing.assert_allclose(values, spectrum[:8], rtol=1e-6)
    # Each vector spans the same line as the exact eigenvector (up to sign).
    overlap = np.abs(np.sum(vectors * q[:, :8], axis=0))
    np.testing.assert_allclose(overlap, 1.0, atol=1e-6)


def test_gauss_newton_product_matches_the_jacobian() -> None:
    torch = pytest.importorskip("torch")
    from zoodip_export.curvature import Draw, gauss_newton_product

    torch.manual_seed(0)
    dim, m = 6, 10
    weights = torch.randn(m, dim, dtype=torch.float64)

    def predict(draw: Draw, v: torch.Tensor) -> torch.Tensor:
        return torch.tanh(weights @ v) * draw.t

    draws = [Draw(torch.zeros(1), t, torch.zeros(1), torch.zeros(1), torch.randn(dim, dtype=torch.float64))
             for t in (1, 2)]
    V = torch.randn(dim, 3, dtype=torch.float64)
    expected = torch.zeros(dim, 3, dtype=torch.float64)
    for draw in draws:
        jac = torch.func.jacrev(lambda v, d=draw: predict(d, v))(draw.v0)
        expected += (2.0 / m) * jac.T @ jac @ V
    torch.testing.assert_close(gauss_newton_product(predict, draws, V, chunk=2), expected / len(draws))


def test_components_and_basis_follow_the_trace_fraction(tmp_path) -> None:
    values = np.array([6.0, 3.0, 0.9, 0.1])
    vectors = np.linalg.qr(np.random.default_rng(0).standard_normal((10, 4)))[0]
    path = save_curvature(tmp_path / CURVATURE_FILE, values, vectors, {"samples": 4})
    subspace = CurvatureSubspace.load(path)
    assert [subspace.components(f) for f in (0.5, 0.85, 0.95, 1.0)] == [1, 2, 3, 4]
    basis = subspace.basis(0.85)
    assert basis.shape == (10, 2)
    np.testing.assert_allclose(basis.T @ basis, np.eye(2), atol=1e-6)


@pytest.mark.parametrize("values, vectors, message", [
    (np.array([1.0, 2.0]), None, "descending"),
    (np.array([2.0, -1.0]), None, "negative"),
    (np.array([2.0, np.nan]), None, "non-finite"),
    (np.array([2.0, 1.0]), np.ones((5, 2)), "orthonormal"),
    (np.array([2.0, 1.0, 0.5]), None, "do not match"),
])
def test_damaged_curvature_is_refused(values, vectors, message) -> None:
    if vectors is None:
        vectors = np.linalg.qr(np.random.default_rng(0).standard_normal((5, 2)))[0]
    with pytest.raises(ZoodipError, match=message):
        CurvatureSubspace(values, vectors)


def test_trainer_searches_the_exported_curvature_subspace(tiny_export, tmp_path, photos) -> None:
    from zoodip.trainer import PersonalizeConfig, Personalizer

    manifest = json.loads((tiny_export / "manifest.json").read_text())
    assert manifest["curvature"]["file"] == CURVATURE_FILE
    config = PersonalizeConfig(export_dir=tiny_export, images=photos, output_dir=tmp_path / "run",
                               max_train_steps=2, eval_every=0, checkpoint_every=0, curvature_fraction=0.9)
    trainer = Personalizer(config)
    basis = trainer.estimator.basis
    k = trainer.curvature.components(0.9)
    assert basis is not None and basis.shape == (trainer.model.hidden_size, k) and k < trainer.model.hidden_size
    z = trainer.estimator.directions(np.random.default_rng(0))
    outside = z - (z @ basis) @ basis.T  # directions lie inside the subspace
    assert np.abs(outside).max() < 1e-5 * np.abs(z).max()
    off = Personalizer(PersonalizeConfig(export_dir=tiny_export, images=photos, output_dir=tmp_path / "off",
                                         max_train_steps=2, eval_every=0, checkpoint_every=0, curvature_fraction=0.0))
    assert off.estimator.basis is None
    assert config.fingerprint() != off.config.fingerprint()
    auto = Personalizer(PersonalizeConfig(export_dir=tiny_export, images=photos, output_dir=tmp_path / "auto",
                                          max_train_steps=2, eval_every=0, checkpoint_every=0))
    assert auto.config.curvature_fraction == DEFAULT_CURVATURE_FRACTION and auto.estimator.basis is not None
    vocabulary = Personalizer(PersonalizeConfig(export_dir=tiny_export, images=photos, output_dir=tmp_path / "voc",
                                                max_train_steps=2, eval_every=0, checkpoint_every=0,
                                                vocabulary_variance=0.9))
    assert vocabulary.config.curvature_fraction == 0.0 and vocabulary.curvature is None


def test_an_export_without_curvature_warns_by_default_and_refuses_an_explicit_fraction(tiny_sd_folder, photos,
                                                                                       tmp_path) -> None:
    from zoodip.trainer import PersonalizeConfig, Personalizer
    from zoodip_export.export_model import export_model

    bare = tmp_path / "bare"
    export_model(tiny_sd_folder, bare, recipe="w8a32", parity=False, progress=False, curvature_samples=0)

    def config(name: str, fraction: float | None) -> PersonalizeConfig:
        return PersonalizeConfig(export_dir=bare, images=photos, output_dir=tmp_path / name,
                                 max_train_steps=2, eval_every=0, checkpoint_every=0, curvature_fraction=fraction)

    with pytest.warns(UserWarning, match="no curvature.safetensors"):
        assert Personalizer(config("auto", None)).estimator.basis is None
    with pytest.raises(ZoodipError, match="has no curvature subspace"):
        Personalizer(config("explicit", 0.99))
    assert not (tmp_path / "explicit").exists()


def test_vocabulary_and_curvature_subspaces_exclude_each_other(tmp_path) -> None:
    from zoodip.trainer import PersonalizeConfig

    config = PersonalizeConfig(export_dir=tmp_path, images=tmp_path, output_dir=tmp_path / "o",
                               vocabulary_variance=0.9, curvature_fraction=0.99)
    with pytest.raises(ZoodipError, match="use one"):
        config.validate()


def test_the_export_reuses_a_shipped_curvature_only_for_the_same_weights(tiny_sd_folder, tmp_path) -> None:
    pytest.importorskip("torch")
    import shutil

    from zoodip_export.curvature import compute_curvature, stored_curvature

    source = tmp_path / "source"
    shutil.copytree(tiny_sd_folder, source)
    meta = compute_curvature(source, source / CURVATURE_FILE, samples=2)
    assert stored_curvature(source) == meta
    unet_weights = next(p for p in (source / "unet").iterdir() if p.suffix == ".safetensors")
    with unet_weights.open("r+b") as handle:  # other weights: the shipped file no longer belongs to them
        handle.seek(-4, 2)
        handle.write(b"\x00\x01\x02\x03")
    assert stored_curvature(source) is None


def test_cli_refuses_contradictory_curvature_flags(tiny_export, photos, tmp_path, capsys) -> None:
    from cli_helpers import personalize_args, run_cli

    code, _, err = run_cli(personalize_args(tiny_export, photos, tmp_path / "run", "--curvature-subspace", "0.9",
                                            "--no-curvature-subspace"), capsys)
    assert code == 2 and err.count("\n") == 1 and "contradict" in err
    assert not (tmp_path / "run").exists()
    code, _, err = run_cli(personalize_args(tiny_export, photos, tmp_path / "run2", "--curvature-subspace", "1.5"),
                           capsys)
    assert code == 2 and "--curvature-subspace" in err

"""The ZOODiP pieces: gradient estimator, optimizers, subspace projector, timestep sampler."""
from __future__ import annotations

import io
import math
import os
from typing import Callable

import numpy as np
import pytest

from zoodip.errors import ZoodipError
from zoodip.gradient_estimate import EstimatorSchedule
from zoodip.timesteps import PartialUniformTimesteps
from zoodip.vocabulary import VocabularySubspace
from zoodip.zo import (
    RandomGradientEstimator,
    SubspaceProjector,
    ZOAdam,
    ZOSGD,
    clip_norm,
    components_to_keep,
    orthogonal_frame,
    standardized_pca,
)


def npz_roundtrip(state: dict) -> dict:
    """Save and reload a state dict the way checkpoints do: .npz without pickle."""
    buf = io.BytesIO()
    np.savez(buf, **state)
    buf.seek(0)
    with np.load(buf, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


# ---------------------------------------------------------------- RandomGradientEstimator

DIM = 8
_rng = np.random.default_rng(123)
_M = _rng.standard_normal((DIM, DIM))
A = _M @ _M.T / DIM + np.eye(DIM)  # symmetric positive definite
B = _rng.standard_normal(DIM)
V0 = _rng.standard_normal(DIM)


def quadratic(v: np.ndarray) -> float:
    return float(0.5 * v @ A @ v + B @ v)


def sum_sin(v: np.ndarray) -> float:
    return float(np.sum(np.sin(3.0 * v)))


FUNCTIONS: dict[str, tuple[Callable[[np.ndarray], float], np.ndarray]] = {
    "quadratic": (quadratic, A @ V0 + B),
    "sum_sin": (sum_sin, 3.0 * np.cos(3.0 * V0)),
}


def mean_estimate(est: RandomGradientEstimator, f: Callable[[np.ndarray], float], v: np.ndarray,
                  samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean of many independent estimates and its per-coordinate standard error."""
    rng = np.random.default_rng(seed)
    loss0 = f(v)
    g = np.empty((samples, est.dim))
    for i in range(samples):
        z = est.directions(rng)
        losses = np.array([f(p) for p in est.perturbations(v, z)])
        g[i] = est.estimate(loss0, losses, z)
    return g.mean(axis=0), g.std(axis=0, ddof=1) / math.sqrt(samples)


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
@pytest.mark.parametrize("normalize", [False, True])
def test_estimator_mean_is_the_gradient(name: str, normalize: bool) -> None:
    f, grad = FUNCTIONS[name]
    n = 2
    est = RandomGradientEstimator(DIM, n=n, mu=1e-4, normalize=normalize)
    mean, stderr = mean_estimate(est, f, V0, samples=6000, seed=1)
    # E[g] = grad + O(mu^2) here (the O(mu) term has odd Gaussian moments); normalized estimates
    # are scaled by 1 / sqrt((d + n - 1) / n).
    expected = grad if not normalize else grad / math.sqrt((DIM + n - 1) / n)
    # The test has power: the standard error is small compared with the gradient.
    assert np.all(stderr < 0.1 * np.linalg.norm(expected))
    # Each coordinate of a mean of 6000 i.i.d. estimates is ~normal: |z| < 5 fails with p ~ 5e-6.
    z_scores = (mean - expected) / stderr
    assert np.max(np.abs(z_scores)) < 5.0, z_scores


def test_estimator_is_exact_in_expectation_form() -> None:
    """With z fixed, the estimate is exactly sum_i slope_i z_i times the documented scale."""
    est = RandomGradientEstimator(5, n=3, mu=0.5)
    z = np.arange(15, dtype=np.float32).reshape(3, 5)
    g = est.estimate(1.0, np.array([2.0, 0.0, 1.0]), z)
    slopes = np.array([2.0, -2.0, 0.0])
    np.testing.assert_allclose(g, slopes @ z / (3 * math.sqrt((5 + 2) / 3)))
    assert g.dtype == np.float64
    assert est.scale(effective_dim=2) == pytest.approx(1 / (3 * math.sqrt(4 / 3)))
    assert RandomGradientEstimator(5, n=3, normalize=False).scale() == pytest.approx(1 / 3)


def test_directions_and_perturbations() -> None:
    est = RandomGradientEstimator(6, n=2, mu=1e-3)
    z = est.directions(np.random.default_rng(0))
    assert z.shape == (2, 6) and z.dtype == np.float32
    np.testing.assert_array_equal(z, est.directions(np.random.default_rng(0)))  # reproducible
    v = np.linspace(-1, 1, 6, dtype=np.float32)
    p = est.perturbations(v, z)
    assert p.shape == (2, 6) and p.dtype == np.float32
    np.testing.assert_allclose(p, v + 1e-3 * z, rtol=1e-6, atol=1e-9)


def test_estimator_rejects_non_finite_losses() -> None:
    est = RandomGradientEstimator(3, n=1)
    with pytest.raises(ZoodipError):
        est.estimate(float("nan"), np.array([1.0]), np.ones((1, 3)))
    with pytest.raises(ZoodipError):
        est.estimate(1.0, np.array([np.inf]), np.ones((1, 3)))


@pytest.mark.parametrize("kwargs", [
    {"n": 0}, {"n": 1.5}, {"n": True}, {"mu": 0.0}, {"mu": -1e-3}, {"mu": float("nan")},
    {"mu": float("inf")}, {"dim": 0},
])
def test_estimator_invalid_args(kwargs: dict) -> None:
    with pytest.raises(ZoodipError):
        RandomGradientEstimator(**{"dim": 4, **kwargs})


# ---------------------------------------------------------------- VocabularySubspace


def planted_table(rows: int = 9000, dim: int = 8, rank: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A token table whose rows vary (up to 1e-3 noise) inside a planted ``rank``-dim subspace."""
    rng = np.random.default_rng(seed)
    planted, _ = np.linalg.qr(rng.standard_normal((dim, rank)))
    coords = rng.standard_normal((rows, rank)) * np.array([3.0, 2.0, 1.0][:rank])
    table = 5.0 + coords @ planted.T + 1e-3 * rng.standard_normal((rows, dim))  # offset: PCA must center
    return table.astype(np.float16), planted


def test_vocabulary_subspace_finds_the_planted_span() -> None:
    table, planted = planted_table()  # 9000 rows: the covariance is accumulated over nine blocks
    sub = VocabularySubspace.fit(table, 0.99)
    assert sub.k == 3 and sub.explained >= 0.99
    np.testing.assert_allclose(sub.basis.T @ sub.basis, np.eye(3), atol=1e-10)
    # The fitted basis spans the planted subspace: projecting the planted basis onto it loses nothing.
    np.testing.assert_allclose(sub.basis @ (sub.basis.T @ planted), planted, atol=2e-3)
    assert VocabularySubspace.fit(table, 0.5).k == 1  # the largest direction alone holds 9/14
    assert VocabularySubspace.fit(table, 1.0).k == 8
    for bad in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ZoodipError, match="variance fraction"):
            VocabularySubspace.fit(table, bad)


def _mapped_rss_kib(path) -> int:
    """Resident KiB of this process's mappings of ``path`` (Linux /proc/self/smaps)."""
    total, inside = 0, False
    with open("/proc/self/smaps", encoding="utf-8") as handle:
        for line in handle:
            fields = line.split()
            if fields and "-" in fields[0] and len(fields) >= 5:  # a mapping's header line
                inside = len(fields) >= 6 and fields[-1] == str(path)
            elif inside and fields[0] == "Rss:":
                total += int(fields[1])
    return total


def test_vocabulary_subspace_reads_a_memory_mapped_table_from_its_file(tmp_path) -> None:
    # An export's table is np.load(mmap_mode="r"): fit reads it in blocks with file reads (its pages
    # never become resident) and must give the same subspace as the table in memory; a view of the
    # mapping (whose memmap offset is its parent's) is read through the mapping instead.
    table, _ = planted_table(rows=5000)
    np.save(tmp_path / "table.npy", table)
    mapped = np.load(tmp_path / "table.npy", mmap_mode="r")
    in_memory = VocabularySubspace.fit(table, 0.99)
    from_file = VocabularySubspace.fit(mapped, 0.99)
    if os.path.exists("/proc/self/smaps"):
        assert _mapped_rss_kib(tmp_path / "table.npy") == 0  # no page of the mapping was touched
        np.asarray(mapped[:2048], dtype=np.float64)  # the check itself: reading through the mapping shows up
        assert _mapped_rss_kib(tmp_path / "table.npy") > 0
    assert from_file.k == in_memory.k == 3
    np.testing.assert_allclose(from_file.basis @ from_file.basis.T, in_memory.basis @ in_memory.basis.T, atol=1e-9)
    view, tail = VocabularySubspace.fit(mapped[1000:], 0.99), VocabularySubspace.fit(table[1000:], 0.99)
    np.testing.assert_allclose(view.basis @ view.basis.T, tail.basis @ tail.basis.T, atol=1e-9)


def test_estimator_in_a_subspace_searches_only_its_span() -> None:
    sub = VocabularySubspace.fit(planted_table()[0], 0.99)
    est = RandomGradientEstimator(8, n=2, mu=1e-4, basis=sub.basis)
    assert est.search_dim == 3 and RandomGradientEstimator(8).search_dim == 8
    z = est.directions(np.random.default_rng(0))
    assert z.shape == (2, 8) and z.dtype == np.float32
    np.testing.assert_allclose(sub.basis @ (sub.basis.T @ z.T), z.T, atol=1e-6)  # inside the span
    # The normalized scale counts the searched dimension, k, not d.
    assert est.scale() == pytest.approx(1 / (2 * math.sqrt((3 + 1) / 2)))
    # In expectation the estimate is the gradient's projection onto the span (E[B u u^T B^T] = B B^T).
    grad = A @ V0 + B
    mean, stderr = mean_estimate(est, quadratic, V0, samples=6000, seed=3)
    expected = sub.basis @ (sub.basis.T @ grad) / math.sqrt((3 + 1) / 2)
    assert np.max(np.abs((mean - expected) / stderr)) < 5.0
    # Without a basis the directions are the plain Gaussian stream (default runs are unchanged).
    plain = RandomGradientEstimator(8, n=2).directions(np.random.default_rng(5))
    np.testing.assert_array_equal(plain, np.random.default_rng(5).standard_normal((2, 8), dtype=np.float32))
    with pytest.raises(ValueError, match="basis must have shape"):
        RandomGradientEstimator(8, basis=np.zeros((7, 2)))


def test_orthogonal_frame_is_orthogonal_scaled_and_uniform() -> None:
    rng = np.random.default_rng(0)
    u = rng.standard_normal((3, 5), dtype=np.float32)
    q = orthogonal_frame(u)
    assert q.shape == (3, 5) and q.dtype == np.float32
    np.testing.assert_allclose(q @ q.T, 5 * np.eye(3), atol=1e-5)  # orthogonal rows of norm sqrt(k)
    # Same second moment as Gaussian directions: E[z z^T] = I (here over 4000 frames of 2 in 4 dims).
    zs = np.stack([orthogonal_frame(rng.standard_normal((2, 4))) for _ in range(4000)]).reshape(-1, 4)
    np.testing.assert_allclose(zs.T @ zs / len(zs), np.eye(4), atol=0.08)
    # Uniformly oriented: the first row's mean is 0 (a frame without the sign fix leans towards e_1).
    assert np.abs(zs[::2].mean(axis=0)).max() < 0.1


def test_orthogonal_directions_at_full_count_give_the_exact_gradient_in_the_span() -> None:
    sub = VocabularySubspace.fit(planted_table()[0], 0.99)
    est = RandomGradientEstimator(8, n=3, mu=1e-6, basis=sub.basis, directions="orthogonal", normalize=False)
    grad = A @ V0 + B
    for seed in range(3):  # n = k: every draw spans the whole searched space, so no draw is noisier than another
        z = est.directions(np.random.default_rng(seed))
        np.testing.assert_allclose(sub.basis @ (sub.basis.T @ z.T), z.T, atol=1e-5)  # inside the span
        losses = np.array([quadratic(p) for p in est.perturbations(V0, z)])
        g = est.estimate(quadratic(V0), losses, z)
        np.testing.assert_allclose(g, sub.basis @ (sub.basis.T @ grad), rtol=1e-3, atol=1e-3)
    # Fewer than k: unbiased, as Gaussian directions are.
    est2 = RandomGradientEstimator(DIM, n=2, mu=1e-4, directions="orthogonal", normalize=False)
    mean, stderr = mean_estimate(est2, quadratic, V0, samples=6000, seed=4)
    assert np.max(np.abs((mean - grad) / stderr)) < 5.0
    # Gaussian runs draw the same stream as before orthogonal directions existed.
    np.testing.assert_array_equal(RandomGradientEstimator(8, n=2).directions(np.random.default_rng(5)),
                                  np.random.default_rng(5).standard_normal((2, 8), dtype=np.float32))
    with pytest.raises(ZoodipError, match="n=4 is more than the 3 dimensions searched; use n=3 or fewer"):
        RandomGradientEstimator(8, n=4, basis=sub.basis, directions="orthogonal")


def test_two_phase_schedule_switches_by_forwards_and_counts_them() -> None:
    sub = VocabularySubspace.fit(planted_table()[0], 0.99)  # k = 3
    early = RandomGradientEstimator(8, n=2, basis=sub.basis)
    schedule = EstimatorSchedule.two_phase(early, 10)  # 3 forwards a step: steps 0-3 spend 12 >= 10
    late = schedule.late
    assert schedule.switch_step == 4 and late.n == 3 and late.orthogonal and late.basis is early.basis
    assert [schedule.at(s) is early for s in range(6)] == [True] * 4 + [False] * 2
    assert [schedule.forwards_for(s) for s in range(7)] == [0, 3, 6, 9, 12, 16, 20]
    for forwards in range(40):  # steps_within inverts forwards_for: the most steps that fit
        steps = schedule.steps_within(forwards)
        assert schedule.forwards_for(steps) <= forwards < schedule.forwards_for(steps + 1)
    assert EstimatorSchedule.two_phase(early, 0).switch_step == 0  # orthogonal from the first step
    assert EstimatorSchedule.two_phase(early, 10, late_n=2).late.n == 2
    one = EstimatorSchedule(early)
    assert one.at(10**6) is early and one.forwards_for(5) == 15 and one.steps_within(16) == 5
    with pytest.raises(ZoodipError, match="^orthogonal_n=4 is more than the 3 dimensions searched"):
        EstimatorSchedule.two_phase(early, 10, late_n=4)
    # A late step would cost d + 1 forwards (said in the API's names, which the CLI says as its flags).
    with pytest.raises(ZoodipError, match="^orthogonal_after without a search subspace: .* give orthogonal_n=N, "
                                          ".*vocabulary_variance=FRACTION"):
        EstimatorSchedule.two_phase(RandomGradientEstimator(8, n=2), 10)
    assert EstimatorSchedule.two_phase(RandomGradientEstimator(8, n=2), 10, late_n=8).late.n == 8
    with pytest.raises(ZoodipError, match=r"^orthogonal_after \(forwards\) must be"):
        EstimatorSchedule.two_phase(early, -1)


# ---------------------------------------------------------------- optimizers


def test_adam_first_step_closed_form() -> None:
    # After one step the bias-corrected moments are g and g^2: v1 = v0 - lr * g / (|g| + eps).
    g = np.array([1e-5, -1e-3, 0.5, -20.0, 0.0])
    v0 = np.linspace(-1, 1, 5)
    opt = ZOAdam(5, lr=0.01, eps=1e-3)
    v1 = opt.step(v0, g)
    np.testing.assert_allclose(v1, v0 - 0.01 * g / (np.abs(g) + 1e-3), rtol=1e-12, atol=1e-15)
    assert opt.steps == 1


def test_adam_converges_on_quadratic() -> None:
    target = np.linspace(-2, 2, 10)
    scales = np.logspace(-1, 1, 10)
    v = np.zeros(10)
    opt = ZOAdam(10, lr=0.02)
    for _ in range(2000):
        v = opt.step(v, scales * (v - target))
    np.testing.assert_allclose(v, target, atol=5e-3)


def test_optimizers_keep_dtype_and_do_not_mutate() -> None:
    v = np.ones(3, dtype=np.float32)
    for opt in (ZOAdam(3), ZOSGD(3, lr=0.1, momentum=0.9)):
        out = opt.step(v, np.ones(3))
        assert out.dtype == np.float32
        np.testing.assert_array_equal(v, 1.0)


def test_sgd_momentum_closed_form() -> None:
    opt = ZOSGD(2, lr=0.1, momentum=0.5)
    g1, g2 = np.array([1.0, -2.0]), np.array([0.5, 0.5])
    v1 = opt.step(np.zeros(2), g1)
    v2 = opt.step(v1, g2)
    np.testing.assert_allclose(v1, -0.1 * g1)
    np.testing.assert_allclose(v2, v1 - 0.1 * (g2 + 0.5 * g1))


def test_adam_default_float64_update_is_unchanged() -> None:
    """The default (float64 state) takes exactly the steps it took before the float16 option existed."""
    rng = np.random.default_rng(4)
    opt = ZOAdam(6, lr=0.03, eps=1e-3)
    m, s, v = np.zeros(6), np.zeros(6), rng.standard_normal(6).astype(np.float32)
    for t in range(1, 40):
        g = rng.standard_normal(6) * 10.0 ** rng.uniform(-5, -1)
        m = 0.9 * m + (1.0 - 0.9) * g
        s = 0.999 * s + (1.0 - 0.999) * g * g
        expected = (v.astype(np.float64) - 0.03 * (m / (1.0 - 0.9**t)) / (np.sqrt(s / (1.0 - 0.999**t)) + 1e-3)).astype(np.float32)
        v_new = opt.step(v, g)
        np.testing.assert_array_equal(v_new, expected)
        v = v_new
    assert opt.exp_avg.dtype == opt.exp_avg_sq.dtype == np.float64


def test_clip_norm_keeps_direction_and_short_vectors() -> None:
    g = np.array([3.0, -4.0])
    np.testing.assert_allclose(clip_norm(g, 1.0), g / 5.0)
    assert clip_norm(g, 5.0) is g and clip_norm(g, 9.0) is g


def test_adam_clip_bounds_an_outlier_by_the_rms_of_the_estimates_so_far() -> None:
    """--clip-estimate: the first estimate passes whole; later ones are cut to clip x the RMS norm seen so far."""
    rng = np.random.default_rng(5)
    clipped, plain = ZOAdam(4, clip=2.0), ZOAdam(4)
    v = c = np.zeros(4)
    first = np.array([0.0, 0.0, 30.0, 0.0])  # no history yet: taken as it is
    np.testing.assert_array_equal(clipped.step(v, first), plain.step(v, first))
    for _ in range(50):
        g = rng.standard_normal(4) * 0.1
        v, c = clipped.step(v, g), plain.step(c, g)
    limit = clipped.clip_limit()
    rms = math.sqrt(float(np.sum(clipped.exp_avg_sq)) / (1.0 - 0.999**clipped.steps))
    assert limit == pytest.approx(2.0 * rms)
    outlier = np.array([0.0, 100.0, 0.0, 0.0])
    before = clipped.exp_avg.copy()
    clipped.step(v, outlier)
    # The moments took the outlier shortened to the limit, not the outlier.
    np.testing.assert_allclose(clipped.exp_avg, 0.9 * before + 0.1 * outlier * (limit / 100.0))
    small = ZOAdam(4, clip=2.0)
    small.step(np.zeros(4), np.ones(4))
    w = small.step(np.zeros(4), np.full(4, 0.5))  # inside the limit: the same step as without clipping
    reference = ZOAdam(4)
    reference.step(np.zeros(4), np.ones(4))
    np.testing.assert_array_equal(w, reference.step(np.zeros(4), np.full(4, 0.5)))


def test_adam_clip_resumes_exactly_and_refuses_what_cannot_work() -> None:
    rng = np.random.default_rng(6)
    gs = [rng.standard_normal(3) * 10.0 ** rng.uniform(-3, 1) for _ in range(30)]
    whole, first = ZOAdam(3, clip=1.5), ZOAdam(3, clip=1.5)
    v = w = np.zeros(3)
    for g in gs:
        v = whole.step(v, g)
    for g in gs[:12]:
        w = first.step(w, g)
    second = ZOAdam(3, clip=1.5)  # the clip limit lives in Adam's own state: nothing else to save
    second.load_state_dict(npz_roundtrip(first.state_dict()))
    for g in gs[12:]:
        w = second.step(w, g)
    np.testing.assert_array_equal(v, w)
    for bad in (1.0, 0.5, -2.0, float("nan"), float("inf")):
        with pytest.raises(ZoodipError, match="clip"):
            ZOAdam(3, clip=bad)
    with pytest.raises(ZoodipError, match="float64"):
        ZOAdam(3, clip=2.0, state_dtype="float16")
    flat = ZOAdam(3, clip=2.0)  # a zero first estimate (a flat loss) sets no limit: later ones are not cut to 0
    flat.step(np.zeros(3), np.zeros(3))
    assert flat.clip_limit() is None
    assert np.any(flat.step(np.zeros(3), np.ones(3)) != 0.0)


def test_adam_float16_state_loses_small_squared_gradients_like_the_authors_code() -> None:
    """|g| < ~5e-3: (1 - beta2) g^2 rounds to 0 in fp16, so s stays 0 and the step is lr * m_hat / eps."""
    rng = np.random.default_rng(8)
    dim, lr, eps = 64, 1e-2, 1e-3
    opt16, opt64 = ZOAdam(dim, lr=lr, eps=eps, state_dtype="float16"), ZOAdam(dim, lr=lr, eps=eps)
    v16 = v64 = np.zeros(dim, dtype=np.float32)
    for t in range(1, 101):
        g = rng.uniform(-4e-3, 4e-3, dim)
        before = v16.astype(np.float64)
        v16, v64 = opt16.step(v16, g), opt64.step(v64, g)
        assert opt16.exp_avg.dtype == opt16.exp_avg_sq.dtype == np.float16
        assert np.all(opt16.exp_avg_sq == 0)
        m_hat = opt16.exp_avg.astype(np.float64) / (1.0 - 0.9**t)
        # Up to fp16 rounding: lr * m_hat (~1e-5) is an fp16 subnormal, rounded to a multiple of 2^-24,
        # so the step (that over eps) is within 2^-25 / eps of it; eps itself rounds to 1.0004e-3.
        np.testing.assert_allclose(before - v16, lr * m_hat / eps, rtol=2e-3, atol=2.0**-25 / eps + 1e-7)
    # float64 Adam's second moment is not 0: its steps are several times smaller.
    assert np.all(opt64.exp_avg_sq > 0)
    assert np.linalg.norm(v16) > 3 * np.linalg.norm(v64)
    # Larger gradients do reach the fp16 second moment.
    big = ZOAdam(4, state_dtype="float16")
    big.step(np.zeros(4), np.full(4, 0.05))
    assert np.all(big.exp_avg_sq > 0)


def test_adam_float16_state_matches_torch_fp16_tensors() -> None:
    """The authors' ZOAdam.update lines, run on torch fp16 tensors (CPU), give the same bits."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(9)
    dim, lr = 512, 1e-2
    opt = ZOAdam(dim, lr=lr, state_dtype="float16")
    m = torch.zeros(dim, dtype=torch.float16)
    v = torch.zeros(dim, dtype=torch.float16)
    beta1, beta2 = 0.9, 0.999
    param = np.zeros(dim, dtype=np.float32)
    scales = 10.0 ** rng.uniform(-5, -1.3, dim)  # per coordinate: some never reach the fp16 second moment
    for it in range(1, 201):
        g = rng.standard_normal(dim) * scales
        grad = torch.from_numpy(g).to(torch.float16)
        m = beta1 * m + (1 - beta1) * grad
        v = beta2 * v + (1 - beta2) * (grad ** 2)
        # The authors ran on CUDA, whose kernels read a Python number in float32 and divide a tensor by
        # one as a multiplication by its float32 reciprocal. CPU torch divides instead, and rounds the
        # number added by "+ 1e-3" to fp16 first; those two ops are spelled out the CUDA way here.
        m_hat = m * (1.0 / torch.tensor(1 - beta1 ** it, dtype=torch.float32))  # m / (1 - beta1 ** iter)
        v_hat = v * (1.0 / torch.tensor(1 - beta2 ** it, dtype=torch.float32))  # v / (1 - beta2 ** iter)
        denominator = (torch.sqrt(v_hat).float() + 1e-3).half()  # torch.sqrt(v_hat) + 1e-3
        update = lr * m_hat / denominator
        new = opt.step(param, g)
        np.testing.assert_array_equal(opt.exp_avg.view(np.uint16), m.numpy().view(np.uint16))
        np.testing.assert_array_equal(opt.exp_avg_sq.view(np.uint16), v.numpy().view(np.uint16))
        assert m_hat.dtype == update.dtype == torch.float16
        np.testing.assert_array_equal(new, (param.astype(np.float64) - update.numpy()).astype(np.float32))
        param = new
    assert np.mean(v.numpy() == 0) > 0.1  # the regime that matters was exercised


@pytest.mark.parametrize("make", [lambda: ZOAdam(4, lr=0.05), lambda: ZOSGD(4, lr=0.05, momentum=0.9),
                                  lambda: ZOAdam(4, lr=0.05, state_dtype="float16")])
def test_optimizer_state_roundtrip_is_exact(make: Callable) -> None:
    rng = np.random.default_rng(0)
    grads = rng.standard_normal((10, 4))
    a = make()
    v = np.zeros(4)
    for g in grads[:5]:
        v = a.step(v, g)
    b = make()
    b.load_state_dict(npz_roundtrip(a.state_dict()))
    va, vb = v.copy(), v.copy()
    for g in grads[5:]:
        va, vb = a.step(va, g), b.step(vb, g)
    np.testing.assert_array_equal(va, vb)


def test_optimizer_state_wrong_dim() -> None:
    with pytest.raises(ZoodipError):
        ZOAdam(4).load_state_dict(ZOAdam(5).state_dict())
    with pytest.raises(ZoodipError, match="Adam state dtype"):
        ZOAdam(4).load_state_dict(ZOAdam(4, state_dtype="float16").state_dict())
    with pytest.raises(ZoodipError, match="Adam state dtype"):
        ZOAdam(4, state_dtype="float16").load_state_dict(ZOAdam(4).state_dict())


@pytest.mark.parametrize("make", [
    lambda: ZOAdam(4, lr=0.0), lambda: ZOAdam(4, lr=float("nan")), lambda: ZOAdam(4, betas=(1.0, 0.999)),
    lambda: ZOAdam(4, betas=(0.9, -0.1)), lambda: ZOAdam(4, eps=0.0), lambda: ZOSGD(4, lr=-1.0),
    lambda: ZOSGD(4, lr=0.1, momentum=1.0), lambda: ZOAdam(0), lambda: ZOAdam(4, state_dtype="float32"),
])
def test_optimizer_invalid_args(make: Callable) -> None:
    with pytest.raises(ZoodipError):
        make()


# ---------------------------------------------------------------- SubspaceProjector

P_DIM, P_TAU, ACTIVE, RANK = 40, 24, 24, 3


def planted_history(seed: int = 0, rank: int = RANK, noise: float = 1e-6) -> np.ndarray:
    """``P_TAU`` embeddings moving in a ``rank``-D subspace of the first ``ACTIVE`` coordinates
    (plus tiny noise); the remaining coordinates never change."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal(P_DIM)
    directions = rng.standard_normal((rank, ACTIVE))
    walk = np.cumsum(rng.standard_normal((P_TAU, rank)), axis=0)
    history = np.tile(base, (P_TAU, 1))
    history[:, :ACTIVE] += walk @ directions + noise * rng.standard_normal((P_TAU, ACTIVE))
    return history


def fitted(history: np.ndarray, mode: str = "history-span", nu: float = 1e-3) -> SubspaceProjector:
    proj = SubspaceProjector(P_DIM, tau=P_TAU, nu=nu, mode=mode)  # type: ignore[arg-type]
    for v in history:
        proj.observe(v)
    return proj


def row_space(x: np.ndarray, rtol: float = 1e-10) -> np.ndarray:
    """Orthonormal rows spanning the row space of ``x``."""
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    return vt[: int(np.count_nonzero(s > rtol * s[0]))]


def spans(history: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the standardized history's span, its planted top-RANK span), computed independently."""
    centered = history - history.mean(axis=0)
    std = centered.std(axis=0)
    active = std > 1e-12
    standardized = np.zeros_like(centered)
    standardized[:, active] = centered[:, active] / std[active]
    signal = np.zeros_like(centered)
    # Without the noise the standardized rows would span exactly this RANK-D space.
    signal[:, active] = (centered[:, active] - np.mean(centered[:, active], axis=0)) / std[active]
    top = row_space(signal, rtol=1e-4)[:RANK]
    return row_space(standardized), top


def test_identity_before_first_fit() -> None:
    proj = SubspaceProjector(P_DIM, tau=P_TAU)
    g = np.random.default_rng(0).standard_normal(P_DIM)
    for v in planted_history()[:-1]:  # tau - 1 observations: no fit yet
        proj.observe(v)
        np.testing.assert_array_equal(proj.project(g), g)
    assert proj.kept_dims is None and proj.removed_dims == 0 and proj.effective_dim == P_DIM


def test_history_span_mode() -> None:
    history = planted_history()
    proj = fitted(history)
    assert proj.kept_dims == RANK
    assert proj.removed_dims == P_TAU - 1 - RANK  # centered history has rank tau - 1
    assert proj.effective_dim == P_DIM - proj.removed_dims

    span, top = spans(history)
    assert span.shape[0] == P_TAU - 1
    rng = np.random.default_rng(1)
    g = rng.standard_normal(P_DIM)

    # Idempotent.
    pg = proj.project(g)
    np.testing.assert_allclose(proj.project(pg), pg, atol=1e-12)
    # Directions orthogonal to the history's span pass unchanged ...
    g_perp = g - span.T @ (span @ g)
    np.testing.assert_allclose(proj.project(g_perp), g_perp, atol=1e-12)
    # ... including coordinates that never moved (zero-variance columns).
    e_last = np.eye(P_DIM)[-1]
    np.testing.assert_allclose(proj.project(e_last), e_last, atol=1e-12)
    # The high-variance (planted) directions are kept ...
    g_top = top.T @ (top @ g)
    np.testing.assert_allclose(proj.project(g_top), g_top, atol=1e-4 * np.linalg.norm(g_top))
    # ... and the low-variance in-span directions are removed.
    g_low = span.T @ (span @ g) - g_top
    assert np.linalg.norm(g_low) > 0.1 * np.linalg.norm(g)
    assert np.linalg.norm(proj.project(g_low)) < 1e-4 * np.linalg.norm(g_low)


def test_principal_mode() -> None:
    history = planted_history()
    proj = fitted(history, mode="principal")
    assert proj.kept_dims == RANK and proj.effective_dim == RANK
    _, top = spans(history)
    rng = np.random.default_rng(2)
    outputs = np.stack([proj.project(g) for g in rng.standard_normal((10, P_DIM))])
    # Outputs live in a RANK-D space: the planted top span.
    s = np.linalg.svd(outputs, compute_uv=False)
    assert s[RANK - 1] > 1e-3 * s[0] and s[RANK] < 1e-10 * s[0]
    residual = outputs - (outputs @ top.T) @ top
    assert np.linalg.norm(residual) < 1e-4 * np.linalg.norm(outputs)
    np.testing.assert_allclose(proj.project(outputs[0]), outputs[0], atol=1e-12)


def test_refits_use_only_the_latest_window() -> None:
    proj = SubspaceProjector(P_DIM, tau=P_TAU)
    for v in planted_history(seed=3, rank=3):
        proj.observe(v)
    assert proj.kept_dims == 3
    for v in planted_history(seed=4, rank=2)[: P_TAU - 1]:
        proj.observe(v)
    assert proj.kept_dims == 3  # not refitted yet
    proj.observe(planted_history(seed=4, rank=2)[-1])
    assert proj.kept_dims == 2 and proj.count == 2 * P_TAU


def test_motionless_history_stays_identity() -> None:
    proj = SubspaceProjector(5, tau=4, mode="principal")
    for _ in range(4):
        proj.observe(np.full(5, 0.3))
    g = np.arange(5.0)
    assert proj.kept_dims is None
    np.testing.assert_array_equal(proj.project(g), g)


def test_tau_larger_than_dim() -> None:
    proj = SubspaceProjector(5, tau=12, nu=0.2)
    rng = np.random.default_rng(5)
    for v in rng.standard_normal((12, 5)) * np.array([10.0, 5.0, 1.0, 0.1, 0.01]):
        proj.observe(v)
    assert proj.kept_dims is not None and 1 <= proj.kept_dims <= 5
    g = rng.standard_normal(5)
    np.testing.assert_allclose(proj.project(proj.project(g)), proj.project(g), atol=1e-12)


def test_standardized_pca_and_component_count() -> None:
    x = np.array([[1.0, 2.0, 7.0], [2.0, 4.0, 7.0], [3.0, 6.0, 7.0]])
    components, ratios = standardized_pca(x)
    assert components.shape == (1, 3)  # one direction of variance; the constant column is ignored
    np.testing.assert_allclose(np.abs(components[0]), [1 / math.sqrt(2), 1 / math.sqrt(2), 0.0], atol=1e-12)
    np.testing.assert_allclose(ratios, [1.0])
    assert components_to_keep(np.array([0.6, 0.3, 0.0999, 0.0001]), nu=1e-3) == 3
    assert components_to_keep(np.array([0.6, 0.3, 0.1]), nu=0.0) == 3
    assert components_to_keep(np.array([0.6, 0.4]), nu=0.5) == 1
    assert components_to_keep(np.zeros(0), nu=0.1) == 0


def fitted_in(history: np.ndarray, search_basis: np.ndarray | None, mode: str = "history-span") -> SubspaceProjector:
    proj = SubspaceProjector(P_DIM, tau=P_TAU, mode=mode, search_basis=search_basis)  # type: ignore[arg-type]
    for v in history:
        proj.observe(v)
    return proj


def projected_dimension(proj: SubspaceProjector, basis: np.ndarray) -> float:
    """E||P B u||^2 = sum_j ||P b_j||^2 over the basis columns, through project() (P is an orthogonal projector)."""
    return float(sum(np.sum(np.square(proj.project(b))) for b in basis.T))


def test_effective_dim_counts_removed_directions_inside_the_search_basis() -> None:
    history = planted_history()  # moves in coordinates 0..23 only
    eye = np.eye(P_DIM)
    outside, inside = eye[:, ACTIVE : ACTIVE + 8], eye[:, :8]
    # Without a basis: the authors' count, an int, as before.
    plain = fitted_in(history, None)
    assert plain.effective_dim == P_DIM - plain.removed_dims and isinstance(plain.effective_dim, int)
    assert fitted_in(history, eye).effective_dim == pytest.approx(plain.effective_dim, abs=1e-9)
    # The 20 removed directions lie in coordinates 0..23: none of them inside a basis of coordinates
    # 24..31, so all 8 searched dimensions survive. ("8 - removed_dims", floored at 1, said 1.)
    proj = fitted_in(history, outside)
    assert proj.removed_dims == 20
    assert proj.effective_dim == pytest.approx(8.0, abs=1e-9)
    # A basis among the moving coordinates loses what the removed directions cover there.
    proj = fitted_in(history, inside)
    assert proj.effective_dim == pytest.approx(projected_dimension(proj, inside), rel=1e-9)
    assert 1.0 < proj.effective_dim < 8.0
    # Before a fit the projection is the identity: the basis width.
    assert SubspaceProjector(P_DIM, tau=P_TAU, search_basis=outside).effective_dim == 8
    # Principal mode keeps RANK directions of coordinates 0..23: none inside `outside` (floor 1).
    assert fitted_in(history, outside, "principal").effective_dim == 1.0
    proj = fitted_in(history, inside, "principal")
    assert proj.effective_dim == pytest.approx(max(1.0, projected_dimension(proj, inside)), rel=1e-9)
    # Resume recomputes it from the checkpointed basis.
    resumed = SubspaceProjector(P_DIM, tau=P_TAU, search_basis=inside)
    resumed.load_state_dict(npz_roundtrip(fitted_in(history, inside).state_dict()))
    assert resumed.effective_dim == fitted_in(history, inside).effective_dim
    with pytest.raises(ValueError, match="search_basis must have shape"):
        SubspaceProjector(P_DIM, search_basis=np.zeros((P_DIM - 1, 2)))


def test_normalized_estimate_in_a_basis_keeps_the_scale_of_the_projected_gradient() -> None:
    """With directions in span(B) and Subspace Gradient on, the normalized estimate's mean squared
    norm is that of the gradient seen by the search, ||B^T grad||^2, up to the (T+n+1)/(T+n-1)-type
    factor the normalization leaves without a basis; "k - removed_dims" inflated it about 4x here."""
    dim, k, tau = 32, 8, 12
    rng = np.random.default_rng(11)
    basis = np.linalg.qr(rng.standard_normal((dim, k)))[0]
    # A history moving in 3 directions plus small noise: 11 - 3 = 8 removed directions, spread over
    # the whole space (so about 8 * k / dim = 2 of them inside span(B)).
    history = rng.standard_normal((tau, 3)) @ rng.standard_normal((3, dim)) + 1e-3 * rng.standard_normal((tau, dim))
    proj = SubspaceProjector(dim, tau=tau, search_basis=basis)
    for v in history:
        proj.observe(v)
    assert proj.removed_dims == k  # the old count: max(1, k - removed_dims) = 1
    assert 4.0 < proj.effective_dim < 7.5
    est = RandomGradientEstimator(dim, n=2, mu=1e-6, basis=basis)
    grad = rng.standard_normal(dim)
    linear = lambda x: float(grad @ x)  # noqa: E731
    v0 = np.zeros(dim)
    sq = []
    for _ in range(4000):
        z = est.directions(rng)
        g = est.estimate(0.0, np.array([linear(p) for p in est.perturbations(v0, z)]), z,
                         effective_dim=proj.effective_dim)
        sq.append(np.sum(np.square(proj.project(g))))
    ratio = float(np.mean(sq)) / float(np.sum(np.square(basis.T @ grad)))
    assert 0.7 < ratio < 1.4, ratio


@pytest.mark.parametrize("mode", ["history-span", "principal"])
def test_projector_resume_is_exact(mode: str) -> None:
    rng = np.random.default_rng(6)
    stream = np.cumsum(rng.standard_normal((70, 12)) * np.linspace(1, 0.01, 12), axis=0)
    grads = rng.standard_normal((70, 12))
    a = SubspaceProjector(12, tau=16, mode=mode)  # type: ignore[arg-type]
    for v in stream[:37]:
        a.observe(v)
    b = SubspaceProjector(12, tau=16, mode=mode)  # type: ignore[arg-type]
    b.load_state_dict(npz_roundtrip(a.state_dict()))
    assert b.kept_dims == a.kept_dims and b.count == a.count
    for v, g in zip(stream[37:], grads[37:]):
        np.testing.assert_array_equal(a.project(g), b.project(g))
        a.observe(v)
        b.observe(v)
    assert a.kept_dims == b.kept_dims


def test_projector_state_mismatch() -> None:
    state = SubspaceProjector(8, tau=4).state_dict()
    with pytest.raises(ZoodipError):
        SubspaceProjector(8, tau=4, mode="principal").load_state_dict(state)
    with pytest.raises(ZoodipError):
        SubspaceProjector(8, tau=5).load_state_dict(state)


@pytest.mark.parametrize("kwargs", [
    {"tau": 1}, {"tau": 0}, {"nu": 1.0}, {"nu": -0.1}, {"nu": float("nan")}, {"mode": "span"}, {"dim": -3},
])
def test_projector_invalid_args(kwargs: dict) -> None:
    with pytest.raises(ZoodipError):
        SubspaceProjector(**{"dim": 8, **kwargs})


# ---------------------------------------------------------------- integration


def zoodip_on_quadratic(steps: int, start: int = 0, state: dict | None = None) -> tuple[np.ndarray, dict]:
    """The full ZOODiP update loop on a quadratic; resumable from ``state``."""
    dim = 16
    target = np.linspace(-1, 1, dim)
    est = RandomGradientEstimator(dim, n=2, mu=1e-3)
    opt = ZOAdam(dim, lr=0.05)
    proj = SubspaceProjector(dim, tau=8)
    v = np.zeros(dim)
    if state is not None:
        v = state["v"]
        opt.load_state_dict({k[4:]: x for k, x in state.items() if k.startswith("opt/")})
        proj.load_state_dict({k[5:]: x for k, x in state.items() if k.startswith("proj/")})
    loss = lambda x: float(np.sum((x - target) ** 2))  # noqa: E731
    for step in range(start, steps):
        rng = np.random.default_rng([7, step])  # per-step stream: resumable without RNG state
        z = est.directions(rng)
        g = est.estimate(loss(v), np.array([loss(p) for p in est.perturbations(v, z)]), z,
                         effective_dim=proj.effective_dim)
        v = opt.step(v, proj.project(g))
        proj.observe(v)
    out = {"v": v, **{f"opt/{k}": x for k, x in opt.state_dict().items()},
           **{f"proj/{k}": x for k, x in proj.state_dict().items()}}
    return v, npz_roundtrip(out)


def test_full_loop_decreases_loss_and_resumes_exactly() -> None:
    target = np.linspace(-1, 1, 16)
    v_full, _ = zoodip_on_quadratic(300)
    assert np.sum((v_full - target) ** 2) < 0.05 * np.sum(target**2)
    _, mid = zoodip_on_quadratic(100)
    v_resumed, _ = zoodip_on_quadratic(300, start=100, state=mid)
    np.testing.assert_array_equal(v_resumed, v_full)


# ---------------------------------------------------------------- PartialUniformTimesteps


def test_puts_range_dtype_and_uniformity() -> None:
    puts = PartialUniformTimesteps()
    assert (puts.t_min, puts.t_max, puts.num_train_timesteps) == (500, 900, 1000)
    t = puts.sample(np.random.default_rng(0), 200_000)
    assert t.dtype == np.int64 and t.shape == (200_000,)
    assert t.min() == 500 and t.max() == 899
    counts = np.bincount(t - 500, minlength=400)
    expected = t.size / 400
    chi2 = float(np.sum((counts - expected) ** 2 / expected))
    # chi^2 with 399 degrees of freedom: mean 399, sd ~28; 540 is 5 sd out.
    assert chi2 < 540, chi2
    assert puts.sample(np.random.default_rng(0), (2, 3)).shape == (2, 3)


def test_puts_uniform_ablation() -> None:
    u = PartialUniformTimesteps.uniform(1000)
    assert (u.t_min, u.t_max) == (0, 1000)
    t = u.sample(np.random.default_rng(1), 50_000)
    assert t.min() == 0 and t.max() == 999


@pytest.mark.parametrize("args", [(-1, 900, 1000), (500, 500, 1000), (600, 500, 1000), (500, 1001, 1000),
                                  (500.0, 900, 1000), (0, 0, 0)])
def test_puts_invalid(args: tuple) -> None:
    with pytest.raises(ZoodipError):
        PartialUniformTimesteps(*args)


def test_method_settings_are_checked_without_a_run() -> None:
    """Front ends (the demo) refuse a bad method value before any export, with the SDK's own message."""
    from zoodip.config import PersonalizeConfig

    PersonalizeConfig.check_method_settings(learning_rate=0.02, clip_estimate=2.0)  # good values pass
    with pytest.raises(ZoodipError, match="^learning_rate"):
        PersonalizeConfig.check_method_settings(learning_rate=float("nan"))
    with pytest.raises(ZoodipError, match="^clip_estimate"):
        PersonalizeConfig.check_method_settings(clip_estimate=1.0)
    with pytest.raises(ZoodipError, match="clip_estimate clips against ZO-Adam's float64"):
        PersonalizeConfig.check_method_settings(clip_estimate=2.0, adam_state_dtype="float16")



def test_a_subspace_state_no_fit_leaves_is_refused_on_loading():
    """An edited checkpoint's basis of zeros, or a fit the counts cannot have made, was resumed without a word."""
    from zoodip.zo import SubspaceProjector

    rng = np.random.default_rng(0)  # a history along two directions, with a trace of the others: rows to project out
    history = rng.standard_normal((6, 2)) @ rng.standard_normal((2, 8)) + 1e-4 * rng.standard_normal((6, 8))
    projector = SubspaceProjector(8, tau=4)
    for v in history:
        projector.observe(v)
    state = projector.state_dict()
    assert len(state["basis"]) > 0
    SubspaceProjector(8, tau=4).load_state_dict(state)  # the state as written loads
    for change, needle in ((dict(basis=np.zeros_like(state["basis"])), "rows that are not orthonormal"),
                           (dict(kept_dims=state["rank"] + 1), "components kept"),
                           (dict(basis=state["basis"][:0]), "rows for"),
                           (dict(count=3), "a fit after 3 of 4 observations"),
                           (dict(kept_dims=-1), "rows without a fit")):
        with pytest.raises(ZoodipError, match=needle):
            SubspaceProjector(8, tau=4).load_state_dict({**state, **change})


def test_a_t_range_that_does_not_fit_names_the_setting_and_a_range_that_fits() -> None:
    """It said 't_min < t_max', names nobody typed, and offered (500, 900) to a model of 100 timesteps too."""
    from zoodip.errors import ZoodipError
    from zoodip.timesteps import PartialUniformTimesteps

    for t_range, steps, example in (((500, 100), 1000, "(500, 900)"), ((50, 200), 100, "(50, 90)")):
        with pytest.raises(ZoodipError, match=r"^t_range must satisfy 0 <= T_MIN < T_MAX") as refused:
            PartialUniformTimesteps.of_setting(t_range, steps)
        assert str(refused.value).endswith(f"e.g. the paper's {example}"), refused.value
    assert PartialUniformTimesteps.of_setting((50, 90), 100) == PartialUniformTimesteps(50, 90, 100)

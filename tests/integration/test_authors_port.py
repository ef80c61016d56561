"""The SDK's ZOODiP update against a NumPy port of the authors' code (ignoww/ZOODiP, train_zoodip.py).

The port below follows the authors' ``zo_step``, ``ZOAdam.update`` and the PCA block of their training
loop line by line, written with NumPy instead of torch and sklearn, at the SDK's precision (the
embedding in float32, the estimate and Adam's state in float64; their fp16 state is mirrored separately
by ``ZOAdam(state_dtype="float16")`` and tested in tests/unit/test_zo.py). Both loops see the same loss
function, the same random directions and the same timesteps, and run closed-loop: each evaluates the
loss at its own embedding. The SDK is run through ``Personalizer.train_step`` on the tiny export with a
stand-in loss, so what is compared is the composition the product runs, not the units one by one.

One deliberate difference, checked here rather than hidden: the authors fit ``PCA(n_components=tau)``,
and the centered history of tau embeddings has rank at most tau - 1, so their last component is a
zero-variance padding vector that sklearn's SVD picks arbitrarily outside the history's span; their
projection removes it too. The SDK drops such components (zo.standardized_pca).
"""
from __future__ import annotations

import numpy as np
import pytest

from zoodip.trainer import PersonalizeConfig, Personalizer

TAU = 8  # short history, so the test crosses two refits in a few dozen steps
N = 2
MU = 1e-3
LR = 1e-2
NU = 1e-3


class StandInLoss:
    """A smooth loss of the candidate embeddings that changes with the step's timestep.

    L(c) = sum_j a_j (c_j - b_j(t))^2 with a drifting target b(t): cheap, deterministic and non-trivial
    (each step sees a different function, as the denoising loss does with its noise and timestep).
    """

    def __init__(self, dim: int) -> None:
        rng = np.random.default_rng(1234)
        self.weights = rng.uniform(0.5, 2.0, dim)
        self.center = rng.normal(0.0, 0.05, dim)
        self.drift = rng.normal(0.0, 0.02, dim)
        self.forwards = 0
        self.timesteps: list[int] = []

    def value(self, candidates: np.ndarray, t: int) -> np.ndarray:
        target = self.center + self.drift * np.sin(t / 50.0)
        diff = np.asarray(candidates, dtype=np.float64) - target
        return np.sum(self.weights * diff * diff, axis=1)

    def __call__(self, ids, candidates, x_t, t, target) -> np.ndarray:
        self.timesteps.append(int(t))
        self.forwards += len(candidates)
        return self.value(candidates, int(t))


# ---- the port -------------------------------------------------------------------------------------


def authors_pca_block(buffer: list[np.ndarray], nu: float, keep_padding: bool) -> np.ndarray:
    """Their refit: StandardScaler, PCA(n_components=len(buffer)), the first index whose cumulative
    explained variance exceeds 1 - nu, and the components after it as the directions to remove."""
    history = np.stack(buffer).astype(np.float64)
    std = history.std(axis=0)  # StandardScaler: population std, a zero std divides by 1
    standardized = (history - history.mean(axis=0)) / np.where(std == 0.0, 1.0, std)
    _, singular, components = np.linalg.svd(standardized, full_matrices=False)
    explained = singular**2
    ratio = explained / explained.sum()
    cumulative = np.cumsum(ratio)
    i = next(i for i in range(len(cumulative)) if cumulative[i] > 1 - nu)
    eigenvectors = components[i + 1:]
    if not keep_padding:
        # The SDK's one difference: components of (numerically) zero variance are not part of the history.
        tol = singular[0] * max(standardized.shape) * np.finfo(np.float64).eps
        eigenvectors = eigenvectors[singular[i + 1:] > tol]
    return eigenvectors


class AuthorsZOAdam:
    """``ZOAdam`` of train_zoodip.py: estimate, scale, projection, Adam with eps 1e-3, history buffer."""

    def __init__(self, width: int, tau: int) -> None:
        self.width, self.tau = width, tau
        self.lr, self.beta1, self.beta2 = LR, 0.9, 0.999
        self.iter = 0
        self.m = self.v = None
        self.eigen_vecs: np.ndarray | None = None
        self.dim = width  # their `self.dim = 768 - eigenvecs.shape[0]`
        self.grad_buffer: list[np.ndarray] = []
        self.buffer_idx = 0

    def update_eigenvecs(self, eigenvecs: np.ndarray) -> None:
        self.eigen_vecs = eigenvecs
        self.dim = self.width - eigenvecs.shape[0]

    def update(self, param: np.ndarray, directions: np.ndarray, projected_grads: np.ndarray, n: int) -> np.ndarray:
        if self.m is None:
            self.m, self.v = np.zeros(self.width), np.zeros(self.width)
        self.iter += 1
        grad = np.zeros(self.width)
        for i in range(n):
            grad += projected_grads[i] * directions[i].astype(np.float64)
        scale = np.sqrt((self.dim + n - 1) / n) * n
        grad /= scale
        if self.eigen_vecs is not None:
            grad = grad - (grad @ self.eigen_vecs.T) @ self.eigen_vecs
        self.m = self.beta1 * self.m + (1 - self.beta1) * grad
        self.v = self.beta2 * self.v + (1 - self.beta2) * grad**2
        m_hat = self.m / (1 - self.beta1**self.iter)
        v_hat = self.v / (1 - self.beta2**self.iter)
        param = (param.astype(np.float64) - self.lr * m_hat / (np.sqrt(v_hat) + 1e-3)).astype(np.float32)
        if len(self.grad_buffer) < self.tau:
            self.grad_buffer.append(param.copy())
        else:
            self.grad_buffer[self.buffer_idx] = param.copy()
        self.buffer_idx = (self.buffer_idx + 1) % self.tau
        return param


def authors_run(v0: np.ndarray, directions: list[np.ndarray], timesteps: list[int], loss: StandInLoss,
                keep_padding: bool) -> tuple[list[np.ndarray], list[int]]:
    """Their loop (``zo_step`` + the refit every tau steps); returns v after every step and their dim."""
    optim = AuthorsZOAdam(len(v0), TAU)
    param, trajectory, dims = v0.astype(np.float32), [], []
    for step, (z, t) in enumerate(zip(directions, timesteps), start=1):
        dims.append(optim.dim)
        loss2 = loss.value(param[None], t)[0]
        perturbed = (param.astype(np.float64)[None] + MU * z.astype(np.float64)).astype(np.float32)
        projected_grads = (loss.value(perturbed, t) - loss2) / MU
        param = optim.update(param, z, projected_grads, N)
        trajectory.append(param)
        if step % TAU == 0:
            optim.update_eigenvecs(authors_pca_block(optim.grad_buffer, NU, keep_padding))
    return trajectory, dims


# ---- the comparison -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sdk_run(tiny_export, photos, tmp_path_factory):
    """The SDK's loop for 3 tau steps: its embeddings, directions, timesteps and normalizing dimensions."""
    config = PersonalizeConfig(export_dir=tiny_export, images=photos, output_dir=tmp_path_factory.mktemp("port") / "run",
                               placeholder_token="<port>", initializer_token="star", n=N, mu=MU, learning_rate=LR,
                               tau=TAU, nu=NU, curvature_fraction=0, threads=1)
    losses: list[StandInLoss] = []
    trainer = Personalizer(config, make_loss=lambda model, pid, batched, clip_skip: losses.append(StandInLoss(model.hidden_size)) or losses[0])
    directions: list[np.ndarray] = []
    draw = trainer.estimator.directions
    trainer.estimator.directions = lambda rng: directions.append(draw(rng)) or directions[-1]
    v0 = trainer.v.copy()
    trajectory, dims = [], []
    for _ in range(3 * TAU):
        dims.append(trainer.projector.effective_dim)
        trainer.train_step()
        trajectory.append(trainer.v.copy())
    return v0, trajectory, directions, losses[0].timesteps, dims, StandInLoss(trainer.model.hidden_size)


def test_sdk_matches_the_authors_update_up_to_the_first_refit(sdk_run):
    v0, trajectory, directions, timesteps, _, loss = sdk_run
    assert len(timesteps) == len(directions) == 3 * TAU  # one loss call per step (batched candidates)
    ported, _ = authors_run(v0, directions, timesteps, loss, keep_padding=True)
    # Steps 1..tau (the refit happens after step tau, so step tau + 1 is the first to use it).
    for step in range(TAU):
        np.testing.assert_allclose(trajectory[step], ported[step], rtol=0, atol=1e-12)
    assert not np.array_equal(trajectory[0], v0)  # it moved: the comparison is not of two constants


def test_after_a_refit_the_only_difference_is_the_padding_component(sdk_run):
    v0, trajectory, directions, timesteps, sdk_dims, loss = sdk_run
    faithful, their_dims = authors_run(v0, directions, timesteps, loss, keep_padding=True)
    without_padding, dims_without = authors_run(v0, directions, timesteps, loss, keep_padding=False)
    width = len(v0)
    # Their count removes one more direction than the SDK's: the padding vector.
    assert their_dims[TAU] == dims_without[TAU] - 1 < width
    assert sdk_dims[TAU] == dims_without[TAU]
    # With it left out, the SDK and the port agree through two refits.
    for step in range(3 * TAU):
        np.testing.assert_allclose(trajectory[step], without_padding[step], rtol=0, atol=1e-12)
    # And it is a real difference (so the test above is not vacuous): the faithful port drifts.
    assert np.max(np.abs(faithful[-1] - trajectory[-1])) > 1e-9

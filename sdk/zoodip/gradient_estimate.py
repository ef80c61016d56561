"""The random gradient estimate of one ZOODiP step: finite differences of the loss along random directions."""
from __future__ import annotations

import math

import numpy as np

from .errors import ZoodipError
from .validation import as_vector, finite_float, positive_int

# How a step's n directions are drawn: independent Gaussians (the paper), or an orthogonal frame (orthogonal_frame).
DIRECTIONS: tuple[str, ...] = ("gaussian", "orthogonal")
# The largest finite-difference step accepted. A direction has norm about sqrt(k) (5.5 in a 30-dimensional search,
# 28 in SD1.5's 768), so mu = 1 already moves the embedding by several times a token embedding's own norm: far past
# where a finite difference estimates a gradient (the paper uses 1e-3), and larger values overflow float32.
MU_MAX = 1.0


def check_mu(mu: float, name: str = "mu (finite-difference step)") -> float:
    """``mu`` as a float in (0, MU_MAX], else one ZoodipError naming ``name``."""
    mu = finite_float(name, mu, low=0.0)
    if mu > MU_MAX:
        raise ZoodipError(f"{name} {mu:g} is too large: it is the finite-difference step, which must stay far below "
                          f"a token embedding's size (the paper uses 1e-3); use at most {MU_MAX:g}")
    return mu


class RandomGradientEstimator:
    """Forward-difference random gradient estimator (RGE, Nesterov & Spokoiny 2017).

    ``g = c * sum_i (L(v + mu z_i) - L(v)) / mu * z_i`` with ``z_i ~ N(0, I_dim)``.
    Since ``E[z z^T] = I``, ``E[(L(v + mu z) - L(v)) / mu * z] = grad L(v) + O(mu)``.

    Args:
        dim: length of the optimized vector (the embedding width, e.g. 768).
        n: number of random directions per step (the paper uses 2). Each costs one forward pass.
        mu: finite-difference step. Too small and the loss difference drowns in the INT8 model's
            rounding noise; too large and the O(mu) bias grows. The paper uses 1e-3.
        normalize: ``c = 1 / (n * sqrt((d + n - 1) / n))``, the ZOODiP authors' code scaling (it
            shrinks the estimate by roughly ``sqrt(d / n)``, the norm inflation of a random-direction
            estimate, so that Adam's ``eps`` and the learning rate keep their scale). Otherwise
            ``c = 1 / n`` and the estimate is unbiased as ``mu -> 0``.
    """

    def __init__(self, dim: int, n: int = 2, mu: float = 1e-3, normalize: bool = True,
                 basis: np.ndarray | None = None, directions: str = "gaussian") -> None:
        self.dim = positive_int("dim", dim)
        if directions not in DIRECTIONS:
            raise ZoodipError(f"directions must be one of {', '.join(DIRECTIONS)}, got {directions!r}")
        self.orthogonal = directions == "orthogonal"
        self.n = positive_int("n (random directions per step)", n)
        self.mu = check_mu(mu)
        self.normalize = bool(normalize)
        self.basis = None if basis is None else np.asarray(basis, dtype=np.float32)
        if self.basis is not None and (self.basis.ndim != 2 or self.basis.shape[0] != self.dim
                                       or not 1 <= self.basis.shape[1] <= self.dim):
            raise ValueError(f"basis must have shape ({self.dim}, k) with 1 <= k <= {self.dim}, got {self.basis.shape}")
        if self.orthogonal and self.n > self.search_dim:
            raise ZoodipError(f"orthogonal directions: n={self.n} is more than the {self.search_dim} dimensions searched; "
                              f"use n={self.search_dim} or fewer")

    @property
    def search_dim(self) -> int:
        """The dimension directions are drawn from: ``k`` with a basis, else ``dim``."""
        return self.dim if self.basis is None else self.basis.shape[1]

    def directions(self, rng: np.random.Generator) -> np.ndarray:
        """``n`` standard Gaussian directions, float32 ``[n, dim]``.

        float32 because the perturbed embedding goes into a float32 ONNX graph: ``v + mu z`` is
        rounded to float32 anyway, and generating float32 normals is cheaper. The rounding shifts
        the applied perturbation by ~1e-6 of ``mu z`` (for embedding entries ~1e-2), far below the
        estimator's own variance. With a ``basis`` (orthonormal columns ``B``, ``[dim, k]``) the
        directions are ``B u`` with ``u ~ N(0, I_k)``: standard Gaussian inside its span.
        """
        u = rng.standard_normal((self.n, self.search_dim), dtype=np.float32)
        if self.orthogonal:
            u = orthogonal_frame(u)
        return u if self.basis is None else u @ self.basis.T

    def perturbations(self, v: np.ndarray, z: np.ndarray) -> np.ndarray:
        """The points to evaluate: ``v + mu z_i`` as ``[n, dim]``, in ``v``'s float dtype."""
        v = as_vector("v", v, self.dim)
        z = self._check_directions(z)
        dtype = v.dtype if np.issubdtype(v.dtype, np.floating) else np.dtype(np.float64)
        # Sum in float64 and round once to the output dtype.
        return (v.astype(np.float64)[None, :] + self.mu * z.astype(np.float64)).astype(dtype)

    def scale(self, effective_dim: float | None = None) -> float:
        """The factor ``c`` multiplying ``sum_i (L_i - L0) / mu * z_i``.

        ``effective_dim`` replaces :attr:`search_dim` in the normalized scaling. The authors' code
        uses the dimension left after subspace projection (``dim`` minus the removed directions);
        pass :attr:`SubspaceProjector.effective_dim` to do the same. It need not be an integer:
        with a ``basis`` it is the expected squared norm of a projected direction (see there).
        """
        if not self.normalize:
            return 1.0 / self.n
        d = self.search_dim if effective_dim is None else finite_float("effective_dim", effective_dim, low=0.0)
        return 1.0 / (self.n * math.sqrt((d + self.n - 1) / self.n))

    def estimate(self, loss0: float, losses: np.ndarray, z: np.ndarray,
                 effective_dim: float | None = None) -> np.ndarray:
        """The gradient estimate, float64 ``[dim]``.

        Args:
            loss0: loss at ``v``.
            losses: ``[n]`` losses at ``perturbations(v, z)``.
            z: the ``[n, dim]`` directions from :meth:`directions`.
            effective_dim: see :meth:`scale`.
        """
        z = self._check_directions(z)
        losses = np.asarray(losses, dtype=np.float64).reshape(-1)
        if losses.shape != (self.n,):
            raise ValueError(f"losses must have shape ({self.n},), got {losses.shape}")
        if not (math.isfinite(loss0) and np.all(np.isfinite(losses))):
            raise ZoodipError(
                "the training loss is not finite (NaN or inf); lower the learning rate or mu, "
                "or check that the model export is healthy"
            )
        slopes = (losses - float(loss0)) / self.mu  # directional derivatives along each z_i
        return (slopes @ z.astype(np.float64)) * self.scale(effective_dim)

    def _check_directions(self, z: np.ndarray) -> np.ndarray:
        z = np.asarray(z)
        if z.shape != (self.n, self.dim):
            raise ValueError(f"directions must have shape ({self.n}, {self.dim}), got {z.shape}")
        return z


def orthogonal_frame(u: np.ndarray) -> np.ndarray:
    """``n`` Gaussian rows ``[n, k]`` -> ``n`` orthogonal rows of norm ``sqrt(k)``, uniformly oriented, float32.

    The same second moment as Gaussian directions (``E[z z^T] = I``), but no two directions repeat each other's
    information: with ``n = k`` the estimate is the exact (finite-difference) gradient in the searched space.
    """
    q, r = np.linalg.qr(np.asarray(u, dtype=np.float64).T)  # [k, n]
    q = q * np.where(np.diag(r) < 0, -1.0, 1.0)  # signs from r: a uniformly distributed (Haar) frame
    return (q.T * math.sqrt(u.shape[1])).astype(np.float32)


class EstimatorSchedule:
    """The estimator each step uses: ``early`` for the first ``switch_step`` steps, then ``late``.

    A two-phase run (``--orthogonal-after``): Gaussian directions at ``n + 1`` forwards a step while the gradient
    is large against their noise, then orthogonal frames, whose estimate at ``n = k`` is the exact
    finite-difference gradient in the searched space at ``k + 1`` forwards a step. The phase is a pure function
    of the step, so a resumed run switches exactly where an uninterrupted one would.
    """

    def __init__(self, early: RandomGradientEstimator, late: RandomGradientEstimator | None = None,
                 switch_step: int | None = None) -> None:
        if (late is None) != (switch_step is None):
            raise ValueError("a late estimator and its switch step go together")
        if late is not None and (late.dim != early.dim or late.search_dim != early.search_dim):
            raise ValueError("the late estimator must search the same space as the early one")
        self.early, self.late = early, late
        self.switch_step = None if switch_step is None else int(switch_step)
        if self.switch_step is not None and self.switch_step < 0:
            raise ValueError(f"switch_step must be >= 0, got {switch_step}")

    @classmethod
    def two_phase(cls, early: RandomGradientEstimator, after_forwards: int, late_n: int | None = None) -> "EstimatorSchedule":
        """``early`` while fewer than ``after_forwards`` forwards are spent, then orthogonal frames of ``late_n``
        directions (default: the searched dimension) in the same space, with the same ``mu`` and scaling."""
        after_forwards = positive_int("orthogonal_after (forwards)", after_forwards, minimum=0)
        k = early.search_dim
        if late_n is None and early.basis is None:
            raise ZoodipError(f"orthogonal_after without a search subspace: a late step would cost {k + 1} forwards; "
                              "give orthogonal_n=N, or keep the curvature subspace (or add vocabulary_variance=FRACTION)")
        late_n = k if late_n is None else positive_int("orthogonal_n", late_n)
        if late_n > k:
            raise ZoodipError(f"orthogonal_n={late_n} is more than the {k} dimensions searched; use {k} or fewer")
        late = RandomGradientEstimator(early.dim, n=late_n, mu=early.mu, normalize=early.normalize, basis=early.basis,
                                       directions="orthogonal")
        return cls(early, late, -(-after_forwards // (early.n + 1)))  # ceil: the early phase spends at least that many

    def at(self, step: int) -> RandomGradientEstimator:
        """The estimator of step ``step`` (0-based)."""
        return self.early if self.late is None or step < self.switch_step else self.late

    def forwards_for(self, steps: int) -> int:
        """UNet forwards spent by the first ``steps`` steps."""
        if self.late is None:
            return steps * (self.early.n + 1)
        early = min(steps, self.switch_step)
        return early * (self.early.n + 1) + (steps - early) * (self.late.n + 1)

    def steps_within(self, forwards: int) -> int:
        """The most steps whose forwards fit in ``forwards``."""
        if self.late is None or forwards <= self.forwards_for(self.switch_step):
            return forwards // (self.early.n + 1)
        return self.switch_step + (forwards - self.forwards_for(self.switch_step)) // (self.late.n + 1)

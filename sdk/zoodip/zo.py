"""The ZOODiP method: forward-only optimization of a textual-inversion embedding.

ZOODiP (Seo, Jeong, Lee & Chun, CVPR 2025, arXiv 2503.14868) trains the placeholder token's
embedding ``v`` without backpropagation. One training step is:

1. Sample a timestep from the informative middle of the schedule
   (:class:`zoodip.timesteps.PartialUniformTimesteps`, "PUTS") and noise a training latent.
2. Evaluate the denoising loss at ``v`` and at ``n`` random perturbations ``v + mu z_i`` and turn
   the loss differences into a gradient estimate (:class:`RandomGradientEstimator`, in
   :mod:`zoodip.gradient_estimate`).
3. Remove the estimate's components along directions in which the recent trajectory of ``v`` has
   barely moved (:class:`SubspaceProjector`, the paper's "subspace gradient"): the trajectory of a
   textual-inversion embedding lives in a low-dimensional subspace, so noise in the other in-span
   directions is only noise.
4. Update ``v`` with Adam (:class:`ZOAdam`) and record the new ``v`` in the projector's history.

Every stateful piece has ``state_dict()`` / ``load_state_dict()`` with NumPy arrays and plain
scalars only, so a checkpoint is an ``.npz`` readable without pickle and resuming is bit-exact.

Dtypes: random directions are float32 (see :meth:`RandomGradientEstimator.directions`); gradient
estimates, optimizer moments and PCA bases are float64 (Adam's moments optionally float16, as the
authors' code keeps them); updated embeddings keep the caller's dtype.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, Union, get_args

import numpy as np

from .errors import ZoodipError
from .gradient_estimate import DIRECTIONS, RandomGradientEstimator, orthogonal_frame  # noqa: F401 (zoodip.zo.X stays public)
from .validation import as_vector, check_state_shape, finite_float, positive_int

StateValue = Union[np.ndarray, int, float, str]
StateDict = dict[str, StateValue]
ProjectionMode = Literal["history-span", "principal"]
PROJECTION_MODES: tuple[str, ...] = get_args(ProjectionMode)
# ZO-Adam's moment storage: "float64" (default) or "float16", the ZOODiP authors' (see ZOAdam).
ADAM_STATE_DTYPES: tuple[str, ...] = ("float64", "float16")
PAPER_TAU = 128  # Subspace Gradient's history length in the paper, for 768/1024-wide text encoders
PAPER_NU = 1e-3  # and the fraction of the history's variance it drops


# --------------------------------------------------------------------------------------------
# Optimizers
# --------------------------------------------------------------------------------------------


def _update_dtype(v: np.ndarray) -> np.dtype:
    return v.dtype if np.issubdtype(v.dtype, np.floating) else np.dtype(np.float64)


class ZOAdam:
    """Adam (Kingma & Ba 2015) with bias correction, fed with zeroth-order gradient estimates.

    ``v <- v - lr * m_hat / (sqrt(s_hat) + eps)``. The default ``eps = 1e-3`` is the ZOODiP
    authors' value: much larger than the usual 1e-8, it damps coordinates whose second moment is
    tiny, which with noisy estimates are mostly noise. ``lr`` may be changed between steps (schedules).

    ``state_dtype``: ``"float64"`` (default) keeps the moments in float64 so that many small steps
    accumulate without rounding. ``"float16"`` reproduces the authors' code, whose moments are fp16
    tensors (:meth:`_step_float16`): there ``(1 - beta2) g^2`` rounds to 0 for ``|g|`` below about
    5.5e-3, and a subnormal ``v`` no longer decays (``beta2 * v`` rounds back to ``v``). Where the
    estimates stay that small the second moment stays 0 and the step is ``lr * m_hat / eps``,
    momentum SGD with a larger step than float64 Adam takes on the same estimates; where some
    entries are larger it is a second moment biased low (benchmarks/README.md).

    ``clip`` (not in the paper; None: off): before each step the estimate's norm is clipped to ``clip``
    times the RMS norm of the estimates Adam has taken so far (:meth:`clip_limit`). One draw's gradient of
    the denoising loss is heavy-tailed (a few draws hold much of its squared norm; measured in
    benchmarks/README.md, "Clipping the estimates"), and a random-direction estimate multiplies that by the
    direction noise, so rare huge estimates dominate both moments; clipping them trades a little of the mean
    for much less variance. The limit is relative to the clipped estimates' own RMS, which is why ``clip``
    must exceed 1 (at 1 or below it would shrink every step), and it reads the second moment, which the fp16
    state keeps near 0: float64 state only.
    """

    def __init__(self, dim: int, lr: float = 1e-2, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-3, state_dtype: str = "float64", clip: float | None = None) -> None:
        self.dim = positive_int("dim", dim)
        self.lr = finite_float("lr (learning rate)", lr, low=0.0)
        if len(betas) != 2:
            raise ZoodipError(f"betas must be two numbers (beta1, beta2), got {betas!r}")
        self.betas = (
            finite_float("beta1", betas[0], low=0.0, low_open=False, high=1.0, high_open=True),
            finite_float("beta2", betas[1], low=0.0, low_open=False, high=1.0, high_open=True),
        )
        self.eps = finite_float("eps", eps, low=0.0)
        if state_dtype not in ADAM_STATE_DTYPES:
            raise ZoodipError(f"Adam state dtype must be one of {', '.join(ADAM_STATE_DTYPES)}, got {state_dtype!r}")
        self.state_dtype = str(state_dtype)
        self.clip = None if clip is None else finite_float("clip (estimate clipping, x RMS norm)", clip, low=1.0)
        if self.clip is not None and self.state_dtype != "float64":
            raise ZoodipError("clipping the estimates reads Adam's second moment, which the float16 state keeps "
                              "near 0: use the float64 state, or no clipping")
        self.steps = 0
        self.exp_avg = np.zeros(self.dim, dtype=self.state_dtype)
        self.exp_avg_sq = np.zeros(self.dim, dtype=self.state_dtype)

    def step(self, v: np.ndarray, g: np.ndarray) -> np.ndarray:
        """Return the updated ``v`` (``v`` itself is not modified)."""
        v = as_vector("v", v, self.dim)
        g = as_vector("g", g, self.dim).astype(np.float64)  # exact for float32 estimates: both paths see the same g
        limit = self.clip_limit()
        if limit is not None:
            g = clip_norm(g, limit)
        self.steps += 1
        if self.state_dtype == "float16":
            update = self._step_float16(g).astype(np.float64)
        else:
            update = self._step_float64(g)
        return (v.astype(np.float64) - update).astype(_update_dtype(v))

    def clip_limit(self) -> float | None:
        """The largest norm the next estimate may have: ``clip * sqrt(sum(s_hat))``, where ``s_hat`` is the
        bias-corrected second moment, so ``sum(s_hat)`` is the mean squared norm of the (clipped) estimates
        so far. None without clipping and until a nonzero estimate has been seen (a limit of 0 would stay 0)."""
        if self.clip is None or self.steps == 0:
            return None
        mean_square = float(np.sum(self.exp_avg_sq)) / (1.0 - self.betas[1] ** self.steps)
        return self.clip * float(np.sqrt(mean_square)) if mean_square > 0.0 else None

    def _step_float64(self, g: np.ndarray) -> np.ndarray:
        beta1, beta2 = self.betas
        self.exp_avg = beta1 * self.exp_avg + (1.0 - beta1) * g
        self.exp_avg_sq = beta2 * self.exp_avg_sq + (1.0 - beta2) * g * g
        # Bias correction: the moments start at zero, so early averages are scaled down.
        m_hat = self.exp_avg / (1.0 - beta1**self.steps)
        s_hat = self.exp_avg_sq / (1.0 - beta2**self.steps)
        return self.lr * m_hat / (np.sqrt(s_hat) + self.eps)

    def _step_float16(self, g: np.ndarray) -> np.ndarray:
        """The authors' fp16 update, rounding where a torch fp16 tensor would; returns the fp16 update.

        Mirrors ``ZOAdam.update`` in ignoww/ZOODiP, train_zoodip.py: ``text_encoder.half()`` makes
        the embedding row fp16, so ``self.m``/``self.v`` (``torch.zeros_like(update_param)``) and
        ``grad`` (built from fp16 ``z``) are fp16, and each of these lines is a chain of fp16 ops:

            self.m = self.beta1 * self.m + (1 - self.beta1) * grad
            self.v = self.beta2 * self.v + (1 - self.beta2) * (grad ** 2)
            m_hat = self.m / (1 - self.beta1 ** self.iter)
            v_hat = self.v / (1 - self.beta2 ** self.iter)
            update_param.sub_(self.lr * m_hat / (torch.sqrt(v_hat) + 1e-3))

        Every torch op on fp16 tensors computes in float32 ("opmath", Python scalars cast to
        float32) and rounds its result to fp16 once; that is what each ``h(...)`` below does. As
        on CUDA, where their runs were made, a tensor divided by a Python number is multiplied by
        the float32 reciprocal. numpy's own float16 arithmetic would round the Python scalars to
        fp16 first (0.999 -> 0.99902), hence the explicit float32 casts. Not mirrored: the
        embedding itself stays in the SDK's dtype (the caller's; theirs is fp16) and ``g`` arrives
        from float64 estimation and projection (theirs are fp16 ops); ``g`` is rounded to fp16 here.
        """
        f32, f16 = np.float32, np.float16

        def h(x: np.ndarray) -> np.ndarray:  # one torch fp16 op: float32 result rounded to fp16
            return np.asarray(x, dtype=f32).astype(f16)

        def f(x: np.ndarray) -> np.ndarray:
            return x.astype(f32)

        beta1, beta2 = self.betas
        grad = h(g)
        self.exp_avg = h(f(h(f32(beta1) * f(self.exp_avg))) + f(h(f32(1.0 - beta1) * f(grad))))
        grad_sq = h(f(grad) * f(grad))
        self.exp_avg_sq = h(f(h(f32(beta2) * f(self.exp_avg_sq))) + f(h(f32(1.0 - beta2) * f(grad_sq))))
        m_hat = h(f(self.exp_avg) * (f32(1.0) / f32(1.0 - beta1**self.steps)))
        v_hat = h(f(self.exp_avg_sq) * (f32(1.0) / f32(1.0 - beta2**self.steps)))
        denominator = h(f(h(np.sqrt(f(v_hat)))) + f32(self.eps))
        return h(f(h(f32(self.lr) * f(m_hat))) / f(denominator))

    def state_dict(self) -> StateDict:
        return {"exp_avg": self.exp_avg.copy(), "exp_avg_sq": self.exp_avg_sq.copy(), "steps": self.steps}

    def load_state_dict(self, state: Mapping[str, StateValue]) -> None:
        exp_avg = check_state_shape("optimizer state", "exp_avg", state["exp_avg"], (self.dim,))  # type: ignore[arg-type]
        exp_avg_sq = check_state_shape("optimizer state", "exp_avg_sq", state["exp_avg_sq"], (self.dim,))  # type: ignore[arg-type]
        for key, array in (("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq)):
            if array.dtype != np.dtype(self.state_dtype):
                raise ZoodipError(
                    f"checkpoint optimizer state '{key}' is {array.dtype} but this run keeps Adam's state in "
                    f"{self.state_dtype}; resume with the Adam state dtype the checkpoint was made with"
                )
        self.exp_avg = np.array(exp_avg, dtype=self.state_dtype)
        self.exp_avg_sq = np.array(exp_avg_sq, dtype=self.state_dtype)
        self.steps = int(state["steps"])  # type: ignore[arg-type]


def clip_norm(g: np.ndarray, limit: float) -> np.ndarray:
    """``g`` scaled down to norm ``limit`` where it is longer (its direction kept); else ``g`` itself."""
    norm = float(np.linalg.norm(g))
    return g * (limit / norm) if norm > limit else g


class ZOSGD:
    """Plain SGD with optional heavy-ball momentum: ``b <- momentum b + g``, ``v <- v - lr b``.

    A baseline for ablations; ZOODiP uses :class:`ZOAdam`.
    """

    def __init__(self, dim: int, lr: float, momentum: float = 0.0) -> None:
        self.dim = positive_int("dim", dim)
        self.lr = finite_float("lr (learning rate)", lr, low=0.0)
        self.momentum = finite_float("momentum", momentum, low=0.0, low_open=False, high=1.0, high_open=True)
        self.steps = 0
        self.buffer = np.zeros(self.dim, dtype=np.float64)

    def step(self, v: np.ndarray, g: np.ndarray) -> np.ndarray:
        """Return the updated ``v`` (``v`` itself is not modified)."""
        v = as_vector("v", v, self.dim)
        g = as_vector("g", g, self.dim).astype(np.float64)
        self.steps += 1
        self.buffer = self.momentum * self.buffer + g
        return (v.astype(np.float64) - self.lr * self.buffer).astype(_update_dtype(v))

    def state_dict(self) -> StateDict:
        return {"buffer": self.buffer.copy(), "steps": self.steps}

    def load_state_dict(self, state: Mapping[str, StateValue]) -> None:
        buffer = check_state_shape("optimizer state", "buffer", state["buffer"], (self.dim,))  # type: ignore[arg-type]
        self.buffer = np.array(buffer, dtype=np.float64)
        self.steps = int(state["steps"])  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Subspace gradient
# --------------------------------------------------------------------------------------------


def standardized_pca(history: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """PCA of a ``[rows, dim]`` history after standardizing each column.

    Columns are centered and divided by their standard deviation (population, ``ddof=0``);
    constant columns are left at zero rather than divided by zero.

    Returns:
        ``(components, ratios)``: the orthonormal principal directions ``[r, dim]`` (rows, by
        decreasing variance) and their explained-variance ratios ``[r]``, where ``r`` is the
        numerical rank of the standardized history. Directions with (numerically) zero variance
        are dropped: a thin SVD pads them with arbitrary vectors orthogonal to the history, which
        say nothing about it.
    """
    x = np.asarray(history, dtype=np.float64)
    # Exactly constant columns: set to zero directly, because "x - mean" can leave ~1e-18 residue
    # that dividing by a ~1e-18 std would blow up to O(1).
    constant = np.all(x == x[:1], axis=0)
    centered = np.where(constant, 0.0, x - x.mean(axis=0))
    std = centered.std(axis=0)
    standardized = centered / np.where(std > 0.0, std, 1.0)
    _, s, vt = np.linalg.svd(standardized, full_matrices=False)
    tol = (s[0] if s.size else 0.0) * max(standardized.shape) * np.finfo(np.float64).eps
    rank = int(np.count_nonzero(s > tol))
    if rank == 0:
        return np.zeros((0, x.shape[1])), np.zeros(0)
    power = s[:rank] ** 2
    return vt[:rank], power / power.sum()


def components_to_keep(ratios: np.ndarray, nu: float) -> int:
    """The fewest leading components whose cumulative explained variance reaches ``1 - nu``."""
    if ratios.size == 0:
        return 0
    cumulative = np.cumsum(ratios)
    # side="left": first index whose cumulative ratio is >= 1 - nu. Rounding can leave the total a
    # hair under 1 (nu = 0), hence the clip to the number of components.
    return min(int(np.searchsorted(cumulative, 1.0 - nu, side="left")) + 1, ratios.size)


class SubspaceProjector:
    """The "subspace gradient" of ZOODiP: project gradient estimates using the embedding's history.

    Keeps the last ``tau`` values of ``v`` in a ring buffer (:meth:`observe`, once per step after
    the update). Every ``tau`` observations it refits a PCA of the standardized history
    (:func:`standardized_pca`) and keeps ``k`` = :func:`components_to_keep` ``(ratios, nu)``
    leading directions. Until the first fit, :meth:`project` is the identity.

    Modes:
        ``"history-span"`` (default, the authors' code): subtract from ``g`` its components along
        the low-variance directions of the history's span (components ``k..r``), ``g - U_low^T
        (U_low g)``. Directions orthogonal to the history's span (the standardized, centered
        history's row space) pass unchanged, so the optimizer can still explore them.
        The authors fit PCA with ``tau`` components, so their ``U_low`` also contains the
        zero-variance padding directions of the SVD, which are arbitrary vectors outside the span;
        we drop those (see :func:`standardized_pca`), which removes at most one direction fewer
        when ``tau <= dim`` (the centered history has rank ``<= tau - 1``).
        ``"principal"``: keep only ``g``'s part in the top-``k`` span, ``U_k^T (U_k g)``. The
        next history varies (almost) only inside that span, so refits tend to keep fewer
        components until training stalls (measured on the world task: benchmarks/README.md).

    A history with no variance at all (``v`` never moved) carries no subspace, so such a fit
    resets the projector to the identity.

    ``search_basis``: the orthonormal columns ``B`` (``[dim, k]``) the random directions are drawn
    in (:attr:`RandomGradientEstimator.basis`), or None for the whole space. It changes only
    :attr:`effective_dim`, the dimension the estimate is normalized by.

    Note the PCA is fitted in standardized coordinates (columns divided by their std) but applied
    to ``g`` in raw coordinates, exactly as the authors do.
    """

    def __init__(self, dim: int, tau: int = PAPER_TAU, nu: float = PAPER_NU, mode: ProjectionMode = "history-span",
                 search_basis: np.ndarray | None = None) -> None:
        self.dim = positive_int("dim", dim)
        # A single remembered embedding has no variance: PCA needs at least two.
        self.tau = positive_int("tau (subspace history length)", tau, minimum=2)
        self.nu = finite_float("nu (discarded variance fraction)", nu, low=0.0, low_open=False,
                                high=1.0, high_open=True)
        if mode not in PROJECTION_MODES:
            raise ZoodipError(f"subspace mode must be one of {', '.join(PROJECTION_MODES)}, got {mode!r}")
        self.mode: ProjectionMode = mode
        self._buffer = np.zeros((self.tau, self.dim), dtype=np.float64)
        self._count = 0  # total observations; the next row written is _count % tau
        self._basis = np.zeros((0, self.dim), dtype=np.float64)  # rows applied by project()
        self._kept: int | None = None  # k of the latest fit, None before a (non-degenerate) fit
        self._rank = 0  # r of the latest fit
        self.search_basis = None if search_basis is None else np.asarray(search_basis, dtype=np.float64)
        if self.search_basis is not None and (self.search_basis.ndim != 2 or self.search_basis.shape[0] != self.dim
                                              or not 1 <= self.search_basis.shape[1] <= self.dim):
            raise ValueError(f"search_basis must have shape ({self.dim}, k) with 1 <= k <= {self.dim}, "
                             f"got {self.search_basis.shape}")
        self._effective_dim = self._dimension_after_projection()

    @property
    def count(self) -> int:
        """How many values of ``v`` have been observed."""
        return self._count

    @property
    def kept_dims(self) -> int | None:
        """``k``, the number of principal directions kept by the latest fit (None before one)."""
        return self._kept

    @property
    def removed_dims(self) -> int:
        """How many directions :meth:`project` removes (0 before a fit)."""
        if self._kept is None:
            return 0
        return self._rank - self._kept if self.mode == "history-span" else self.dim - self._kept

    @property
    def effective_dim(self) -> float:
        """The dimension of the space projected directions live in: what the estimate is normalized by.

        Without a ``search_basis``: ``dim - removed_dims`` (an int), the authors' count. With one
        (``B``, ``k`` columns), directions ``z = B u`` become ``P B u`` after the projection ``P``,
        and the dimension is ``E||P B u||^2 = trace(B^T P B)``: ``k`` less the part of ``span(B)``
        the removed directions cover, not ``k - removed_dims``. The removed directions are counted
        in the whole space and mostly lie outside ``span(B)``, so that difference under-counts the
        dimension (down to the floor of 1) and inflates the estimate. Both agree when ``B = I``.
        Floored at 1: a projection that leaves less than one dimension of the search space leaves
        an estimate near zero anyway.
        """
        return self._effective_dim

    def _dimension_after_projection(self) -> float:
        if self.search_basis is None:
            return self.dim - self.removed_dims
        k = self.search_basis.shape[1]
        if self._kept is None:
            return k
        # Rows of _basis are orthonormal: ||_basis B||_F^2 is the part of span(B) they cover.
        covered = float(np.sum(np.square(self._basis @ self.search_basis)))
        return max(1.0, k - covered if self.mode == "history-span" else covered)

    def observe(self, v: np.ndarray) -> None:
        """Record the current embedding; refits after every ``tau``-th observation."""
        v = as_vector("v", v, self.dim)
        self._buffer[self._count % self.tau] = v
        self._count += 1
        if self._count % self.tau == 0:
            self._refit()

    def _refit(self) -> None:
        # Row order doesn't matter to PCA, so the ring buffer is used as stored.
        components, ratios = standardized_pca(self._buffer)
        rank = components.shape[0]
        if rank == 0:
            self._basis, self._kept, self._rank = np.zeros((0, self.dim)), None, 0
        else:
            k = components_to_keep(ratios, self.nu)
            self._basis = components[k:] if self.mode == "history-span" else components[:k]
            self._basis = np.ascontiguousarray(self._basis)
            self._kept, self._rank = k, rank
        self._effective_dim = self._dimension_after_projection()

    def project(self, g: np.ndarray) -> np.ndarray:
        """The projected gradient, float64 ``[dim]`` (a copy of ``g`` before the first fit)."""
        g = as_vector("g", g, self.dim).astype(np.float64)
        if self._kept is None:
            return g
        coords = self._basis @ g
        if self.mode == "history-span":
            return g - self._basis.T @ coords
        return self._basis.T @ coords

    def state_dict(self) -> StateDict:
        return {
            "mode": self.mode,
            "buffer": self._buffer.copy(),
            "count": self._count,
            "basis": self._basis.copy(),
            "kept_dims": -1 if self._kept is None else self._kept,
            "rank": self._rank,
        }

    def _fit_problem(self, count: int, kept: int, rank: int, basis: np.ndarray) -> str | None:
        """What a fit (``_refit``) cannot have left, or None: no fit before ``tau`` observations; a fit keeps ``k`` of
        ``r`` components and applies the other ``r - k`` (history-span) or those ``k``, as orthonormal rows."""
        if count < self.tau and (kept != -1 or len(basis)):
            return f"a fit after {count} of {self.tau} observations"
        if kept < 0:
            return f"rows without a fit ({len(basis)})" if len(basis) else None
        if not kept <= rank <= min(self.tau, self.dim):
            return f"{kept} of {rank} components kept, in a history of {self.tau}"
        if len(basis) != (rank - kept if self.mode == "history-span" else kept):
            return f"{len(basis)} rows for {kept} of {rank} components kept"
        if not np.allclose(basis @ basis.T, np.eye(len(basis)), atol=1e-6):
            return "rows that are not orthonormal"
        return None

    def load_state_dict(self, state: Mapping[str, StateValue]) -> None:
        mode = str(state["mode"])
        if mode != self.mode:
            raise ZoodipError(
                f"checkpoint used subspace mode {mode!r} but this run uses {self.mode!r}; resume with the same mode"
            )
        buffer = check_state_shape("subspace state", "buffer", state["buffer"], (self.tau, self.dim))  # type: ignore[arg-type]
        basis = np.asarray(state["basis"], dtype=np.float64)
        if basis.ndim != 2 or basis.shape[1] != self.dim:
            raise ZoodipError(f"checkpoint subspace basis has shape {basis.shape}; expected [m, {self.dim}]")
        kept = int(state["kept_dims"])  # type: ignore[arg-type]
        problem = self._fit_problem(int(state["count"]), kept, int(state["rank"]), basis)  # type: ignore[arg-type]
        if problem:
            raise ZoodipError(f"Subspace Gradient's state holds {problem}")
        self._buffer = np.array(buffer, dtype=np.float64)
        self._count = int(state["count"])  # type: ignore[arg-type]
        self._basis = np.ascontiguousarray(basis)
        self._kept = None if kept < 0 else kept
        self._rank = int(state["rank"])  # type: ignore[arg-type]
        self._effective_dim = self._dimension_after_projection()

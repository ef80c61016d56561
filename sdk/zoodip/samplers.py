"""Inference samplers for a DDPM-trained (discrete-time) diffusion model, in NumPy.

Each sampler is a plain function that takes ``model_fn(x, t) -> model output`` (the UNet with
classifier-free guidance already applied, predicting epsilon, v or x0 according to
``prediction_type``), the initial standard normal noise and the training schedule's
``alphas_cumprod``, and returns the final latents. They reproduce diffusers' schedulers with the
Stable Diffusion configuration (tested to ~1e-6 against them):

* ``sample_ddim``      - ``DDIMScheduler`` (``eta`` = 0: deterministic DDIM; > 0 adds noise)
* ``sample_dpmpp_2m``  - ``DPMSolverMultistepScheduler`` (``dpmsolver++``, order 2, midpoint,
                         ``lower_order_final``, final sigma 0); with ``noise_rng``, its ``sde-dpmsolver++``
                         (A1111's "DPM++ 2M SDE")
* ``sample_euler``     - ``EulerDiscreteScheduler`` (no churn)
* ``sample_euler_ancestral`` - ``EulerAncestralDiscreteScheduler`` (A1111's "Euler a")
* ``sample_lcm``       - ``LCMScheduler`` (Luo et al. 2023: 2-8 steps on a latent consistency model, such as
                         SD1.5 with the LCM-LoRA fused in)

and the ``*_timesteps`` functions reproduce the matching ``set_timesteps`` spacings; ``karras_schedule``
reproduces ``use_karras_sigmas=True`` (with ``sample_dpmpp_2m``: A1111's "DPM++ 2M Karras"). Notation: a
discrete timestep ``t`` has ``a_t = alphas_cumprod[t]``; the variance-preserving latent is
``x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps``, and ``sigma_t = sqrt((1 - a_t) / a_t)`` is the same point
in k-diffusion's variance-exploding parameterization (``x_t / sqrt(a_t) = x0 + sigma_t eps``).

Coefficients are computed in float64 and applied to float32 latents, so the latents stay float32
for the ONNX UNet.
"""
from __future__ import annotations

import math
from typing import Callable, Literal

import numpy as np

from .errors import ZoodipError


ModelFn = Callable[[np.ndarray, float], np.ndarray]
"""``model_fn(x, t)``: the model's output for latents ``x`` [B, C, h, w] at timestep ``t``."""
StepCallback = Callable[[int, float, np.ndarray], None]
"""``callback(i, t, x)``: called after step ``i`` (0-based) at timestep ``t`` with the new latents."""
Spacing = Literal["leading", "trailing", "linspace"]
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
SPACINGS = ("leading", "trailing", "linspace")


# -- timestep schedules -------------------------------------------------------------------------
def _check_steps(num_train: int, steps: int, spacing: str) -> None:
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or not 1 <= steps <= num_train:
        raise ZoodipError(f"steps must be an integer from 1 to {num_train}, got {steps!r}")
    if spacing not in SPACINGS:
        raise ZoodipError(f"timestep_spacing {spacing!r} is not supported: use one of {', '.join(SPACINGS)}")


def _check_range(timesteps: np.ndarray, num_train: int, steps: int) -> np.ndarray:
    if timesteps.min() < 0 or timesteps.max() > num_train - 1:
        # e.g. 'leading' with steps_offset 1 and steps == num_train reaches t = num_train.
        raise ZoodipError(
            f"{steps} steps put timesteps outside 0..{num_train - 1} with this scheduler config: use fewer steps"
        )
    return timesteps


def ddim_timesteps(num_train: int, steps: int, offset: int = 1, spacing: Spacing = "leading") -> np.ndarray:
    """``DDIMScheduler.set_timesteps``: descending int64 timesteps, ``steps`` of them.

    "leading" (DDIM's default, used by Stable Diffusion with ``steps_offset=1``) takes every
    ``num_train // steps``-th timestep from 0 and shifts them by ``offset``; e.g. 1000 train steps,
    10 steps -> 901, 801, ..., 1.
    """
    _check_steps(num_train, steps, spacing)
    if spacing == "leading":
        ratio = num_train // steps
        timesteps = np.arange(steps, dtype=np.int64)[::-1] * ratio + int(offset)
    elif spacing == "trailing":
        timesteps = np.round(np.arange(num_train, 0, -num_train / steps)).astype(np.int64) - 1
    else:
        timesteps = np.round(np.linspace(0, num_train - 1, steps))[::-1].astype(np.int64)
    return _check_range(timesteps, num_train, steps)


def dpm_timesteps(num_train: int, steps: int, spacing: Spacing = "linspace", offset: int = 0) -> np.ndarray:
    """``DPMSolverMultistepScheduler.set_timesteps``: descending int64 timesteps.

    Its default "linspace" spans the whole range: 1000 train steps, 10 steps -> 999, 899, ..., 100.
    (Note "leading" here divides by ``steps + 1``, unlike DDIM's.)
    """
    _check_steps(num_train, steps, spacing)
    if spacing == "linspace":
        timesteps = np.round(np.linspace(0, num_train - 1, steps + 1))[::-1][:-1].astype(np.int64)
    elif spacing == "leading":
        ratio = num_train // (steps + 1)
        timesteps = np.arange(steps + 1, dtype=np.int64)[::-1][:-1] * ratio + int(offset)
    else:
        timesteps = np.round(np.arange(num_train, 0, -num_train / steps)).astype(np.int64) - 1
    return _check_range(timesteps, num_train, steps)


def euler_timesteps(num_train: int, steps: int, spacing: Spacing = "linspace", offset: int = 0) -> np.ndarray:
    """``EulerDiscreteScheduler.set_timesteps``: descending float64 timesteps (not rounded for "linspace")."""
    _check_steps(num_train, steps, spacing)
    if spacing == "linspace":
        # diffusers builds these in float32; round-trip through it so the UNet sees the same values.
        timesteps = np.linspace(0, num_train - 1, steps, dtype=np.float32)[::-1].astype(np.float64)
    elif spacing == "leading":
        ratio = num_train // steps
        timesteps = (np.arange(steps)[::-1] * ratio + int(offset)).astype(np.float64)
    else:
        timesteps = np.round(np.arange(num_train, 0, -num_train / steps)) - 1.0
    return _check_range(timesteps, num_train, steps)


def lcm_timesteps(num_train: int, steps: int, original_steps: int = 50) -> np.ndarray:
    """``LCMScheduler.set_timesteps``: ``steps`` of the ``original_steps`` timesteps the consistency model was distilled
    on (every ``k = num_train // original_steps``-th, ending at ``num_train - 1``), evenly spaced by index from the
    top; e.g. 1000 train steps, 4 steps -> 999, 759, 499, 259."""
    if isinstance(original_steps, bool) or not isinstance(original_steps, (int, np.integer)) \
            or not 1 <= original_steps <= num_train:
        raise ZoodipError(f"the scheduler config's original_inference_steps must be an integer from 1 to {num_train}, "
                          f"got {original_steps!r}")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or not 1 <= steps <= original_steps:
        raise ZoodipError(f"the lcm sampler takes 1 to {original_steps} steps (the schedule its model was distilled "
                          f"on; 4-8 is typical), got {steps!r}")
    k = num_train // original_steps
    distilled = (np.arange(1, original_steps + 1, dtype=np.int64) * k - 1)[::-1]
    return distilled[np.floor(np.linspace(0, original_steps, steps, endpoint=False)).astype(np.int64)]


def sigmas_at(alphas_cumprod: np.ndarray, timesteps: np.ndarray) -> np.ndarray:
    """``sigma(t) = sqrt((1 - a_t) / a_t)``, linearly interpolated for fractional ``t`` (as diffusers does)."""
    ac = np.asarray(alphas_cumprod, dtype=np.float64)
    with np.errstate(divide="ignore"):  # a zero-SNR schedule's top: sigma infinite (its samplers step on alpha_bar)
        table = np.sqrt((1.0 - ac) / ac)
    return np.interp(np.asarray(timesteps, dtype=np.float64), np.arange(len(table)), table)


def karras_sigmas(sigma_min: float, sigma_max: float, steps: int, rho: float = 7.0) -> np.ndarray:
    """Karras et al. 2022 (EDM), eq. 5: ``steps`` noise levels from ``sigma_max`` down to ``sigma_min``,
    ``sigma_i = (sigma_max^(1/rho) + i / (steps - 1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho``,
    spaced so that the small ones, where detail is decided, get more steps."""
    ramp = np.linspace(0.0, 1.0, steps)
    top, bottom = float(sigma_max) ** (1.0 / rho), float(sigma_min) ** (1.0 / rho)
    return (top + ramp * (bottom - top)) ** rho


def karras_schedule(alphas_cumprod: np.ndarray, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """``use_karras_sigmas=True``: Karras sigmas between the training schedule's smallest and largest, and the
    integer timesteps the model is called at (each sigma's place on the log-sigma table, rounded), as diffusers
    sets them. The sampler steps between the sigmas themselves, not between the rounded timesteps' sigmas."""
    table = sigmas_at(alphas_cumprod, np.arange(len(alphas_cumprod)))
    sigmas = karras_sigmas(float(table[0]), float(table[-1]), steps)
    timesteps = np.round(np.interp(np.log(sigmas), np.log(table), np.arange(len(table)))).astype(np.int64)
    return sigmas, timesteps


def euler_init_noise_sigma(sigma_max: float, spacing: str) -> float:
    """How much ``EulerDiscreteScheduler`` scales the initial unit noise (its ``init_noise_sigma``).

    k-diffusion starts from ``sigma_max * noise``; diffusers does that for "linspace"/"trailing"
    and uses ``sqrt(sigma_max^2 + 1)`` (the exact variance of ``x_T / sqrt(a_T)``) for "leading".
    """
    return float(sigma_max) if spacing in ("linspace", "trailing") else math.sqrt(float(sigma_max) ** 2 + 1.0)


# -- the model output, reinterpreted ------------------------------------------------------------
def predict_x0_eps(
    output: np.ndarray, x: np.ndarray, alpha_bar: float, prediction_type: str
) -> tuple[np.ndarray, np.ndarray]:
    """The (x0, epsilon) implied by a model output at the variance-preserving latent ``x``."""
    sa, s1a = math.sqrt(alpha_bar), math.sqrt(1.0 - alpha_bar)
    if prediction_type == "epsilon":
        eps = output
        x0 = (x - s1a * eps) / sa
    elif prediction_type == "v_prediction":
        # v = sqrt(a) eps - sqrt(1-a) x0 and x = sqrt(a) x0 + sqrt(1-a) eps, inverted.
        x0 = sa * x - s1a * output
        eps = sa * output + s1a * x
    elif prediction_type == "sample":
        x0 = output
        eps = (x - sa * x0) / s1a
    else:
        raise ZoodipError(f"prediction_type {prediction_type!r} is not supported: use one of {', '.join(PREDICTION_TYPES)}")
    return x0, eps


def _check_inputs(
    x_T: np.ndarray, alphas_cumprod: np.ndarray, timesteps: np.ndarray, prediction_type: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if prediction_type not in PREDICTION_TYPES:
        raise ZoodipError(f"prediction_type {prediction_type!r} is not supported: use one of {', '.join(PREDICTION_TYPES)}")
    ac = np.asarray(alphas_cumprod, dtype=np.float64)
    ts = np.asarray(timesteps)
    if ts.ndim != 1 or ts.size == 0:
        raise ValueError("timesteps must be a non-empty 1-D array")
    if ts.min() < 0 or ts.max() > len(ac) - 1:
        raise ValueError(f"timesteps must lie in [0, {len(ac) - 1}]")
    return np.asarray(x_T, dtype=np.float32), ac, ts


# -- samplers ------------------------------------------------------------------------------------
def sample_ddim(
    model_fn: ModelFn,
    x_T: np.ndarray,
    alphas_cumprod: np.ndarray,
    timesteps: np.ndarray,
    prediction_type: str = "epsilon",
    *,
    eta: float = 0.0,
    final_alpha_cumprod: float | None = None,
    step_ratio: int | None = None,
    rng: np.random.Generator | None = None,
    callback: StepCallback | None = None,
) -> np.ndarray:
    """DDIM (Song et al. 2021) from unit noise ``x_T`` through descending ``timesteps``.

    Each step goes from ``t`` to ``t - step_ratio`` (diffusers' ``prev_timestep = t - num_train // steps``, whatever
    the spacing), or without ``step_ratio`` to the next timestep of the list (the same with "leading" spacing); below
    0, to ``final_alpha_cumprod``: ``alphas_cumprod[0]`` by default (Stable Diffusion's ``set_alpha_to_one: false``),
    pass 1.0 for ``set_alpha_to_one: true``. ``eta`` > 0 adds fresh noise each step (drawn from ``rng``, required then).
    """
    x, ac, ts = _check_inputs(x_T, alphas_cumprod, timesteps, prediction_type)
    if eta < 0:
        raise ZoodipError(f"eta must be >= 0, got {eta}")
    if eta > 0 and rng is None:
        raise ValueError("sample_ddim with eta > 0 needs an rng for the per-step noise")
    a_final = float(ac[0] if final_alpha_cumprod is None else final_alpha_cumprod)

    for i, t in enumerate(ts):
        a_t = float(ac[int(t)])
        prev = (int(ts[i + 1]) if i + 1 < len(ts) else -1) if step_ratio is None else int(t) - int(step_ratio)
        a_prev = float(ac[prev]) if prev >= 0 else a_final
        x0, eps = predict_x0_eps(model_fn(x, float(t)), x, a_t, prediction_type)
        # Posterior std of DDPM between the two timesteps, scaled by eta (eq. 16 of the paper).
        variance = (1.0 - a_prev) / (1.0 - a_t) * (1.0 - a_t / a_prev)
        std = eta * math.sqrt(max(variance, 0.0))
        x = math.sqrt(a_prev) * x0 + math.sqrt(max(1.0 - a_prev - std**2, 0.0)) * eps
        if std > 0.0:
            assert rng is not None
            x = x + std * rng.standard_normal(x.shape, dtype=np.float32)
        x = x.astype(np.float32, copy=False)
        if callback is not None:
            callback(i, float(t), x)
    return x


def sample_dpmpp_2m(
    model_fn: ModelFn,
    x_T: np.ndarray,
    alphas_cumprod: np.ndarray,
    timesteps: np.ndarray,
    prediction_type: str = "epsilon",
    *,
    sigmas: np.ndarray | None = None,
    noise_rng: np.random.Generator | None = None,
    callback: StepCallback | None = None,
) -> np.ndarray:
    """DPM-Solver++(2M) (Lu et al. 2022) from unit noise ``x_T``, ending at sigma 0.

    The multistep second-order update in the data-prediction (x0) form, midpoint variant. The
    first step has no history and the last one goes to sigma 0 (where log-SNR is infinite), so
    both are first order (= DDIM), as in diffusers with ``final_sigmas_type="zero"``. ``sigmas``: the steps'
    noise levels where they are not the timesteps' own (``karras_schedule``).

    With ``noise_rng``, the SDE solver of the same paper (section 4, eta 1; diffusers' ``sde-dpmsolver++``): with
    ``e = exp(-h) = sigma_next / sigma``, each step keeps ``e`` of the ODE step's share of ``x``, takes ``1 - e^2``
    (not ``1 - e``) of ``x0`` and adds fresh noise of VP std ``sigma_vp(next) sqrt(1 - e^2)``; one draw per step, the
    last one multiplied by 0, as diffusers draws them.
    """
    x, ac, ts = _check_inputs(x_T, alphas_cumprod, timesteps, prediction_type)
    # k-diffusion sigmas of the steps, then 0; lambda = log(alpha/sigma_vp) = -log(sigma).
    sigmas = np.append(sigmas_at(ac, ts) if sigmas is None else _step_sigmas(sigmas, ts), 0.0)
    prev_x0: np.ndarray | None = None

    for i, t in enumerate(ts):
        s_cur, s_next = float(sigmas[i]), float(sigmas[i + 1])
        a_cur = 1.0 / (s_cur**2 + 1.0)  # alpha_bar at sigma
        x0, _ = predict_x0_eps(model_fn(x, float(t)), x, a_cur, prediction_type)

        # VP coefficients: alpha = 1/sqrt(sigma^2+1), sigma_vp = sigma * alpha.
        alpha_next = 1.0 / math.sqrt(s_next**2 + 1.0)
        ratio = (s_next * alpha_next) / (s_cur * math.sqrt(a_cur))  # sigma_vp(next) / sigma_vp(cur)
        one_minus_exp = 1.0 - s_next / s_cur  # 1 - exp(-h), h = lambda_next - lambda_cur
        if noise_rng is not None:  # the SDE step: x's share times exp(-h), x0's 1 - exp(-2h), and fresh noise
            ratio, one_minus_exp = ratio * (s_next / s_cur), 1.0 - (s_next / s_cur) ** 2
        h_prev = math.log(float(sigmas[i - 1]) / s_cur) if i > 0 else 0.0
        if prev_x0 is None or s_next == 0.0 or h_prev == 0.0:  # no usable history (h_prev 0: repeated t)
            x = ratio * x + (alpha_next * one_minus_exp) * x0
        else:
            h = math.log(s_cur / s_next)
            d1 = (x0 - prev_x0) * (h / h_prev)  # (m0 - m1) / r0 with r0 = h_prev / h
            x = ratio * x + (alpha_next * one_minus_exp) * x0 + (0.5 * alpha_next * one_minus_exp) * d1
        if noise_rng is not None:
            z = noise_rng.standard_normal(x.shape, dtype=np.float32)
            x = x + (s_next * alpha_next * math.sqrt(one_minus_exp)) * z  # sigma_vp(next) sqrt(1 - exp(-2h))
        x = x.astype(np.float32, copy=False)
        prev_x0 = x0
        if callback is not None:
            callback(i, float(t), x)
    return x


def sample_euler(
    model_fn: ModelFn,
    x_T: np.ndarray,
    alphas_cumprod: np.ndarray,
    timesteps: np.ndarray,
    prediction_type: str = "epsilon",
    *,
    init_noise_sigma: float | None = None,
    callback: StepCallback | None = None,
) -> np.ndarray:
    """Euler's method on the probability-flow ODE in k-diffusion's sigma parameterization.

    Starts from ``init_noise_sigma * x_T`` (default ``sigma_max``, see ``euler_init_noise_sigma``),
    feeds the model ``x / sqrt(sigma^2 + 1)`` (the variance-preserving latent, as the UNet was
    trained on) and steps ``x += (x - x0) / sigma * (sigma_next - sigma)`` down to sigma 0.
    Returns the final latents, which at sigma 0 are the same in both parameterizations.
    """
    x, ts, sigmas = _euler_start(x_T, alphas_cumprod, timesteps, prediction_type, init_noise_sigma)
    for i, t in enumerate(ts):
        s_cur, s_next = float(sigmas[i]), float(sigmas[i + 1])
        x0 = _denoised(model_fn, x, s_cur, float(t), prediction_type)
        derivative = (x - x0) / s_cur
        x = (x + derivative * (s_next - s_cur)).astype(np.float32, copy=False)
        if callback is not None:
            callback(i, float(t), x)
    return x


def sample_euler_ancestral(
    model_fn: ModelFn,
    x_T: np.ndarray,
    alphas_cumprod: np.ndarray,
    timesteps: np.ndarray,
    prediction_type: str = "epsilon",
    *,
    rng: np.random.Generator,
    init_noise_sigma: float | None = None,
    callback: StepCallback | None = None,
) -> np.ndarray:
    """Euler's method with fresh noise each step ("Euler a"; k-diffusion's ``sample_euler_ancestral``, eta 1).

    Each step goes from ``sigma`` to ``sigma_next`` as two moves: deterministic down to ``sigma_down``, then
    Gaussian noise of std ``sigma_up``, with ``sigma_up^2 = sigma_next^2 (sigma^2 - sigma_next^2) / sigma^2`` and
    ``sigma_down^2 = sigma_next^2 - sigma_up^2``, so the latent's noise level is ``sigma_next`` again. One draw of
    ``rng`` per step (the last one multiplied by 0), as diffusers draws them.
    """
    x, ts, sigmas = _euler_start(x_T, alphas_cumprod, timesteps, prediction_type, init_noise_sigma)
    for i, t in enumerate(ts):
        s_cur, s_next = float(sigmas[i]), float(sigmas[i + 1])
        x0 = _denoised(model_fn, x, s_cur, float(t), prediction_type)
        sigma_up = math.sqrt(s_next**2 * (s_cur**2 - s_next**2) / s_cur**2)
        sigma_down = math.sqrt(s_next**2 - sigma_up**2)
        x = x + (x - x0) / s_cur * (sigma_down - s_cur)
        x = (x + rng.standard_normal(x.shape, dtype=np.float32) * sigma_up).astype(np.float32, copy=False)
        if callback is not None:
            callback(i, float(t), x)
    return x


def sample_lcm(
    model_fn: ModelFn,
    x_T: np.ndarray,
    alphas_cumprod: np.ndarray,
    timesteps: np.ndarray,
    prediction_type: str = "epsilon",
    *,
    rng: np.random.Generator,
    timestep_scaling: float = 10.0,
    callback: StepCallback | None = None,
) -> np.ndarray:
    """Multistep consistency sampling (Luo et al. 2023, Algorithm 1; diffusers' ``LCMScheduler``) from unit noise.

    A consistency model maps a noisy latent at ``t`` to its clean end in one call: ``f(x, t) = c_skip(t) x +
    c_out(t) x0_hat``, with the boundary-condition scalings ``c_skip = s^2 / ((10 t)^2 + s^2)`` and ``c_out =
    10 t / sqrt((10 t)^2 + s^2)``, ``s = 0.5`` (``10`` is ``timestep_scaling``), so ``f`` is the identity at ``t = 0``.
    Each step but the last noises that end afresh to the next timestep, ``sqrt(a_next) f + sqrt(1 - a_next) z``,
    one draw of ``rng`` per step (none on the last, as diffusers draws them); the last step returns ``f``.
    """
    x, ac, ts = _check_inputs(x_T, alphas_cumprod, timesteps, prediction_type)
    sigma_data = 0.5
    for i, t in enumerate(ts):
        x0, _ = predict_x0_eps(model_fn(x, float(t)), x, float(ac[int(t)]), prediction_type)
        scaled = float(t) * float(timestep_scaling)
        c_skip = sigma_data**2 / (scaled**2 + sigma_data**2)
        c_out = scaled / math.sqrt(scaled**2 + sigma_data**2)
        x = c_out * x0 + c_skip * x
        if i + 1 < len(ts):
            a_next = float(ac[int(ts[i + 1])])
            x = math.sqrt(a_next) * x + math.sqrt(1.0 - a_next) * rng.standard_normal(x.shape, dtype=np.float32)
        x = x.astype(np.float32, copy=False)
        if callback is not None:
            callback(i, float(t), x)
    return x


def _euler_start(x_T: np.ndarray, alphas_cumprod: np.ndarray, timesteps: np.ndarray, prediction_type: str,
                 init_noise_sigma: float | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The Euler samplers' start: ``(init_noise_sigma * x_T, timesteps, their sigmas then 0)``."""
    x, ac, ts = _check_inputs(x_T, alphas_cumprod, timesteps, prediction_type)
    sigmas = np.append(sigmas_at(ac, ts), 0.0)
    scale = float(sigmas[0]) if init_noise_sigma is None else float(init_noise_sigma)
    return (x * scale).astype(np.float32, copy=False), ts, sigmas


def _denoised(model_fn: ModelFn, x: np.ndarray, sigma: float, t: float, prediction_type: str) -> np.ndarray:
    """The model's x0 for the sigma-parameterized ``x``: it is fed ``x / sqrt(sigma^2 + 1)``, the latent it was trained on."""
    c_in = 1.0 / math.sqrt(sigma**2 + 1.0)
    x_vp = (x * c_in).astype(np.float32, copy=False)
    return predict_x0_eps(model_fn(x_vp, t), x_vp, c_in**2, prediction_type)[0]


def _step_sigmas(sigmas: np.ndarray, timesteps: np.ndarray) -> np.ndarray:
    sigmas = np.asarray(sigmas, dtype=np.float64)
    if sigmas.shape != timesteps.shape or not np.all(sigmas > 0):
        raise ValueError(f"sigmas must be positive, one per timestep ({timesteps.shape}), got {sigmas.shape}")
    return sigmas

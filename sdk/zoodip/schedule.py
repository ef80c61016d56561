"""The forward (noising) process of a DDPM-trained model, read from a diffusers scheduler config.

Textual inversion trains on the denoising loss ``|| unet(x_t, t, c) - target ||^2`` with
``x_t = sqrt(a_t) x0 + sqrt(1 - a_t) noise`` and ``a_t = prod_{s<=t} (1 - beta_s)``. This module
needs only the training-time half of a scheduler: the betas, their cumulative product, the noising
formula and the regression target. Sampling (inference) schedulers live elsewhere.

Everything is float64 internally: the original latent-diffusion code built its schedule in float64
NumPy, and a float64 cumulative product of 1000 factors keeps ``a_t`` accurate to ~1e-15 (diffusers
builds it in float32, which agrees with us to ~1e-6 relative). Outputs take the inputs' float
dtype, so float32 latents stay float32 for the ONNX UNet.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import numpy as np

from .errors import ZoodipError

PredictionType = Literal["epsilon", "v_prediction", "sample"]
BetaSchedule = Literal["linear", "scaled_linear", "squaredcos_cap_v2"]

PREDICTION_TYPES: tuple[str, ...] = ("epsilon", "v_prediction", "sample")
BETA_SCHEDULES: tuple[str, ...] = ("linear", "scaled_linear", "squaredcos_cap_v2")

# diffusers' DDPMScheduler defaults, used for keys a config leaves out (as diffusers does).
_DEFAULTS: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "trained_betas": None,
    "prediction_type": "epsilon",
    "rescale_betas_zero_snr": False,
}


# The most training timesteps a schedule may have: far above any diffusion model's (SD: 1000), far below what would
# not fit in memory (a schedule holds a few floats per timestep).
MAX_TRAIN_TIMESTEPS = 100_000


def linear_betas(beta_start: float, beta_end: float, num_train_timesteps: int) -> np.ndarray:
    """Betas evenly spaced from ``beta_start`` to ``beta_end`` (Ho et al. 2020)."""
    return np.linspace(beta_start, beta_end, num_train_timesteps, dtype=np.float64)


def scaled_linear_betas(beta_start: float, beta_end: float, num_train_timesteps: int) -> np.ndarray:
    """Betas whose square roots are evenly spaced: the latent-diffusion / Stable Diffusion schedule."""
    root = np.linspace(math.sqrt(beta_start), math.sqrt(beta_end), num_train_timesteps, dtype=np.float64)
    return root**2


def cosine_betas(num_train_timesteps: int, max_beta: float = 0.999) -> np.ndarray:
    """The cosine schedule of Nichol & Dhariwal (2021), ``squaredcos_cap_v2`` in diffusers.

    ``alpha_bar(s) = cos^2((s + 0.008) / 1.008 * pi / 2)`` discretized on ``s = t / T``; each beta is
    capped at ``max_beta`` because the last steps would otherwise reach 1 (a singular step).
    """

    def alpha_bar(s: np.ndarray) -> np.ndarray:
        return np.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

    s = np.arange(num_train_timesteps + 1, dtype=np.float64) / num_train_timesteps
    ab = alpha_bar(s)
    return np.minimum(1.0 - ab[1:] / ab[:-1], max_beta)


def rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
    """Rescale betas so the last timestep has zero signal (Lin et al. 2023, Algorithm 1).

    Shifts ``sqrt(alpha_bar)`` so its last value is 0 and rescales it so its first value is kept.
    Some fine-tuned models were trained this way (``rescale_betas_zero_snr`` in their config); their
    noising process must be reproduced exactly or the loss targets are wrong.
    """
    sqrt_ab = np.sqrt(np.cumprod(1.0 - betas))
    first, last = sqrt_ab[0], sqrt_ab[-1]
    sqrt_ab = (sqrt_ab - last) * (first / (first - last))
    ab = sqrt_ab**2
    alphas = np.concatenate([ab[:1], ab[1:] / ab[:-1]])
    return 1.0 - alphas


def _config_number(config: Mapping[str, Any], key: str) -> float:
    value = config.get(key, _DEFAULTS[key])
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ZoodipError(f"scheduler config: {key} must be a finite number, got {value!r}; fix scheduler_config.json")
    return float(value)


def _config_flag(config: Mapping[str, Any], key: str) -> bool:
    """A true-or-false setting of the config (absent or null: false; a number as diffusers reads it, 0 false); a
    string such as "false" is refused, not read as true."""
    value = config.get(key)
    if value is not None and not isinstance(value, (bool, np.bool_, int, float)):
        raise ZoodipError(f"scheduler config: {key} must be true or false, got {value!r}; fix scheduler_config.json")
    return bool(value)


def _trained_betas(values: object) -> np.ndarray:
    """``trained_betas`` as float64: finite numbers from 0 to 1, not all 0 (a schedule that never adds noise)."""
    try:
        betas = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        betas = np.array([np.nan])
    if betas.ndim != 1 or not np.all(np.isfinite(betas)) or not np.all((betas >= 0) & (betas <= 1)) or not betas.any():
        raise ZoodipError(f"scheduler config: trained_betas must be a list of numbers from 0 to 1, not all 0, got "
                          f"{str(values)[:60]!r}; fix scheduler_config.json")
    return betas


# eq=False: field-wise == on arrays is ambiguous; compare .betas explicitly instead.
@dataclass(frozen=True, eq=False)
class NoiseSchedule:
    """The DDPM forward process ``q(x_t | x0)`` and the loss target for one prediction type.

    Attributes:
        betas: float64 ``[T]`` per-step noise variances.
        prediction_type: what the model predicts: ``"epsilon"`` (the noise), ``"v_prediction"``
            (``sqrt(a) noise - sqrt(1-a) x0``, Salimans & Ho 2022) or ``"sample"`` (``x0``).
        alphas_cumprod: float64 ``[T]``, ``a_t = prod_{s<=t} (1 - beta_s)``; derived from ``betas``.
    """

    betas: np.ndarray
    prediction_type: PredictionType = "epsilon"
    alphas_cumprod: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        betas = np.array(self.betas, dtype=np.float64)  # a private copy: callers can't mutate us
        if betas.ndim != 1 or betas.size == 0:
            raise ZoodipError(f"scheduler config: betas must be a non-empty list, got shape {betas.shape}")
        if not np.all(np.isfinite(betas)) or np.any(betas < 0.0) or np.any(betas > 1.0):
            raise ZoodipError("scheduler config: every beta must lie in [0, 1]; fix scheduler_config.json")
        if self.prediction_type not in PREDICTION_TYPES:
            raise ZoodipError(
                f"scheduler config: prediction_type {self.prediction_type!r} is not supported; "
                f"use one of {', '.join(PREDICTION_TYPES)}"
            )
        alphas_cumprod = np.cumprod(1.0 - betas)
        betas.flags.writeable = False
        alphas_cumprod.flags.writeable = False
        # frozen dataclass: set the normalized arrays through object.__setattr__.
        object.__setattr__(self, "betas", betas)
        object.__setattr__(self, "alphas_cumprod", alphas_cumprod)

    @classmethod
    def from_config(cls, scheduler_config: Mapping[str, Any]) -> NoiseSchedule:
        """Build the schedule from a diffusers ``scheduler_config.json`` dict.

        Reads ``num_train_timesteps``, ``beta_start``, ``beta_end``, ``beta_schedule``,
        ``trained_betas``, ``prediction_type`` and ``rescale_betas_zero_snr``; missing keys take
        diffusers' ``DDPMScheduler`` defaults and inference-only keys (``steps_offset``,
        ``timestep_spacing``, ...) are ignored, since they don't change the forward process.
        """
        cfg = dict(scheduler_config)
        prediction_type = cfg.get("prediction_type", _DEFAULTS["prediction_type"])
        if prediction_type not in PREDICTION_TYPES:
            raise ZoodipError(
                f"scheduler config: prediction_type {prediction_type!r} is not supported; "
                f"use one of {', '.join(PREDICTION_TYPES)}"
            )
        steps = cfg.get("num_train_timesteps", _DEFAULTS["num_train_timesteps"])
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_TRAIN_TIMESTEPS:
            raise ZoodipError(f"scheduler config: num_train_timesteps must be an integer from 1 to "
                              f"{MAX_TRAIN_TIMESTEPS} (Stable Diffusion's is 1000), got {steps!r}")

        trained = cfg.get("trained_betas")
        if trained is not None:
            betas = _trained_betas(trained)
            if betas.ndim != 1 or betas.shape[0] != steps:
                raise ZoodipError(
                    f"scheduler config: trained_betas has {betas.size} values but num_train_timesteps is {steps}; "
                    "make them agree"
                )
        else:
            schedule = cfg.get("beta_schedule", _DEFAULTS["beta_schedule"])
            if schedule == "squaredcos_cap_v2":
                betas = cosine_betas(steps)
            elif schedule in ("linear", "scaled_linear"):
                start, end = _config_number(cfg, "beta_start"), _config_number(cfg, "beta_end")
                if not 0.0 <= start <= end <= 1.0:
                    raise ZoodipError(
                        f"scheduler config: need 0 <= beta_start <= beta_end <= 1, got {start} and {end}"
                    )
                make = linear_betas if schedule == "linear" else scaled_linear_betas
                betas = make(start, end, steps)
            else:
                raise ZoodipError(
                    f"scheduler config: beta_schedule {schedule!r} is not supported; "
                    f"use one of {', '.join(BETA_SCHEDULES)} or give trained_betas"
                )
        for key in ("set_alpha_to_one", "clip_sample", "thresholding"):  # the samplers' switches: read as they mean
            _config_flag(cfg, key)
        offset = cfg.get("steps_offset", 0)  # (an integer, or a float that is one: 1.0)
        if offset is not None and (isinstance(offset, bool) or not isinstance(offset, (int, float))
                                   or not (math.isfinite(offset) and offset == int(offset) and 0 <= offset < steps)):
            raise ZoodipError(f"scheduler config: steps_offset must be an integer from 0 to {steps - 1} (Stable "
                              f"Diffusion's is 1), got {offset!r}; fix scheduler_config.json")
        if _config_flag(cfg, "rescale_betas_zero_snr"):
            betas = rescale_zero_terminal_snr(betas)
        return cls(betas=betas, prediction_type=cast(PredictionType, prediction_type))

    @property
    def num_train_timesteps(self) -> int:
        """``T``: valid timesteps are the integers ``0 .. T-1``."""
        return int(self.betas.shape[0])

    def _coefficients(self, t: np.ndarray, ndim: int, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
        """``sqrt(a_t)`` and ``sqrt(1 - a_t)`` shaped ``[B, 1, ..., 1]`` to broadcast over a batch."""
        t = np.asarray(t)
        if not np.issubdtype(t.dtype, np.integer):
            raise ValueError(f"timesteps must be integers, got dtype {t.dtype}")
        if t.size and (t.min() < 0 or t.max() >= self.num_train_timesteps):
            raise ValueError(f"timesteps must lie in [0, {self.num_train_timesteps}), got {t.min()}..{t.max()}")
        a = self.alphas_cumprod[t]
        shape = a.shape + (1,) * (ndim - a.ndim) if a.ndim else ()
        # Square roots in float64, then one rounding to the output dtype.
        return np.sqrt(a).reshape(shape).astype(dtype), np.sqrt(1.0 - a).reshape(shape).astype(dtype)

    @staticmethod
    def _out_dtype(x0: np.ndarray, noise: np.ndarray) -> np.dtype:
        # float32 stays float32, float64 stays float64; ints or float16 compute in at least float32.
        return np.result_type(x0.dtype, noise.dtype, np.float32)

    def add_noise(self, x0: np.ndarray, noise: np.ndarray, t: np.ndarray) -> np.ndarray:
        """``x_t = sqrt(a_t) x0 + sqrt(1 - a_t) noise``.

        Args:
            x0: clean latents ``[B, C, h, w]`` (any shape whose first axis is the batch).
            noise: standard normal noise, same shape.
            t: integer timesteps ``[B]`` (or a scalar for the whole batch).
        """
        x0, noise = np.asarray(x0), np.asarray(noise)
        dtype = self._out_dtype(x0, noise)
        sa, s1a = self._coefficients(t, x0.ndim, dtype)
        return (sa * x0 + s1a * noise).astype(dtype, copy=False)

    def velocity(self, x0: np.ndarray, noise: np.ndarray, t: np.ndarray) -> np.ndarray:
        """The v-prediction target ``v = sqrt(a_t) noise - sqrt(1 - a_t) x0``."""
        x0, noise = np.asarray(x0), np.asarray(noise)
        dtype = self._out_dtype(x0, noise)
        sa, s1a = self._coefficients(t, x0.ndim, dtype)
        return (sa * noise - s1a * x0).astype(dtype, copy=False)

    def target(self, x0: np.ndarray, noise: np.ndarray, t: np.ndarray) -> np.ndarray:
        """What the model should output for ``x_t = add_noise(x0, noise, t)`` under ``prediction_type``."""
        x0, noise = np.asarray(x0), np.asarray(noise)
        dtype = self._out_dtype(x0, noise)
        if self.prediction_type == "epsilon":
            return noise.astype(dtype, copy=True)
        if self.prediction_type == "v_prediction":
            return self.velocity(x0, noise, t)
        return x0.astype(dtype, copy=True)

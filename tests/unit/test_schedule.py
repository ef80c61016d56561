"""NoiseSchedule against diffusers' DDPMScheduler (the reference the models were exported from)."""
from __future__ import annotations

import numpy as np
import pytest

from zoodip.errors import ZoodipError
from zoodip.schedule import NoiseSchedule, cosine_betas, scaled_linear_betas
from zoodip_export.sd15_configs import sd15_configs

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

# Stable Diffusion 1.x's scheduler_config.json (a PNDM config; the forward process is what matters here),
# from the one place the repository keeps SD1.5's configs.
SD15 = {k: v for k, v in sd15_configs()["scheduler"].items() if k != "_diffusers_version"}

CONFIGS = {
    "sd15": SD15,
    "sd2-v": {**SD15, "prediction_type": "v_prediction"},
    "linear": {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02, "num_train_timesteps": 1000},
    "cosine": {"beta_schedule": "squaredcos_cap_v2", "num_train_timesteps": 1000, "prediction_type": "sample"},
    "zero-snr": {**SD15, "rescale_betas_zero_snr": True, "prediction_type": "v_prediction"},
    "short": {"beta_schedule": "linear", "beta_start": 0.001, "beta_end": 0.05, "num_train_timesteps": 50},
}

DDPM_KEYS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
             "prediction_type", "rescale_betas_zero_snr")


def reference(config: dict) -> "diffusers.DDPMScheduler":
    return diffusers.DDPMScheduler(**{k: v for k, v in config.items() if k in DDPM_KEYS})


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_betas_and_alphas_cumprod_match_diffusers(name: str) -> None:
    ours, ref = NoiseSchedule.from_config(CONFIGS[name]), reference(CONFIGS[name])
    assert ours.betas.dtype == np.float64 and ours.alphas_cumprod.dtype == np.float64
    assert ours.num_train_timesteps == ref.config.num_train_timesteps
    # diffusers works in float32, we in float64: agreement to float32 precision (a cumprod of 1000
    # float32 factors drifts ~1e-5). Zero-SNR rescaling divides nearly equal small numbers, which
    # amplifies diffusers' float32 rounding; it is checked exactly in float64 below.
    rtol = 1e-3 if config_rescales(name) else 2e-6
    np.testing.assert_allclose(ours.betas, ref.betas.double().numpy(), rtol=rtol, atol=1e-9)
    np.testing.assert_allclose(ours.alphas_cumprod, ref.alphas_cumprod.double().numpy(), rtol=2e-5, atol=1e-9)


def config_rescales(name: str) -> bool:
    return bool(CONFIGS[name].get("rescale_betas_zero_snr", False))


def test_zero_snr_rescale_matches_diffusers_in_float64() -> None:
    from diffusers.schedulers.scheduling_ddpm import rescale_zero_terminal_snr as ref_rescale

    ours = NoiseSchedule.from_config(CONFIGS["zero-snr"])
    base = scaled_linear_betas(0.00085, 0.012, 1000)
    expected = ref_rescale(torch.from_numpy(base)).numpy()
    np.testing.assert_allclose(ours.betas, expected, rtol=1e-12, atol=1e-15)
    assert ours.alphas_cumprod[-1] == 0.0 and ours.betas[-1] == 1.0


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_add_noise_velocity_target_match_diffusers(name: str) -> None:
    config = CONFIGS[name]
    ours, ref = NoiseSchedule.from_config(config), reference(config)
    rng = np.random.default_rng(0)
    x0 = rng.standard_normal((4, 4, 8, 8), dtype=np.float32)
    noise = rng.standard_normal((4, 4, 8, 8), dtype=np.float32)
    t = np.array([0, 1, ours.num_train_timesteps // 2, ours.num_train_timesteps - 1], dtype=np.int64)
    tx, tn, tt = torch.from_numpy(x0), torch.from_numpy(noise), torch.from_numpy(t)

    x_t = ours.add_noise(x0, noise, t)
    assert x_t.dtype == np.float32 and x_t.shape == x0.shape
    # atol: at t = T-1, diffusers' float32 a_t is off by ~3e-5 relative (see above).
    np.testing.assert_allclose(x_t, ref.add_noise(tx, tn, tt).numpy(), rtol=1e-5, atol=1e-5)

    v = ours.velocity(x0, noise, t)
    assert v.dtype == np.float32
    np.testing.assert_allclose(v, ref.get_velocity(tx, tn, tt).numpy(), rtol=1e-5, atol=1e-5)

    # And exactly (to float32 rounding) the closed form from our float64 a_t.
    a = ours.alphas_cumprod[t][:, None, None, None]
    np.testing.assert_allclose(x_t, np.sqrt(a) * x0 + np.sqrt(1 - a) * noise, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(v, np.sqrt(a) * noise - np.sqrt(1 - a) * x0, rtol=1e-6, atol=1e-7)

    expected = {"epsilon": noise, "v_prediction": v, "sample": x0}[ref.config.prediction_type]
    target = ours.target(x0, noise, t)
    assert ours.prediction_type == ref.config.prediction_type
    assert target.dtype == np.float32
    np.testing.assert_allclose(target, expected, rtol=1e-6, atol=1e-7)


def test_float64_inputs_stay_float64_and_scalar_t_broadcasts() -> None:
    s = NoiseSchedule.from_config(SD15)
    x0, noise = np.ones((2, 3)), np.zeros((2, 3))
    out = s.add_noise(x0, noise, np.int64(999))
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, np.sqrt(s.alphas_cumprod[999]))


def test_closed_forms() -> None:
    np.testing.assert_allclose(scaled_linear_betas(0.00085, 0.012, 1000)[[0, -1]], [0.00085, 0.012])
    betas = cosine_betas(1000)
    assert betas.max() <= 0.999 and betas[-1] == 0.999
    s = NoiseSchedule(betas=np.full(3, 0.5))
    np.testing.assert_allclose(s.alphas_cumprod, [0.5, 0.25, 0.125])


def test_schedule_arrays_are_read_only() -> None:
    s = NoiseSchedule.from_config(SD15)
    with pytest.raises(ValueError):
        s.alphas_cumprod[0] = 0.0


def test_timesteps_out_of_range() -> None:
    s = NoiseSchedule.from_config(CONFIGS["short"])
    with pytest.raises(ValueError):
        s.add_noise(np.zeros((1, 2)), np.zeros((1, 2)), np.array([50]))
    with pytest.raises(ValueError):
        s.add_noise(np.zeros((1, 2)), np.zeros((1, 2)), np.array([0.5]))


@pytest.mark.parametrize("bad", [
    {"beta_schedule": "sigmoid"},
    {"prediction_type": "flow"},
    {"num_train_timesteps": 0},
    {"num_train_timesteps": 10.5},
    {"num_train_timesteps": 10**12},  # (a schedule that would not fit in memory: one line, not a MemoryError)
    {"beta_start": 0.02, "beta_end": 0.01},
    {"beta_start": "0.1"},
    {"trained_betas": [0.1, 0.2], "num_train_timesteps": 3},
    {"trained_betas": [0.1, 1.5], "num_train_timesteps": 2},
])
def test_invalid_configs_raise_zoodip_error(bad: dict) -> None:
    with pytest.raises(ZoodipError):
        NoiseSchedule.from_config({**SD15, **bad})


def test_trained_betas_used_verbatim() -> None:
    s = NoiseSchedule.from_config({"trained_betas": [0.1, 0.2, 0.3], "num_train_timesteps": 3})
    np.testing.assert_array_equal(s.betas, [0.1, 0.2, 0.3])

"""Samplers (parity with diffusers' schedulers) and generate() (on a NumPy fake model).

A deterministic fake "model" stands in for the UNet; each sampler must reproduce the diffusers
denoising loop (scale_model_input -> model -> step) to float32 precision with Stable Diffusion's
scheduler configuration.
"""
from __future__ import annotations

import math
import re
import warnings

import numpy as np
import pytest

from zoodip.errors import ZoodipError
from zoodip.sampling import SAMPLERS
from zoodip.samplers import (
    ddim_timesteps,
    dpm_timesteps,
    euler_init_noise_sigma,
    euler_timesteps,
    karras_schedule,
    karras_sigmas,
    sample_ddim,
    sample_dpmpp_2m,
    sample_euler,
    sample_euler_ancestral,
    sigmas_at,
)

try:  # the parity tests need the reference implementation; the rest run without it
    import torch
    from diffusers import schedulers
except ImportError:  # pragma: no cover - the test environment has both
    torch = schedulers = None
needs_diffusers = pytest.mark.skipif(schedulers is None, reason="needs torch + diffusers")

# diffusers builds sigmas with np.array(torch tensor), which NumPy 2 flags as deprecated.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

SD_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    steps_offset=1,
    clip_sample=False,
    set_alpha_to_one=False,
)
SHAPE = (2, 4, 8, 8)


def sd_alphas_cumprod() -> np.ndarray:
    betas = np.linspace(math.sqrt(0.00085), math.sqrt(0.012), 1000, dtype=np.float64) ** 2
    return np.cumprod(1.0 - betas)


def fake_model(x: np.ndarray, t: float) -> np.ndarray:
    # Depends on x and t non-trivially, like a UNet, but cheap and exactly reproducible.
    return (0.1 * x * math.sin(t) + 0.05 + 0.02 * math.cos(t / 100.0) * np.tanh(x)).astype(np.float32)


def noise() -> np.ndarray:
    return np.random.default_rng(0).standard_normal(SHAPE, dtype=np.float32)


def run_diffusers(scheduler, steps: int, x_T: np.ndarray, **step_kwargs) -> tuple[np.ndarray, np.ndarray]:
    scheduler.set_timesteps(steps)
    x = torch.from_numpy(x_T) * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        model_in = scheduler.scale_model_input(x, t)
        out = torch.from_numpy(fake_model(model_in.numpy(), float(t)))
        x = scheduler.step(out, t, x, **step_kwargs).prev_sample
    return x.numpy(), scheduler.timesteps.numpy()


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


@needs_diffusers
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("steps", [10, 20])
def test_ddim_matches_diffusers(prediction_type: str, steps: int) -> None:
    ref, ref_ts = run_diffusers(
        schedulers.DDIMScheduler(**SD_CONFIG, prediction_type=prediction_type), steps, noise(), eta=0.0
    )
    ts = ddim_timesteps(1000, steps, offset=1)
    np.testing.assert_array_equal(ts, ref_ts)
    out = sample_ddim(fake_model, noise(), sd_alphas_cumprod(), ts, prediction_type)
    assert out.dtype == np.float32 and out.shape == SHAPE
    assert rel_err(out, ref) < 1e-5


@needs_diffusers
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("steps,spacing", [(15, "trailing"), (4, "linspace"), (7, "trailing")])
def test_ddim_steps_back_by_the_step_ratio_whatever_the_spacing(prediction_type: str, steps: int, spacing: str) -> None:
    """diffusers' DDIM goes from t to t - num_train // steps, which is the list's next timestep only with "leading"."""
    config = {**SD_CONFIG, "timestep_spacing": spacing, "steps_offset": 0}
    ref, ref_ts = run_diffusers(schedulers.DDIMScheduler(**config, prediction_type=prediction_type), steps, noise())
    ts = ddim_timesteps(1000, steps, offset=0, spacing=spacing)
    np.testing.assert_array_equal(ts, ref_ts)
    out = sample_ddim(fake_model, noise(), sd_alphas_cumprod(), ts, prediction_type, step_ratio=1000 // steps)
    assert rel_err(out, ref) < 1e-5
    listed = sample_ddim(fake_model, noise(), sd_alphas_cumprod(), ts, prediction_type)  # the list's next timestep
    assert rel_err(listed, ref) > 1e-4


@needs_diffusers
def test_ddim_set_alpha_to_one_and_eta() -> None:
    config = {**SD_CONFIG, "set_alpha_to_one": True}
    steps = 10
    ref, _ = run_diffusers(schedulers.DDIMScheduler(**config), steps, noise())
    out = sample_ddim(fake_model, noise(), sd_alphas_cumprod(), ddim_timesteps(1000, steps), final_alpha_cumprod=1.0)
    assert rel_err(out, ref) < 1e-5

    # eta > 0: same noise sequence on both sides -> same result.
    draws = np.random.default_rng(5).standard_normal((steps,) + SHAPE, dtype=np.float32)
    scheduler = schedulers.DDIMScheduler(**SD_CONFIG)
    scheduler.set_timesteps(steps)
    x = torch.from_numpy(noise())
    for i, t in enumerate(scheduler.timesteps):
        out_t = torch.from_numpy(fake_model(x.numpy(), float(t)))
        x = scheduler.step(out_t, t, x, eta=0.7, variance_noise=torch.from_numpy(draws[i])).prev_sample

    class Replay:
        def __init__(self) -> None:
            self.i = 0

        def standard_normal(self, shape, dtype):  # the one Generator method sample_ddim uses
            self.i += 1
            return draws[self.i - 1]

    mine = sample_ddim(fake_model, noise(), sd_alphas_cumprod(), ddim_timesteps(1000, steps), eta=0.7,
                       rng=Replay())  # type: ignore[arg-type]
    assert rel_err(mine, x.numpy()) < 1e-5


@needs_diffusers
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("steps,spacing", [(10, "linspace"), (20, "linspace"), (15, "leading"), (12, "trailing")])
def test_dpmpp_2m_matches_diffusers(prediction_type: str, steps: int, spacing: str) -> None:
    scheduler = schedulers.DPMSolverMultistepScheduler(
        **{k: v for k, v in SD_CONFIG.items() if k not in ("clip_sample", "set_alpha_to_one")},
        prediction_type=prediction_type,
        algorithm_type="dpmsolver++",
        solver_order=2,
        timestep_spacing=spacing,
    )
    ref, ref_ts = run_diffusers(scheduler, steps, noise())
    ts = dpm_timesteps(1000, steps, spacing=spacing, offset=1)
    np.testing.assert_array_equal(ts, ref_ts)
    out = sample_dpmpp_2m(fake_model, noise(), sd_alphas_cumprod(), ts, prediction_type)
    assert out.dtype == np.float32
    assert rel_err(out, ref) < 1e-5


@needs_diffusers
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("steps,spacing", [(10, "linspace"), (16, "leading")])
def test_euler_matches_diffusers(prediction_type: str, steps: int, spacing: str) -> None:
    scheduler = schedulers.EulerDiscreteScheduler(
        **{k: v for k, v in SD_CONFIG.items() if k not in ("clip_sample", "set_alpha_to_one")},
        prediction_type=prediction_type,
        timestep_spacing=spacing,
    )
    ref, ref_ts = run_diffusers(scheduler, steps, noise())
    ts = euler_timesteps(1000, steps, spacing=spacing, offset=1)
    np.testing.assert_allclose(ts, ref_ts, rtol=0, atol=1e-4)
    ac = sd_alphas_cumprod()
    init = euler_init_noise_sigma(float(sigmas_at(ac, ts[:1])[0]), spacing)
    assert init == pytest.approx(float(scheduler.init_noise_sigma), rel=1e-6)
    out = sample_euler(fake_model, noise(), ac, ts, prediction_type, init_noise_sigma=init)
    assert rel_err(out, ref) < 1e-5


@needs_diffusers
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("steps", [8, 20, 30])
def test_dpmpp_2m_karras_matches_diffusers(prediction_type: str, steps: int) -> None:
    scheduler = schedulers.DPMSolverMultistepScheduler(
        **{k: v for k, v in SD_CONFIG.items() if k not in ("clip_sample", "set_alpha_to_one")},
        prediction_type=prediction_type, algorithm_type="dpmsolver++", solver_order=2, use_karras_sigmas=True,
    )
    ref, ref_ts = run_diffusers(scheduler, steps, noise())
    ac = scheduler.alphas_cumprod.numpy().astype(np.float64)  # diffusers' float32 schedule: its sigma_min to 1e-7
    sigmas, ts = karras_schedule(ac, steps)
    np.testing.assert_array_equal(ts, ref_ts)
    np.testing.assert_allclose(sigmas, scheduler.sigmas.numpy()[:-1], rtol=1e-6)
    out = sample_dpmpp_2m(fake_model, noise(), ac, ts, prediction_type, sigmas=sigmas)
    assert rel_err(out, ref) < 1e-5


class ReplayDraws:
    """A stand-in for the NumPy generator a noisy sampler draws its per-step noise from: diffusers' draws, replayed."""

    def __init__(self, seed: int, count: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.draws = [torch.randn(SHAPE, generator=generator).numpy() for _ in range(count)]

    def standard_normal(self, shape, dtype):  # the one Generator method the samplers use
        assert tuple(shape) == SHAPE and dtype == np.float32
        return self.draws.pop(0)


@needs_diffusers
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("steps,karras", [(10, False), (20, False), (8, True), (25, True)])
def test_dpmpp_2m_sde_matches_diffusers_with_the_same_noise(prediction_type: str, steps: int, karras: bool) -> None:
    """DPM++ 2M SDE (A1111's name; diffusers' sde-dpmsolver++), on the timesteps' own sigmas and on Karras'."""
    scheduler = schedulers.DPMSolverMultistepScheduler(
        **{k: v for k, v in SD_CONFIG.items() if k not in ("clip_sample", "set_alpha_to_one")},
        prediction_type=prediction_type, algorithm_type="sde-dpmsolver++", solver_order=2, use_karras_sigmas=karras,
    )
    ref, ref_ts = run_diffusers(scheduler, steps, noise(), generator=torch.Generator().manual_seed(9))
    ac = scheduler.alphas_cumprod.numpy().astype(np.float64) if karras else sd_alphas_cumprod()
    sigmas, ts = karras_schedule(ac, steps) if karras else (None, dpm_timesteps(1000, steps))
    np.testing.assert_array_equal(ts, ref_ts)
    replay = ReplayDraws(9, steps)  # one draw a step, the last one too (multiplied by sigma 0)
    out = sample_dpmpp_2m(fake_model, noise(), ac, ts, prediction_type, sigmas=sigmas,
                          noise_rng=replay)  # type: ignore[arg-type]
    assert replay.draws == [] and rel_err(out, ref) < 1e-5
    ode = sample_dpmpp_2m(fake_model, noise(), ac, ts, prediction_type, sigmas=sigmas)
    assert rel_err(out, ode) > 1e-2  # the noise and the SDE's coefficients matter


def test_karras_sigmas_follow_the_papers_formula() -> None:
    sigmas = karras_sigmas(0.03, 14.6, 5)
    assert sigmas[0] == pytest.approx(14.6) and sigmas[-1] == pytest.approx(0.03)
    roots = sigmas ** (1 / 7)
    np.testing.assert_allclose(np.diff(roots), np.diff(roots)[0], rtol=1e-12)  # equal steps in sigma^(1/rho)


@needs_diffusers
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("steps,spacing", [(10, "linspace"), (16, "leading"), (12, "trailing")])
def test_euler_ancestral_matches_diffusers_with_the_same_noise(prediction_type: str, steps: int, spacing: str) -> None:
    scheduler = schedulers.EulerAncestralDiscreteScheduler(
        **{k: v for k, v in SD_CONFIG.items() if k not in ("clip_sample", "set_alpha_to_one")},
        prediction_type=prediction_type, timestep_spacing=spacing,
    )
    ref, ref_ts = run_diffusers(scheduler, steps, noise(), generator=torch.Generator().manual_seed(7))
    # diffusers draws one standard normal of the latents' shape per step from the generator: the same draws.
    generator = torch.Generator().manual_seed(7)
    draws = [torch.randn(SHAPE, generator=generator).numpy() for _ in range(steps)]

    class Replay:
        def standard_normal(self, shape, dtype):  # the one Generator method the sampler uses
            assert tuple(shape) == SHAPE and dtype == np.float32
            return draws.pop(0)

    ts = euler_timesteps(1000, steps, spacing=spacing, offset=1)
    np.testing.assert_allclose(ts, ref_ts, rtol=0, atol=1e-4)
    ac = sd_alphas_cumprod()
    init = euler_init_noise_sigma(float(sigmas_at(ac, ts[:1])[0]), spacing)
    out = sample_euler_ancestral(fake_model, noise(), ac, ts, prediction_type, rng=Replay(),  # type: ignore[arg-type]
                                 init_noise_sigma=init)
    assert draws == [] and rel_err(out, ref) < 1e-5


def test_timestep_spacings() -> None:
    np.testing.assert_array_equal(ddim_timesteps(1000, 10), np.arange(901, 0, -100))
    np.testing.assert_array_equal(dpm_timesteps(1000, 10)[[0, -1]], [999, 100])
    with pytest.raises(ZoodipError):
        ddim_timesteps(1000, 0)
    with pytest.raises(ZoodipError):
        ddim_timesteps(1000, 1000, offset=1)  # would reach t = 1000
    with pytest.raises(ZoodipError):
        dpm_timesteps(1000, 10, spacing="karras")  # type: ignore[arg-type]


def test_callback_and_prediction_type_check() -> None:
    seen: list[tuple[int, float]] = []
    ts = dpm_timesteps(1000, 5)
    final = sample_dpmpp_2m(fake_model, noise(), sd_alphas_cumprod(), ts, callback=lambda i, t, x: seen.append((i, t)))
    assert seen == [(i, float(t)) for i, t in enumerate(ts)]
    assert np.isfinite(final).all()
    with pytest.raises(ZoodipError):
        sample_ddim(fake_model, noise(), sd_alphas_cumprod(), ts, "flow")


# -- generate() on a NumPy fake model --------------------------------------------------------------
from zoodip.generate import generate  # noqa: E402
from zoodip.sampling import run_sampler  # noqa: E402
from zoodip.schedule import NoiseSchedule  # noqa: E402

BOS, EOS, BASE_VOCAB, HIDDEN = 1, 2, 50, 8


class FakeTokenizer:
    """Whitespace tokenizer with the interface generate() uses (base_vocab_size, __call__, add_placeholder)."""

    def __init__(self) -> None:
        self.base_vocab_size = BASE_VOCAB
        self.added: dict[str, list[int]] = {}

    def add_placeholder(self, token: str, num_vectors: int = 1) -> list[int]:
        if token in self.added:
            raise ValueError(f"{token} already added")
        start = self.base_vocab_size + sum(len(v) for v in self.added.values())
        self.added[token] = list(range(start, start + num_vectors))
        return self.added[token]

    def __call__(self, texts: list[str]) -> np.ndarray:
        out = np.full((len(texts), 77), EOS, dtype=np.int64)
        for row, text in enumerate(texts):
            ids = [BOS]
            for word in text.split():
                ids += self.added.get(word, [3 + sum(map(ord, word)) % (BASE_VOCAB - 3)])
            ids = (ids + [EOS])[:77]
            out[row, : len(ids)] = ids
        return out


class FakeModel:
    """Tiny deterministic stand-ins for the four graphs, recording how they are called."""

    latent_channels, vae_scale_factor, sample_size, hidden_size = 4, 8, 4, HIDDEN

    def __init__(self, prediction_type: str = "epsilon") -> None:
        self.tokenizer = FakeTokenizer()
        self.schedule = NoiseSchedule.from_config({**SD_CONFIG, "prediction_type": prediction_type})
        self.scheduler_config = dict(SD_CONFIG)
        self.table = np.random.default_rng(1).standard_normal((BASE_VOCAB, HIDDEN)).astype(np.float32)
        self.text_calls: list[tuple[np.ndarray, np.ndarray | None]] = []
        self.unet_batches: list[int] = []

    def encode_text(self, ids: np.ndarray, extra_rows: np.ndarray | None = None) -> np.ndarray:
        self.text_calls.append((ids.copy(), None if extra_rows is None else extra_rows.copy()))
        rows = np.concatenate([self.table, extra_rows]) if extra_rows is not None else self.table
        return np.tanh(np.cumsum(rows[ids], axis=1) / 4.0).astype(np.float32)

    def unet(self, sample: np.ndarray, timestep: np.ndarray, encoder_hidden_states: np.ndarray) -> np.ndarray:
        assert sample.dtype == timestep.dtype == encoder_hidden_states.dtype == np.float32
        assert len(sample) == len(timestep) == len(encoder_hidden_states)
        self.unet_batches.append(len(sample))
        context = encoder_hidden_states.mean(axis=1)[:, :4, None, None]  # [B, 4, 1, 1]
        return (0.1 * sample * np.sin(timestep[:, None, None, None]) + 0.3 * context).astype(np.float32)

    def vae_decode(self, latents: np.ndarray) -> np.ndarray:
        up = latents[:, :3].repeat(self.vae_scale_factor, axis=2).repeat(self.vae_scale_factor, axis=3)
        return np.tanh(up).astype(np.float32)


def final_latents(model: FakeModel, prompt: str, **kwargs) -> np.ndarray:
    seen: list[np.ndarray] = []
    generate(model, prompt, callback=lambda step, total, x: seen.append(x.copy()), **kwargs)
    return seen[-1]


def test_generate_sizes_and_seeds() -> None:
    model = FakeModel()
    images = generate(model, "a photo of a dog", steps=4, num_images=2)
    assert [im.size for im in images] == [(32, 32)] * 2 and all(im.mode == "RGB" for im in images)
    assert [im.size for im in generate(model, "a dog", steps=2, height=48, width=64)] == [(64, 48)]
    a = np.asarray(generate(FakeModel(), "a dog", steps=3, seed=7)[0])
    b = np.asarray(generate(FakeModel(), "a dog", steps=3, seed=7)[0])
    c = np.asarray(generate(FakeModel(), "a dog", steps=3, seed=8)[0])
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    for bad in ({"height": 36}, {"width": 0}, {"sampler": "plms"}, {"steps": 0}, {"num_images": 0}, {"seed": -1},
                {"eta": 0.5}):
        with pytest.raises(ZoodipError):
            generate(model, "a dog", **bad)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_a_prediction_that_overflows_is_one_error_not_a_black_image(sampler: str, monkeypatch) -> None:
    """Whatever drives the guided prediction past float32 (a broken model here; huge guidance scales and emphasis
    weights are refused before), sampling ends in one clear error, without NumPy's overflow warnings on the way."""
    model = FakeModel()
    monkeypatch.setattr(model, "unet", lambda sample, t, states: np.full_like(sample, 3e38))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # NumPy's (the lcm sampler's note on 7.5 is a UserWarning)
        with pytest.raises(ZoodipError, match="sampling ended in non-finite latents"):
            generate(model, "a dog", steps=3, sampler=sampler, guidance_scale=7.5)
    for scale in (1e38, 101, -101, float("inf"), float("nan"), True):
        with pytest.raises(ZoodipError, match=r"guidance_scale must be a number within \+-100"):
            generate(FakeModel(), "a dog", steps=2, guidance_scale=scale)
    generate(FakeModel(), "a dog", steps=2, guidance_scale=-100)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_generate_batched_cfg_equals_sequential(sampler: str) -> None:
    batched, sequential = FakeModel(), FakeModel()
    x1 = final_latents(batched, "a red dog", negative_prompt="blurry", steps=5, sampler=sampler, num_images=2)
    x2 = final_latents(sequential, "a red dog", negative_prompt="blurry", steps=5, sampler=sampler, num_images=2,
                       batch_cfg=False)
    np.testing.assert_allclose(x1, x2, rtol=0, atol=1e-6)
    assert batched.unet_batches == [4] * 5 and sequential.unet_batches == [2] * 10


def test_generate_guidance_math() -> None:
    model = FakeModel("v_prediction")
    # guidance 1.0: the prompt alone, one UNet pass per step, no negative prompt encoded.
    x_g1 = final_latents(model, "a dog", negative_prompt="cat", guidance_scale=1.0, steps=4)
    assert model.unet_batches == [1] * 4 and len(model.text_calls) == 1

    cond = model.encode_text(model.tokenizer(["a dog"]))
    uncond = model.encode_text(model.tokenizer(["cat"]))
    noise = np.random.default_rng(0).standard_normal((1, 4, 4, 4), dtype=np.float32)

    def guided(g: float):
        def fn(x: np.ndarray, t: float) -> np.ndarray:
            ts = np.full((1,), t, np.float32)
            u, c = model.unet(x, ts, uncond), model.unet(x, ts, cond)
            return u + g * (c - u)
        return fn

    np.testing.assert_allclose(x_g1, run_sampler(model, guided(1.0), noise, steps=4), atol=1e-6)
    x_g3 = final_latents(model, "a dog", negative_prompt="cat", guidance_scale=3.0, steps=4)
    np.testing.assert_allclose(x_g3, run_sampler(model, guided(3.0), noise, steps=4), atol=1e-5)


def test_generate_added_embeddings_reach_encoder_without_side_effects() -> None:
    model = FakeModel()
    vectors = np.random.default_rng(3).standard_normal((2, HIDDEN)).astype(np.float32)
    single = np.full(HIDDEN, 0.5, np.float32)
    with pytest.warns(UserWarning, match="'<x>' in a prompt looks like a learned token"):  # read as plain text
        plain = final_latents(model, "a photo of <x>", steps=3)
    model.text_calls.clear()
    learned = final_latents(model, "a photo of <x> and <y>", steps=3, added_embeddings={"<x>": vectors, "<y>": single})

    ids, extra = model.text_calls[0]  # the prompt (the negative prompt comes second)
    assert ids[0, :7].tolist() == [BOS, model.tokenizer(["a"])[0, 1], model.tokenizer(["photo"])[0, 1],
                                   model.tokenizer(["of"])[0, 1], BASE_VOCAB, BASE_VOCAB + 1, ids[0, 6]]
    assert ids[0, 7] == BASE_VOCAB + 2
    np.testing.assert_array_equal(extra, np.concatenate([vectors, single[None]]))
    assert not np.allclose(plain, learned)
    assert model.tokenizer.added == {}  # the caller's tokenizer is untouched

    with pytest.raises(ZoodipError):  # wrong width
        generate(model, "<x>", steps=1, added_embeddings={"<x>": np.zeros((1, HIDDEN + 1), np.float32)})


def test_generate_with_placeholders_already_in_the_tokenizer() -> None:
    model = FakeModel()
    model.tokenizer.add_placeholder("<old>")  # e.g. a training run added it to this model
    vec = np.ones((1, HIDDEN), np.float32)
    final_latents(model, "a <new>", steps=2, added_embeddings={"<new>": vec})
    ids, extra = model.text_calls[0]
    assert ids[0, 2] == BASE_VOCAB + 1 and np.array_equal(extra[1], vec[0]) and not extra[0].any()
    # Re-giving an existing placeholder's vectors reuses its id.
    model.text_calls.clear()
    final_latents(model, "a <old>", steps=2, added_embeddings={"<old>": vec})
    ids, extra = model.text_calls[0]
    assert ids[0, 2] == BASE_VOCAB and np.array_equal(extra[0], vec[0])
    # Using it without its vectors is refused rather than conditioning on zeros.
    with pytest.raises(ZoodipError, match="not given"):
        generate(model, "a <old> and <new>", steps=1, added_embeddings={"<new>": vec})


def _fp32_export_and_pipeline(tiny_sd_folder, tmp_path, curvature_samples: int | None):
    """The tiny folder's fp32 export, loaded, and diffusers' pipeline on the folder itself (no progress bar)."""
    import warnings

    from diffusers import StableDiffusionPipeline

    from zoodip.model import ExportedModel
    from zoodip_export.export_model import export_model

    export_model(tiny_sd_folder, tmp_path / "fp32", precision="fp32", parity=False, progress=False,
                 curvature_samples=curvature_samples)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = StableDiffusionPipeline.from_pretrained(tiny_sd_folder, safety_checker=None, feature_extractor=None,
                                                       requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return ExportedModel.load(tmp_path / "fp32"), pipe


@needs_diffusers
@pytest.mark.slow
def test_generate_matches_the_diffusers_pipeline(tiny_sd_folder, tmp_path) -> None:
    """End to end on the tiny SD folder (fp32 export): same images as StableDiffusionPipeline given the
    same initial latents, with a learned token loaded from our embedding file on both sides."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    from zoodip.embeddings import load_embedding_file, save_learned_embeds

    model, pipe = _fp32_export_and_pipeline(tiny_sd_folder, tmp_path, curvature_samples=None)
    vectors = np.random.default_rng(0).standard_normal((2, model.hidden_size)).astype(np.float32) * 0.02
    path = save_learned_embeds(tmp_path / "learned_embeds.safetensors", "<tok>", vectors)
    pipe.load_textual_inversion(str(path))
    token, loaded = load_embedding_file(path)

    base_config = pipe.scheduler.config
    rescaled_inner = {"guidance_rescale": 0.7, "clip_skip": 1}  # both pipeline arguments, on one case
    for sampler, scheduler_class, options, extra in (
            ("dpmpp_2m", DPMSolverMultistepScheduler, {}, {}), ("ddim", DDIMScheduler, {}, {}),
            ("dpmpp_2m_karras", DPMSolverMultistepScheduler, {"use_karras_sigmas": True}, {}),
            ("dpmpp_2m", DPMSolverMultistepScheduler, {}, rescaled_inner)):
        pipe.scheduler = scheduler_class.from_config(base_config, **options)
        shape = (2, model.latent_channels, model.sample_size, model.sample_size)
        noise = np.random.default_rng(3).standard_normal(shape, dtype=np.float32)  # what generate(seed=3) draws
        kwargs = dict(negative_prompt="blurry", guidance_scale=7.5, **extra)
        ref_kwargs = dict(prompt=f"a photo of {token}", **kwargs)
        if "clip_skip" in extra:
            # diffusers' SD pipeline skips layers for the prompt only (its SDXL pipelines were fixed to skip them
            # for the negative prompt too); zoodip, as A1111, conditions both on the same layer: so does the reference.
            def encode(text: str) -> torch.Tensor:
                return pipe.encode_prompt(text, "cpu", 1, False, clip_skip=extra["clip_skip"])[0]

            ref_kwargs = dict(prompt_embeds=encode(ref_kwargs.pop("prompt")),
                              negative_prompt_embeds=encode(ref_kwargs.pop("negative_prompt")),
                              **{k: v for k, v in ref_kwargs.items() if k != "clip_skip"})
        ref = pipe(num_inference_steps=6, latents=torch.from_numpy(noise), output_type="np", num_images_per_prompt=2,
                   **ref_kwargs).images
        ours = generate(model, f"a photo of {token}", steps=6, sampler=sampler, seed=3, num_images=2,
                        added_embeddings={token: loaded}, **kwargs)
        diff = np.abs(np.stack([np.asarray(im) for im in ours]).astype(int) - (ref * 255).round().astype(int))
        assert diff.max() <= 2 and diff.mean() < 0.05, (sampler, extra, diff.max(), diff.mean())
        if extra:  # and they change the images
            plain = generate(model, f"a photo of {token}", steps=6, sampler=sampler, seed=3, num_images=2,
                             added_embeddings={token: loaded}, negative_prompt="blurry", guidance_scale=7.5)
            assert np.abs(np.asarray(plain[0], float) - np.asarray(ours[0], float)).mean() > 1.0


@needs_diffusers
@pytest.mark.slow
def test_generate_with_dpmpp_2m_sde_karras_matches_the_diffusers_pipeline(tiny_sd_folder, tmp_path, monkeypatch) -> None:
    """A1111's "DPM++ 2M SDE Karras" end to end on the tiny SD folder (fp32 export): the seed's start noise and its
    per-step draws given to diffusers' pipeline too (its scheduler's draws replaced by ours)."""
    from diffusers import DPMSolverMultistepScheduler
    from diffusers.schedulers import scheduling_dpmsolver_multistep

    model, pipe = _fp32_export_and_pipeline(tiny_sd_folder, tmp_path, curvature_samples=0)
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config, algorithm_type="sde-dpmsolver++",
                                                             use_karras_sigmas=True)
    shape = (2, model.latent_channels, model.sample_size, model.sample_size)
    rng = np.random.default_rng(3)  # generate(seed=3)'s: the start noise, then one draw a step
    start = rng.standard_normal(shape, dtype=np.float32)
    draws = [rng.standard_normal(shape, dtype=np.float32) for _ in range(6)]
    monkeypatch.setattr(scheduling_dpmsolver_multistep, "randn_tensor",
                        lambda shape, **kwargs: torch.from_numpy(draws.pop(0)))
    ref = pipe("a red star", negative_prompt="blurry", num_inference_steps=6, guidance_scale=7.5,
               latents=torch.from_numpy(start), output_type="np", num_images_per_prompt=2).images
    assert draws == []
    ours = generate(model, "a red star", negative_prompt="blurry", steps=6, guidance_scale=7.5, seed=3, num_images=2,
                    sampler="dpmpp_2m_sde_karras")
    diff = np.abs(np.stack([np.asarray(im) for im in ours]).astype(int) - (ref * 255).round().astype(int))
    assert diff.max() <= 2 and diff.mean() < 0.05, (diff.max(), diff.mean())


@needs_diffusers
def test_generate_matches_the_diffusers_pipeline_at_sides_the_unet_halvings_do_not_divide(tiny_sd_folder,
                                                                                         tmp_path) -> None:
    """136x120 px: 17x15 latents, which the tiny UNet's halving rounds up; diffusers resizes its upsampling to the skip
    connection, and so does the exported UNet (exports before it refused every side but multiples of 16 px)."""
    from diffusers import DDIMScheduler

    model, pipe = _fp32_export_and_pipeline(tiny_sd_folder, tmp_path, curvature_samples=0)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    noise = np.random.default_rng(5).standard_normal((1, model.latent_channels, 15, 17), dtype=np.float32)
    ref = pipe("a red star", num_inference_steps=4, height=120, width=136, latents=torch.from_numpy(noise),
               output_type="np").images
    (ours,) = generate(model, "a red star", steps=4, sampler="ddim", seed=5, height=120, width=136)
    assert ours.size == (136, 120)
    diff = np.abs(np.asarray(ours).astype(int) - (ref[0] * 255).round().astype(int))
    assert diff.max() <= 2 and diff.mean() < 0.05, (diff.max(), diff.mean())


@needs_diffusers
def test_guidance_rescale_is_diffusers_rescale_noise_cfg() -> None:
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg

    from zoodip.generate import rescale_guidance

    rng = np.random.default_rng(0)
    cond = rng.standard_normal((3, 4, 8, 8)).astype(np.float32)
    guided = (cond * rng.uniform(1, 4, (3, 1, 1, 1)) + rng.standard_normal((3, 4, 8, 8))).astype(np.float32)
    for phi in (0.0, 0.7, 1.0):
        ref = rescale_noise_cfg(torch.from_numpy(guided), torch.from_numpy(cond), guidance_rescale=phi).numpy()
        np.testing.assert_allclose(rescale_guidance(guided, cond, phi), ref, rtol=1e-5, atol=1e-6)
    full = rescale_guidance(guided, cond, 1.0)
    np.testing.assert_allclose(full.std(axis=(1, 2, 3)), cond.std(axis=(1, 2, 3)), rtol=1e-5)  # eq. 15: the spread


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), True, "0.7"])
def test_a_guidance_rescale_outside_0_1_is_one_line(bad) -> None:
    with pytest.raises(ZoodipError, match="guidance_rescale must be a number from 0 to 1"):
        generate(FakeModel("epsilon"), "a dog", steps=1, guidance_rescale=bad)


@needs_diffusers
@pytest.mark.filterwarnings("ignore::FutureWarning")  # diffusers: one image for two images per prompt (as intended)
def fp32_export_and_pipeline(folder, tmp_path, monkeypatch, pipeline_class):
    """The folder exported in fp32 (its VAE encoder giving the posterior's mean, as the tests make diffusers' do) and
    the diffusers pipeline of ``pipeline_class`` on the same folder."""
    from zoodip.model import ExportedModel
    from zoodip_export.export_model import export_model

    export_model(folder, tmp_path / "fp32", precision="fp32", parity=False, progress=False)
    model = ExportedModel.load(tmp_path / "fp32")
    encode = model.vae_encode
    monkeypatch.setattr(model, "vae_encode", lambda images, rng=None: encode(images))  # the mean
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = pipeline_class.from_pretrained(folder, safety_checker=None, feature_extractor=None,
                                              requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return model, pipe


def test_image_to_image_matches_the_diffusers_img2img_pipeline(tiny_sd_folder, tmp_path, monkeypatch) -> None:
    """generate(image=, strength=) against StableDiffusionImg2ImgPipeline on the tiny SD folder (fp32 export), each
    sampler: the same start image, the VAE posterior's mean on both sides and the same noise (diffusers' draws
    replaced by ours), so only the timesteps kept, the noising and the sampling are compared. (euler_a's per-step noise
    is NumPy's: it is compared at the sampler level, test_euler_ancestral_matches_diffusers_with_the_same_noise.)"""
    from diffusers import (DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler,
                           StableDiffusionImg2ImgPipeline)
    from diffusers.pipelines.stable_diffusion import pipeline_stable_diffusion_img2img as img2img
    from PIL import Image

    from zoodip.generate import initial_latents

    model, pipe = fp32_export_and_pipeline(tiny_sd_folder, tmp_path, monkeypatch, StableDiffusionImg2ImgPipeline)
    side = model.sample_size * model.vae_scale_factor
    rng = np.random.default_rng(4)
    start = Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8))  # at the size: no resizing
    noise = initial_latents(model, seed=3, num_images=2)  # the noise generate(seed=3) draws first
    monkeypatch.setattr(img2img, "retrieve_latents", lambda output, generator=None: output.latent_dist.mean)
    monkeypatch.setattr(img2img, "randn_tensor", lambda shape, **kwargs: torch.from_numpy(noise))
    base_config = pipe.scheduler.config
    for sampler, scheduler_class, options in (
            ("dpmpp_2m", DPMSolverMultistepScheduler, {}), ("ddim", DDIMScheduler, {}),
            ("euler", EulerDiscreteScheduler, {}), ("dpmpp_2m_karras", DPMSolverMultistepScheduler,
                                                    {"use_karras_sigmas": True})):
        pipe.scheduler = scheduler_class.from_config(base_config, **options)
        for strength in (0.3, 0.75):
            kwargs = dict(negative_prompt="blurry", guidance_scale=7.5, strength=strength)
            with warnings.catch_warnings():  # diffusers' img2img deprecates one image for a batch of 2: its business
                warnings.simplefilter("ignore", FutureWarning)
                ref = pipe("a photo of a star", image=start, num_inference_steps=10, output_type="np",
                           num_images_per_prompt=2, **kwargs).images
            ours = generate(model, "a photo of a star", image=start, steps=10, sampler=sampler, seed=3, num_images=2,
                            **kwargs)
            diff = np.abs(np.stack([np.asarray(im) for im in ours]).astype(int) - (ref * 255).round().astype(int))
            assert diff.max() <= 2 and diff.mean() < 0.05, (sampler, strength, diff.max(), diff.mean())


def test_euler_a_noise_comes_from_the_seed() -> None:
    """Given the same initial latents, euler's result ignores the seed; euler_a's per-step noise follows it."""
    start = np.random.default_rng(0).standard_normal((1, 4, 4, 4), dtype=np.float32)  # FakeModel: 32 px

    def run(sampler: str, seed: int) -> np.ndarray:
        return final_latents(FakeModel(), "a dog", steps=4, sampler=sampler, seed=seed, latents=start)

    assert np.array_equal(run("euler", 7), run("euler", 8))
    assert np.array_equal(run("euler_a", 7), run("euler_a", 7)) and not np.allclose(run("euler_a", 7), run("euler_a", 8))
    with pytest.raises(ZoodipError, match="euler_a sampler adds noise every step: pass rng"):
        run_sampler(FakeModel(), fake_model, noise(), sampler="euler_a", steps=3)


def test_inpainting_matches_the_diffusers_inpainting_pipeline(tiny_sd_folder, tmp_path, monkeypatch) -> None:
    """generate(image=, mask_image=, strength=) against StableDiffusionInpaintPipeline on the tiny SD folder (a
    4-channel UNet: diffusers puts the kept part back after each step), as the img2img test above: the posterior's
    mean and our noise on both sides; strength 1 (diffusers' default, from noise alone) and 0.5."""
    from diffusers import (DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler,
                           StableDiffusionInpaintPipeline)
    from diffusers.pipelines.stable_diffusion import pipeline_stable_diffusion_inpaint as inpaint
    from PIL import Image

    from zoodip.generate import initial_latents

    model, pipe = fp32_export_and_pipeline(tiny_sd_folder, tmp_path, monkeypatch, StableDiffusionInpaintPipeline)
    side = model.sample_size * model.vae_scale_factor
    rng = np.random.default_rng(6)
    start = Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8))
    gray = np.zeros((side, side), np.uint8)
    gray[side // 4 : 3 * side // 4, side // 8 : side // 2] = 230  # a box, light gray: white after the split at half
    mask = Image.fromarray(gray)
    noise = initial_latents(model, seed=7, num_images=2)
    monkeypatch.setattr(inpaint, "retrieve_latents", lambda output, generator=None: output.latent_dist.mean)
    monkeypatch.setattr(inpaint, "randn_tensor", lambda shape, **kwargs: torch.from_numpy(noise))
    base_config = pipe.scheduler.config
    for sampler, scheduler_class in (("dpmpp_2m", DPMSolverMultistepScheduler), ("ddim", DDIMScheduler),
                                     ("euler", EulerDiscreteScheduler)):
        pipe.scheduler = scheduler_class.from_config(base_config)
        for strength in (1.0, 0.5):
            kwargs = dict(negative_prompt="blurry", guidance_scale=7.5, strength=strength)
            ref = pipe("a photo of a star", image=start, mask_image=mask, num_inference_steps=10, output_type="np",
                       num_images_per_prompt=2, height=side, width=side, **kwargs).images
            ours = generate(model, "a photo of a star", image=start, mask_image=mask, steps=10, sampler=sampler,
                            seed=7, num_images=2, **kwargs)
            diff = np.abs(np.stack([np.asarray(im) for im in ours]).astype(int) - (ref * 255).round().astype(int))
            assert diff.max() <= 2 and diff.mean() < 0.05, (sampler, strength, diff.max(), diff.mean())


def test_only_masked_inpainting_matches_diffusers_padding_mask_crop(tiny_sd_folder, tmp_path, monkeypatch) -> None:
    """generate(padding_mask_crop=) against StableDiffusionInpaintPipeline's: a photo twice the native size, the
    box around its mask and the padding exactly the native size (no resampling on either side), redrawn there and
    pasted back into the whole photo, whose kept part comes back untouched."""
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionInpaintPipeline
    from diffusers.pipelines.stable_diffusion import pipeline_stable_diffusion_inpaint as inpaint
    from PIL import Image

    from zoodip.generate import initial_latents

    model, pipe = fp32_export_and_pipeline(tiny_sd_folder, tmp_path, monkeypatch, StableDiffusionInpaintPipeline)
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)  # our default sampler's
    side = model.sample_size * model.vae_scale_factor
    rng = np.random.default_rng(8)
    start = Image.fromarray(rng.integers(0, 256, (2 * side, 2 * side, 3), dtype=np.uint8))
    gray = np.zeros((2 * side, 2 * side), np.uint8)
    gray[side : side + side // 2, side // 2 : side] = 255  # a box side/2 wide: with side/4 padding, side wide
    mask = Image.fromarray(gray)
    noise = initial_latents(model, seed=9, num_images=1)
    monkeypatch.setattr(inpaint, "retrieve_latents", lambda output, generator=None: output.latent_dist.mean)
    monkeypatch.setattr(inpaint, "randn_tensor", lambda shape, **kwargs: torch.from_numpy(noise))
    for strength in (1.0, 0.6):
        kwargs = dict(negative_prompt="blurry", guidance_scale=7.5, strength=strength, padding_mask_crop=side // 4)
        ref = pipe("a photo of a star", image=start, mask_image=mask, num_inference_steps=10, height=side,
                   width=side, **kwargs).images[0]
        ours = generate(model, "a photo of a star", image=start, mask_image=mask, steps=10, seed=9, **kwargs)[0]
        assert ours.size == ref.size == start.size
        diff = np.abs(np.asarray(ours).astype(int) - np.asarray(ref).astype(int))
        assert diff.max() <= 2 and diff.mean() < 0.05, (strength, diff.max(), diff.mean())
        assert np.array_equal(np.asarray(ours)[gray == 0], np.asarray(start)[gray == 0])


def test_api_arguments_of_the_wrong_kind_are_one_clear_error_before_any_work() -> None:
    """What an app backend may pass by mistake: each a ZoodipError naming the argument, before the text encoder runs
    (not a TypeError mid-run, nor a NaN found as a black image after all the steps)."""
    vector = np.ones(HIDDEN, np.float32)
    cases = [
        (dict(added_embeddings=[("<s>", vector)]), "added_embeddings must be a dict"),
        (dict(added_embeddings=vector), "added_embeddings must be a dict"),
        (dict(added_embeddings={"<s>": np.full(HIDDEN, np.nan, np.float32)}), "holds NaN or infinite values"),
        (dict(added_embeddings={"<s>": [None] * HIDDEN}), "must hold real numbers"),
        (dict(added_embeddings={"<s>": np.array(["a"] * HIDDEN)}), "must hold real numbers"),
        (dict(added_embeddings={"<s>": vector.astype(np.complex64)}), "must hold real numbers"),
        (dict(added_embeddings={5: vector}), "keys are token names"),
        (dict(callback=5), "callback must be callable as callback(step, total, latents)"),
        (dict(callback=lambda step: None), "its signature does not take them"),
        (dict(callback=lambda pipe, step, timestep, kwargs: None), "its signature does not take them"),
        (dict(sampler="ddim", eta="x"), "eta must be a number from 0 to 1"),
        (dict(sampler="ddim", eta=float("nan")), "eta must be a number from 0 to 1"),
        (dict(sampler="ddim", eta=1.01), "eta must be a number from 0 to 1"),  # 1e308 overflowed, 100 drowned the image
        (dict(batch_cfg="no"), "batch_cfg must be True or False"),
        (dict(token_groups=5), "token_groups must be a list of lists"),
        (dict(token_groups="<s>"), "token_groups must be a list of lists"),
    ]
    for options, needle in cases:
        model = FakeModel()
        with pytest.raises(ZoodipError, match=re.escape(needle)):
            generate(model, "a photo of <s>", steps=2, **options)
        assert model.unet_batches == [], options  # refused before sampling
    seen = []
    generate(FakeModel(), "a dog", steps=2, callback=lambda *args: seen.append(len(args)))  # *args takes them
    generate(FakeModel(), "a dog", steps=2, callback=lambda step, total, latents, extra=None: None)  # a default: fine
    assert seen == [3, 3]


@needs_diffusers
def test_a_zero_snr_schedule_samples_as_diffusers_with_every_sampler() -> None:
    """A zero-terminal-SNR schedule (``rescale_betas_zero_snr``, v-prediction): its top sigma is infinite, which
    diffusers' Euler and DPM-Solver schedulers make finite with alpha_bar 2^-24; DDIM and LCM step on alpha_bar 0."""
    from zoodip.sampling import sampler_alphas_cumprod

    config = {**SD_CONFIG, "prediction_type": "v_prediction", "rescale_betas_zero_snr": True,
              "timestep_spacing": "trailing"}
    model = FakeModel("v_prediction")
    model.schedule, model.scheduler_config = NoiseSchedule.from_config(config), dict(config)
    reference = schedulers.DPMSolverMultistepScheduler(
        **{k: v for k, v in config.items() if k not in ("clip_sample", "set_alpha_to_one")},
        algorithm_type="sde-dpmsolver++", use_karras_sigmas=True)
    ac = sampler_alphas_cumprod(model, "dpmpp_2m_sde_karras")
    assert ac[-1] == 2.0**-24 and sampler_alphas_cumprod(model, "ddim")[-1] == 0.0
    np.testing.assert_allclose(ac, reference.alphas_cumprod.numpy(), rtol=1e-5, atol=1e-9)
    ref, ref_ts = run_diffusers(reference, 12, noise(), generator=torch.Generator().manual_seed(4))
    sigmas, ts = karras_schedule(reference.alphas_cumprod.numpy().astype(np.float64), 12)
    np.testing.assert_array_equal(ts, ref_ts)
    out = sample_dpmpp_2m(fake_model, noise(), reference.alphas_cumprod.numpy().astype(np.float64), ts, "v_prediction",
                          sigmas=sigmas, noise_rng=ReplayDraws(4, 12))  # type: ignore[arg-type]
    assert rel_err(out, ref) < 1e-5
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no NumPy division by zero on the way
        for sampler in SAMPLERS:
            assert np.isfinite(final_latents(model, "a dog", steps=4, sampler=sampler, guidance_scale=1.5)).all()


def test_a_zero_snr_schedule_with_a_noise_predicting_model_is_one_error_saying_so() -> None:
    config = {**SD_CONFIG, "rescale_betas_zero_snr": True, "timestep_spacing": "trailing"}
    model = FakeModel("epsilon")
    model.schedule, model.scheduler_config = NoiseSchedule.from_config(config), dict(config)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no NumPy division by zero before the one error
        with pytest.raises(ZoodipError, match="the schedule reaches zero SNR"):
            generate(model, "a dog", steps=3, sampler="ddim")

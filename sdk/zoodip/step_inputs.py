"""The random inputs of one training step, drawn in one place for every trainer, baseline and benchmark.

A step of textual inversion scores the embedding on one sample: a photo (and, with flips, one of its
views), a noise, a timestep t and a prompt, from which x_t = add_noise(x0, noise, t) and the
prediction target follow. Every method that is compared with the SDK's loop (the ES baseline, the
backprop baseline, the torch contenders) draws them with :func:`draw_step_inputs`, so the same seed and
step give the same sample everywhere; what a method draws afterwards (ZO directions, ES perturbations)
comes from the same generator, after these.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

import numpy as np

EVAL_STREAM = 0x5EED_E7A1  # separates the fixed evaluation noises (and the photos' encoding) from the training stream


class TimestepSampler(Protocol):
    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray: ...


class NoisingSchedule(Protocol):
    def add_noise(self, x0: np.ndarray, noise: np.ndarray, t: np.ndarray) -> np.ndarray: ...

    def target(self, x0: np.ndarray, noise: np.ndarray, t: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class StepInputs:
    """One step's sample: which photo and view, its noise and timestep, the prompt, and the loss's inputs."""

    photo: int  # index into the cached latents
    view: int  # 0: the photo, 1: its mirror image (only with flips)
    noise: np.ndarray  # [C, h, w] float32
    t: int
    prompt: str
    x_t: np.ndarray  # [C, h, w] float32: the photo's latent noised to t
    target: np.ndarray  # [C, h, w] float32: what the UNet should predict (noise, or v for v-prediction)


def step_rng(seed: int, step: int) -> np.random.Generator:
    """The generator of step ``step``: a pure function of (seed, step), so a resumed run redraws the same."""
    return np.random.default_rng([seed, step])


def draw_step_inputs(rng: np.random.Generator, latents: np.ndarray, timesteps: TimestepSampler,
                     schedule: NoisingSchedule, prompt_for: Callable[[int, np.random.Generator], str],
                     posterior_std: np.ndarray | None = None) -> StepInputs:
    """Draw photo, view, noise, t and prompt from ``rng``, in this order, and noise the photo's latent.

    ``latents`` is [photos, views, C, h, w]; with one view the view draw takes nothing from ``rng``
    (NumPy's ``integers(1)`` consumes no state), so runs with and without flips agree on the rest of the
    order. ``prompt_for(photo, rng)`` returns the step's prompt and may draw from ``rng``. With
    ``posterior_std`` (shaped as ``latents``, which then hold the VAE posterior's means) the photo's latent
    is a fresh posterior sample, drawn last so that the draws before it keep their order.
    """
    photo = int(rng.integers(len(latents)))
    view = int(rng.integers(latents.shape[1]))
    x0 = np.asarray(latents[photo, view])
    noise = rng.standard_normal(x0.shape).astype(np.float32)
    t = int(timesteps.sample(rng, 1)[0])
    prompt = prompt_for(photo, rng)
    if posterior_std is not None:
        x0 = x0 + posterior_std[photo, view] * rng.standard_normal(x0.shape).astype(np.float32)
    when = np.array([t])
    x_t = schedule.add_noise(x0[None], noise[None], when)[0].astype(np.float32)
    target = schedule.target(x0[None], noise[None], when)[0].astype(np.float32)
    return StepInputs(photo, view, noise, t, prompt, x_t, target)


def evaluation_items(latents: np.ndarray, prompts: list[str], tokenizer: Callable[[str], np.ndarray],
                     schedule: NoisingSchedule, t_range: tuple[int, int], eval_timesteps: int,
                     seed: int) -> list[tuple[np.ndarray, int, np.ndarray, np.ndarray]]:
    """A run's evaluation set: fixed (prompt ids, t, x_t, target) items, the same at every evaluation, so that its
    values are comparable (built once: only the embedding changes between evaluations).

    ``latents``: [photos, views, C, h, w], the first view of each photo evaluated at ``eval_timesteps`` timesteps
    spread evenly inside ``t_range``, with noises drawn from ``seed`` apart from the training stream; ``prompts``:
    each photo's evaluation prompt.
    """
    t_min, t_max = t_range
    k = eval_timesteps
    steps = np.linspace(t_min, t_max - 1, k + 2)[1:-1] if k > 1 else np.array([(t_min + t_max - 1) / 2])
    items = []
    for i in range(len(latents)):
        x0 = latents[i, 0]
        ids = tokenizer(prompts[i])[0]
        for j, t in enumerate(np.round(steps).astype(int)):
            rng = np.random.default_rng([seed, EVAL_STREAM, 2, i, j])
            noise = rng.standard_normal(latents.shape[2:]).astype(np.float32)
            x_t = schedule.add_noise(x0[None], noise[None], np.array([t]))[0].astype(np.float32)
            target = schedule.target(x0[None], noise[None], np.array([t]))[0].astype(np.float32)
            items.append((ids, int(t), x_t, target))
    return items


def encode_photo_views(model: Any, views: list[np.ndarray], vae_sampling: str,
                       rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
    """The photos' latents ``x0``, ``[N, views, C, h, w]``, encoded one image at a time, view by view.

    ``views``: the photos ``[N, H, W, 3]`` (and their mirror images with flips). With ``vae_sampling`` "once"
    each gets one posterior sample, drawn from ``rng`` in that order, and the std is None; with "per-step"
    the posterior means and stds, from which each step draws its own sample.
    """
    def stacked(per_view: list[list[np.ndarray]]) -> np.ndarray:
        return np.stack([np.concatenate(images) for images in per_view], axis=1)

    if vae_sampling == "per-step":
        moments = [[model.vae_posterior(view[i : i + 1]) for i in range(len(view))] for view in views]
        return (stacked([[mean for mean, _ in per_view] for per_view in moments]),
                stacked([[std for _, std in per_view] for per_view in moments]))
    return stacked([[model.vae_encode(view[i : i + 1], rng) for i in range(len(view))] for view in views]), None

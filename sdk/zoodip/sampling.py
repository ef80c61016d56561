"""How a model samples: the sampler's timesteps for the model's scheduler config, the start latents (unit noise,
or an image's latents noised to the first step for image-to-image), and the run.

Image-to-image follows diffusers' img2img pipelines: of the ``steps`` timesteps the sampler would take from
noise, it keeps the last ``int(steps * strength)`` (at least one), and starts from the image's latents ``x0``
noised to the first kept step's noise level ``sigma``: ``x0 + sigma * noise`` in k-diffusion's parameterization
(the Euler samplers), ``(x0 + sigma * noise) / sqrt(sigma^2 + 1)`` as the variance-preserving latent (DDIM,
DPM++), which is each diffusers scheduler's ``add_noise``.

Inpainting follows diffusers' inpainting pipeline on a model whose UNet reads 4 latent channels (any SD model; A1111's
inpainting with "original" content does the same): image-to-image, and after each step the part the mask keeps is
put back as ``x0`` noised to the level that step reached (``KeptRegion``). At strength 1 it starts from noise alone.
"""
from __future__ import annotations

import math
import numbers
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from .errors import ZoodipError
from .samplers import (
    ddim_timesteps,
    dpm_timesteps,
    euler_init_noise_sigma,
    euler_timesteps,
    karras_schedule,
    lcm_timesteps,
    sample_ddim,
    sample_dpmpp_2m,
    sample_euler,
    sample_euler_ancestral,
    sample_lcm,
    sigmas_at,
)
from .json_text import parse_json


@dataclass(frozen=True)
class _SamplerKind:
    # The diffusers spacing of its timesteps (None: Karras sigmas; lcm_timesteps: the distillation schedule's).
    timesteps: Callable[..., np.ndarray] | None
    # Its diffusers scheduler's own default spacing: what a pipeline uses when the scheduler config does not name
    # one (diffusers' from_config does not carry defaults across scheduler classes).
    default_spacing: str
    sigma_space: bool  # steps on k-diffusion's x0 + sigma * eps (the Euler samplers), not on VP latents
    a1111_name: str  # what A1111 calls it (its generation parameters' "Sampler")
    fresh_noise: bool = False  # draws noise every step (from the seed's generator, after the start noise)
    # Steps between noise levels sigma, so a zero-SNR schedule's infinite top sigma is made finite (diffusers' Euler and
    # DPM-Solver schedulers; DDIM and LCM step on alpha_bar itself, where 0 is a value like any other).
    finite_top: bool = True
    # Its diffusers scheduler takes use_karras_sigmas / use_exponential_sigmas / use_beta_sigmas, which it does not
    # apply (its Karras twin, where there is one, applies Karras's): a config asking for them is said (sampler_notes).
    sigma_options: bool = False


# The samplers by name, with what the plan needs of each and A1111's name for it.
_KINDS = {
    "dpmpp_2m": _SamplerKind(dpm_timesteps, "linspace", False, "DPM++ 2M", sigma_options=True),
    "ddim": _SamplerKind(ddim_timesteps, "leading", False, "DDIM", finite_top=False),
    "euler": _SamplerKind(euler_timesteps, "linspace", True, "Euler", sigma_options=True),
    "dpmpp_2m_karras": _SamplerKind(None, "linspace", False, "DPM++ 2M Karras"),
    "dpmpp_2m_sde": _SamplerKind(dpm_timesteps, "linspace", False, "DPM++ 2M SDE", fresh_noise=True,
                                 sigma_options=True),
    "dpmpp_2m_sde_karras": _SamplerKind(None, "linspace", False, "DPM++ 2M SDE Karras", fresh_noise=True),
    "euler_a": _SamplerKind(euler_timesteps, "linspace", True, "Euler a", fresh_noise=True),
    "lcm": _SamplerKind(lcm_timesteps, "leading", False, "LCM", fresh_noise=True, finite_top=False),
}
SAMPLERS = tuple(_KINDS)  # the CLI's --sampler choices
DEFAULT_SAMPLER = "dpmpp_2m"  # DPM-Solver++ 2M, diffusers' SD pipelines' scheduler
DEFAULT_GUIDANCE_SCALE = 7.5  # diffusers' pipelines' default
A1111_SAMPLER_NAMES = {name: kind.a1111_name for name, kind in _KINDS.items()}
NOISY_SAMPLERS = tuple(name for name, kind in _KINDS.items() if kind.fresh_noise)
DEFAULT_STEPS = 25  # sampling steps, as diffusers' pipelines
DEFAULT_STRENGTH = 0.8  # image-to-image's default strength, diffusers' img2img pipelines'
INPAINT_STRENGTH = 1.0  # inpainting's default strength, diffusers' inpainting pipelines'
HIRES_STRENGTH = 0.7  # A1111's hires fix: its second pass's denoising strength (zoodip.hires)


def sampler_named(name: str) -> str:
    """``name`` as one of ``SAMPLERS`` where it is A1111's name of one, in any case ("Euler a", "DPM++ 2M Karras"),
    else as given (one of them, or what the caller refuses)."""
    by_a1111 = {a1111.lower(): ours for ours, a1111 in A1111_SAMPLER_NAMES.items()}
    return name if name in SAMPLERS else name.lower() if name.lower() in SAMPLERS else by_a1111.get(name.lower(), name)


def image_strength(strength: float | None, masked: bool) -> float:
    """An image-to-image call's strength: the one given, else diffusers' default (inpainting's where ``masked``)."""
    return (INPAINT_STRENGTH if masked else DEFAULT_STRENGTH) if strength is None else strength

ProgressCallback = Callable[[int, int, np.ndarray], None]
"""``callback(step, total, latents)``: after each denoising step (``step`` counts from 1); ``latents``
is the sampler's current state [num_images, C, h, w], not yet decoded: its live array (as diffusers' callbacks get
it), to be copied to be kept; a change in place changes the run."""


@dataclass(frozen=True)
class SamplingPlan:
    """One call's steps: the timesteps the model is called at and each step's noise level (k-diffusion's sigma)."""

    sampler: str
    timesteps: np.ndarray
    sigmas: np.ndarray
    init_noise_sigma: float  # how the Euler samplers scale unit noise (1 when they start from an image)
    final_alpha_cumprod: float  # where DDIM's last step goes
    sigma_space: bool  # its latents are x0 + sigma * eps (the Euler samplers), not variance-preserving ones


def sampling_plan(model: Any, sampler: str, steps: int) -> SamplingPlan:
    """``sampler``'s ``steps`` timesteps from noise with ``model``'s schedule and scheduler config, as diffusers sets them."""
    num_train = int(model.schedule.num_train_timesteps)
    check_sampler(sampler)
    check_steps(model, steps, sampler)
    ac = sampler_alphas_cumprod(model, sampler)
    kind, config = _KINDS[sampler], scheduler_config(model)
    spacing = str(config.get("timestep_spacing") or kind.default_spacing)
    offset = int(config.get("steps_offset", 0) or 0)
    final = 1.0 if config.get("set_alpha_to_one", True) else float(ac[0])
    if kind.timesteps is None:  # the Karras sigmas span the whole schedule: no spacing applies
        sigmas, timesteps = karras_schedule(ac, steps)
    elif kind.timesteps is lcm_timesteps:  # the distillation schedule's timesteps (LCMScheduler's config)
        timesteps = lcm_timesteps(num_train, steps, lcm_settings(model)[0])
        sigmas = sigmas_at(ac, timesteps)
    else:
        timesteps = kind.timesteps(num_train, steps, spacing=spacing, offset=offset)
        sigmas = sigmas_at(ac, timesteps)
    init = euler_init_noise_sigma(float(sigmas[0]), spacing) if kind.sigma_space else 1.0
    return SamplingPlan(sampler, timesteps, sigmas, init, final, kind.sigma_space)


def sampler_alphas_cumprod(model: Any, sampler: str) -> np.ndarray:
    """The schedule's ``alpha_bar`` as ``sampler`` reads it: a zero-terminal-SNR schedule's last one (0: an infinite
    sigma) is 2^-24 for the samplers that step between sigmas, as diffusers' Euler and DPM-Solver schedulers set it."""
    ac = np.array(model.schedule.alphas_cumprod, dtype=np.float64)
    if _KINDS[sampler].finite_top and ac[-1] == 0.0:
        ac[-1] = 2.0**-24
    return ac


def check_steps(model: Any, steps: object, sampler: str | None = None, name: str = "steps") -> None:
    """Sampling steps (``name``: the argument that gave them): an integer from 1 to the model's training timesteps
    (for ``sampler`` "lcm", to its distillation schedule's length)."""
    num_train = int(model.schedule.num_train_timesteps)
    if sampler == "lcm":
        original = lcm_settings(model)[0]
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or not 1 <= steps <= original:
            raise ZoodipError(f"{name} must be an integer from 1 to {original} for the lcm sampler (the schedule its "
                              f"model was distilled on; 4-8 is typical), got {steps!r}")
    elif isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or not 1 <= steps <= num_train:
        raise ZoodipError(f"{name} must be an integer from 1 to {num_train}, got {steps!r} (20-30 is typical)")


def most_steps(model: Any, sampler: str | None = None) -> int:
    """The most sampling steps ``model`` takes with ``sampler``: its training timesteps (lcm: its distillation
    schedule's length)."""
    return lcm_settings(model)[0] if sampler == "lcm" else int(model.schedule.num_train_timesteps)


# The lcm sampler's settings in a scheduler config: LCMScheduler's keys, its defaults, and what each may hold.
_LCM_KEYS = {"original_inference_steps": (50, "an integer from 1 to the training timesteps (LCM's: 50)"),
             "timestep_scaling": (10.0, "a number from 1e-3 to 1e3 (LCM's: 10)")}


def lcm_settings(model: Any) -> tuple[int, float]:
    """The lcm sampler's ``(original_inference_steps, timestep_scaling)`` from the model's scheduler config
    (``LCMScheduler``'s keys; its defaults 50 and 10 where the config is another scheduler's)."""
    config, num_train = scheduler_config(model), int(model.schedule.num_train_timesteps)
    original, scaling = (config.get(key, default) for key, (default, _) in _LCM_KEYS.items())
    bad = [key for key, value, fits in (
        ("original_inference_steps", original, lambda v: isinstance(v, int) and 1 <= v <= num_train),
        ("timestep_scaling", scaling, lambda v: isinstance(v, numbers.Real) and 1e-3 <= v <= 1e3))
        if isinstance(value, bool) or not fits(value)]
    if bad:
        key = bad[0]
        given = f"{config[key]!r}" if key in config else f"its default {_LCM_KEYS[key][0]!r}, past {num_train} steps"
        raise ZoodipError(f"the lcm sampler reads the scheduler config's {key}, which must be {_LCM_KEYS[key][1]}: "
                          f"got {given}; mend the export's scheduler_config.json or re-export the model")
    return int(original), float(scaling)


def steps_run(steps: int, strength: float | None = None, most: int | None = None) -> int:
    """How many of ``steps`` a call runs: all of them from noise, the last ``int(steps * strength)`` from an image.
    ``most``: the steps the model and sampler allow (``most_steps``), past which more steps are not suggested."""
    if strength is None:
        return int(steps)
    check_strength(strength)
    keep = min(int(steps * strength), steps)
    if keep < 1:
        enough = math.ceil(1 / strength)
        while int(enough * strength) < 1:  # (1 / strength rounded down in floats)
            enough += 1
        then = (f"raise it, or give steps={enough}" + (" or more" if most is None or enough < most else "")
                if most is None or enough <= most else
                f"raise it: at this strength it needs {enough} steps, and the model and sampler take at most {most}")
        raise ZoodipError(f"strength {strength} of {steps} steps leaves no step to run (diffusers runs "
                          f"int(steps * strength)): {then}")
    return int(keep)


def sampler_notes(model: Any, sampler: str, guidance_scale: float | None = None) -> list[str]:
    """What a user should hear about a sampler choice that works but may not be what the model is made for, or
    settings of its scheduler config that no sampler here applies."""
    config, notes = scheduler_config(model), []
    if config.get("_class_name") == "LCMScheduler" and sampler != "lcm":
        notes.append(f"the export's scheduler is LCMScheduler (a latent consistency model, such as SD with the LCM-LoRA "
                     f"fused in), made for sampler='lcm', steps=4, guidance_scale=1; sampler={sampler!r} may give "
                     "blurred images")
    if sampler == "lcm" and guidance_scale is not None and guidance_scale > 2:
        notes.append(f"the lcm sampler is made for a guidance scale of 1 to 2 (1 also halves the work), not "
                     f"{guidance_scale:g}: its images may come out overcooked")
    # Set as diffusers reads them: any true value (1 and "true" too; diffusers' schedulers test `if config.key:`).
    unapplied = [key for key in ("clip_sample", "thresholding") if config.get(key)]
    if _KINDS[sampler].sigma_options:
        karras = f"{sampler}_karras" if f"{sampler}_karras" in _KINDS else None
        unapplied += [f"{key} {config[key]!r:.40}" + (f" (sampler={karras!r} has them)" if key == "use_karras_sigmas"
                                                      and karras else "")
                      for key in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "use_flow_sigmas")
                      if config.get(key)]
    if sampler.startswith("dpmpp"):  # DPM-Solver's own settings in a config saved with DPMSolverMultistepScheduler
        unapplied += [f"{key} {config[key]!r}" for key, ours in (("solver_order", 2), ("final_sigmas_type", "zero"))
                      if config.get(key, ours) != ours]
        ours = "sde-dpmsolver++" if _KINDS[sampler].fresh_noise else "dpmsolver++"
        algorithm = config.get("algorithm_type", ours)
        if algorithm != ours:
            other = ("dpmpp_2m_sde" if algorithm == "sde-dpmsolver++" else "dpmpp_2m") + (
                "_karras" if sampler.endswith("_karras") else "")
            hint = f" (sampler={other!r} is it)" if algorithm in ("dpmsolver++", "sde-dpmsolver++") else ""
            unapplied.append(f"algorithm_type {algorithm!r:.40}{hint}")
    if unapplied:  # SD's configs set both off; diffusers' schedulers would clamp the predicted x0
        asked = " and ".join(unapplied)
        notes.append(f"the scheduler config asks for {asked if len(asked) <= 240 else asked[:237] + '...'}, which "
                     f"zoodip's {sampler} sampler does not apply: the images may differ from diffusers'")
    return notes


def check_sampler(sampler: object) -> None:
    if sampler not in SAMPLERS:
        ours = sampler_named(sampler) if isinstance(sampler, str) else None
        alternative = f" ({ours!r} is its name here)" if ours in SAMPLERS else ""
        raise ZoodipError(f"unknown sampler {sampler!r:.60}: use one of {', '.join(SAMPLERS)}{alternative}")


def check_strength(strength: object, name: str = "strength") -> None:
    if isinstance(strength, bool) or not isinstance(strength, numbers.Real) or not 0.0 < strength <= 1.0:
        raise ZoodipError(f"{name} must be a number in (0, 1], got {strength!r}: how much of the image is redrawn "
                          f"({DEFAULT_STRENGTH}, diffusers' default, keeps its layout; 1.0 keeps almost nothing of it)")


def image_to_image(plan: SamplingPlan, strength: float) -> SamplingPlan:
    """The plan's last ``int(steps * strength)`` steps, started from an image (diffusers' img2img ``strength``)."""
    keep = steps_run(len(plan.timesteps), strength)
    return replace(plan, timesteps=plan.timesteps[-keep:], sigmas=plan.sigmas[-keep:], init_noise_sigma=1.0)


def starts_from_noise(image: bool, masked: bool, strength: float) -> bool:
    """Whether a call's latents start from noise alone: text-to-image, or, as diffusers' inpainting pipelines, an
    inpainting at strength 1 (the masked part without the image's trace)."""
    return not image or (masked and strength == 1.0)


def call_plan(model: Any, sampler: str, steps: int, strength: float = 1.0, from_noise: bool = True) -> SamplingPlan:
    """The plan a call runs: ``steps`` of ``sampler``, or, from an image's latents, their last ``strength``."""
    plan = sampling_plan(model, sampler, steps)
    return plan if from_noise else image_to_image(plan, strength)


def start_latents(plan: SamplingPlan, noise: np.ndarray, image_latents: np.ndarray | None = None) -> np.ndarray:
    """Unit ``noise`` (the samplers scale it), or ``image_latents`` noised to the plan's first step (module doc)."""
    if image_latents is None:
        return noise
    return noised_latents(plan, image_latents, noise, float(plan.sigmas[0]))


def noised_latents(plan: SamplingPlan, x0: np.ndarray, noise: np.ndarray, sigma: float) -> np.ndarray:
    """``x0`` noised to level ``sigma`` in the plan's parameterization (module doc): each scheduler's ``add_noise``."""
    if plan.sigma_space:
        return (x0.astype(np.float64) + sigma * noise).astype(np.float32)
    alpha_bar = 1.0 / (sigma**2 + 1.0)  # (x0 + sigma noise) / sqrt(sigma^2 + 1), also where sigma is infinite
    return (math.sqrt(alpha_bar) * x0.astype(np.float64) + math.sqrt(1.0 - alpha_bar) * noise).astype(np.float32)


def run_sampler(
    model: Any,
    model_fn: Callable[[np.ndarray, float], np.ndarray],
    noise: np.ndarray,
    *,
    sampler: str = DEFAULT_SAMPLER,
    steps: int = DEFAULT_STEPS,
    guidance_scale: float | None = None,
    eta: float = 0.0,
    rng: np.random.Generator | None = None,
    callback: ProgressCallback | None = None,
    image_latents: np.ndarray | None = None,
    strength: float = 1.0,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """Denoise unit ``noise`` into latents with ``model``'s schedule and scheduler settings; with ``image_latents``,
    their noised version over the last ``strength`` of the steps instead (image-to-image); with a latent ``mask``
    too (1: redraw, 0: keep), the kept part put back after every step (``KeptRegion``, inpainting). ``sampler_notes``
    for this call (``guidance_scale``: the call's, for the notes only) are warnings."""
    for note in sampler_notes(model, sampler, guidance_scale):
        warnings.warn(note, stacklevel=2)  # generate()'s line: said once for both passes of the hires fix
    from_noise = starts_from_noise(image_latents is not None, mask is not None, strength)
    plan = call_plan(model, sampler, steps, strength, from_noise)
    x, ts = start_latents(plan, noise, None if from_noise else image_latents), plan.timesteps
    ac = sampler_alphas_cumprod(model, sampler)
    prediction_type = str(model.schedule.prediction_type)
    keep = None if mask is None or image_latents is None else KeptRegion(plan, image_latents, noise, mask)

    def on_step(i: int, t: float, x: np.ndarray) -> None:
        if keep is not None:
            keep.put_back(i, x)  # in place: the sampler goes on from the blended latents, as diffusers' do
        if callback is not None:
            callback(i + 1, len(ts), x)

    _check_run(sampler, ac, ts, prediction_type, rng)
    # An overflow is reported once, as the check below, rather than as NumPy's warnings along the way.
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        if sampler == "ddim":
            x = sample_ddim(model_fn, x, ac, ts, prediction_type, eta=eta, final_alpha_cumprod=plan.final_alpha_cumprod,
                            step_ratio=len(ac) // steps, rng=rng, callback=on_step)
        elif sampler.startswith("dpmpp_2m"):  # the ODE solver, or with fresh noise its SDE (module samplers)
            x = sample_dpmpp_2m(model_fn, x, ac, ts, prediction_type, sigmas=plan.sigmas,
                                noise_rng=rng if _KINDS[sampler].fresh_noise else None, callback=on_step)
        elif sampler == "lcm":
            x = sample_lcm(model_fn, x, ac, ts, prediction_type, rng=rng, timestep_scaling=lcm_settings(model)[1],
                           callback=on_step)
        elif sampler == "euler_a":
            x = sample_euler_ancestral(model_fn, x, ac, ts, prediction_type, rng=rng,
                                       init_noise_sigma=plan.init_noise_sigma, callback=on_step)
        else:
            x = sample_euler(model_fn, x, ac, ts, prediction_type, init_noise_sigma=plan.init_noise_sigma,
                             callback=on_step)
    if not np.all(np.isfinite(x)):
        raise ZoodipError("sampling ended in non-finite latents (the guided prediction left float32's range), so no "
                          "image is made: lower the guidance scale or the prompt's weights, or check the model with "
                          "'zoodip verify'")
    return x


def _check_run(sampler: str, ac: np.ndarray, timesteps: np.ndarray, prediction_type: str,
               rng: np.random.Generator | None) -> None:
    """Refused before the first step: a noisy sampler without its generator, and a noise-predicting model at a zero-SNR
    timestep, where its image is undefined."""
    if sampler in NOISY_SAMPLERS and rng is None:
        raise ZoodipError(f"the {sampler} sampler adds noise every step: pass rng (generate() passes the seed's)")
    if prediction_type == "epsilon" and not _KINDS[sampler].finite_top and ac[np.asarray(timesteps, np.int64)].min() == 0:
        raise ZoodipError(f"the schedule reaches zero SNR (rescale_betas_zero_snr) at the {sampler} sampler's first "
                          "step, where a noise-predicting model's image is undefined: such models predict v "
                          "(prediction_type v_prediction in the scheduler config); or use another sampler")


class KeptRegion:
    """Inpainting's kept part (diffusers' inpainting pipeline on a 4-channel UNet): after step i, where ``mask`` is
    0 the latents become the image's ``x0`` noised with the start's ``noise`` to the level step i reached
    (``sigma_{i+1}``, 0 after the last step, so the kept part ends as the image's latents exactly)."""

    def __init__(self, plan: SamplingPlan, x0: np.ndarray, noise: np.ndarray, mask: np.ndarray) -> None:
        self.plan, self.x0, self.noise = plan, x0, noise
        self.mask = np.asarray(mask, dtype=np.float32)

    def put_back(self, i: int, x: np.ndarray) -> None:
        sigmas = self.plan.sigmas
        sigma = float(sigmas[i + 1]) if i + 1 < len(sigmas) else 0.0
        known = noised_latents(self.plan, self.x0, self.noise, sigma)
        x[...] = self.mask * x + (1.0 - self.mask) * known


def scheduler_config(model: Any) -> dict[str, Any]:
    """The model's diffusers scheduler config (for the inference-only keys: spacing, offset, ...).

    Taken from ``model.scheduler_config`` when the model keeps it, else read from the export
    folder; an unknown model gets Stable Diffusion's settings.
    """
    config = getattr(model, "scheduler_config", None)
    if isinstance(config, Mapping):
        return dict(config)
    folder, manifest = getattr(model, "folder", None), getattr(model, "manifest", None)
    if folder is not None and isinstance(manifest, Mapping) and manifest.get("scheduler"):
        path = Path(folder) / str(manifest["scheduler"])
        try:
            loaded = parse_json(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ZoodipError(f"cannot read {path} ({exc}): re-run 'zoodip export'") from None
        if isinstance(loaded, dict):
            return loaded
    return {"steps_offset": 1, "set_alpha_to_one": False}



"""Text-to-image (image-to-image, inpainting) generation with an exported model, optionally using learned tokens.

    images = generate(model, "a photo of <my-dog> on a beach", added_embeddings={"<my-dog>": vectors})
    images = generate(model, "a painting of <my-dog>", image="dog.jpg", strength=0.6, added_embeddings=...)
    images = generate(model, "a photo of <my-dog> on a sofa", image="sofa.jpg", mask_image="where.png", ...)

The loop is Stable Diffusion's: encode the prompt and the negative prompt, start from seeded
Gaussian latents, denoise with a sampler under classifier-free guidance, decode with the VAE.
With the same seed, sampler, steps and scheduler config, it follows diffusers'
``StableDiffusionPipeline`` step for step (the samplers match diffusers' schedulers); only the
initial noise differs, since it comes from NumPy's generator rather than torch's.

Learned tokens are added to a *copy* of the model's tokenizer, so a call never changes the model
that was passed in, and the same model can be used with and without the embeddings.

A model loaded with ``RuntimeOptions(memory_budget_mb=...)`` generates within that budget: each UNet
pass takes one image and one guidance branch, each graph's session is closed once its phase is over
(text encoder, UNet, VAE decoder; they reopen on next use), and the VAE decodes in overlapping tiles
where the whole image's estimate does not fit (``zoodip.memory_plan``); a size whose UNet (weights and
activations) does not fit is refused before the first step; an image-to-image start image is
encoded whole, and refused if its estimate does not fit. Without tiles the images are
those of the unbudgeted call, up to the floating-point order of batched and single UNet passes.
"""
from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from PIL import Image

from .added_tokens import check_added_ids, tokenizer_with
from .emphasis import chunked_token_ids, emphasis_free_text, emphasize, weighted_token_ids
from .diffusers_names import refuse_arguments
from .errors import ZoodipError
from .extra_networks import tag_problems, take_out_tags
from .generate_settings import check_generate_settings, check_image_only, check_num_images
from .image_side import check_model_side, model_side_multiple
from .images import (NO_DRAFT, image_pixels, init_image_size, latent_mask, mask_problems, open_init_image, open_mask,
                     to_pil)
from .inpainting import InpaintOptions, PasteBack, inpainting_views
from .limits import check_image_size
from .memory_plan import DecodePlan, check_encode, check_photo, check_unet, memory_budget_mb, plan_decode
from .noise import check_seed, check_variation, checked_latents, seed_noise
from .prompt_checks import (LONG_PROMPT_HINT, syntax_problems, token_use_problems, truncation_problems,
                            unloaded_token_problems, unreadable_tokens)
from .prompt_schedule import Phases, check_phase_count, composable_parts, prompt_schedule
from .sampling import (DEFAULT_GUIDANCE_SCALE, DEFAULT_SAMPLER, DEFAULT_STEPS, ProgressCallback, check_strength,
                       image_strength, most_steps, run_sampler, steps_run)
from .vae_tiles import decode_tiled


def generate(
    model: Any,
    prompt: str,
    *,
    negative_prompt: str = "", steps: int = DEFAULT_STEPS, guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
    sampler: str = DEFAULT_SAMPLER, seed: int = 0, height: int | None = None, width: int | None = None, num_images: int = 1,
    added_embeddings: Mapping[str, np.ndarray] | None = None,
    callback: ProgressCallback | None = None, batch_cfg: bool = True, eta: float = 0.0,
    token_groups: Sequence[Sequence[str]] | None = None, latents: np.ndarray | None = None,
    prompt_weighting: str = "none", image: str | Path | Image.Image | None = None, strength: float | None = None,
    mask_image: str | Path | Image.Image | None = None, clip_skip: int = 0, guidance_rescale: float = 0.0,
    mask_blur: float = 0.0, padding_mask_crop: int | None = None, paste_back: bool = False,
    variation_seed: int | None = None, variation_strength: float = 0.0, **unknown: Any,
) -> list[Image.Image]:
    """Generate ``num_images`` images for ``prompt``; returns RGB PIL images of ``width`` x ``height``.

    Args:
        model: an ``ExportedModel`` (or anything with its interface: tokenizer, encode_text, unet, ...).
        guidance_scale: ``uncond + g (cond - uncond)``; 1.0 runs the prompt alone (half the work), 0.0 the negative one.
        guidance_rescale: phi of Lin et al. 2024, eq. 16 (diffusers' ``guidance_rescale``): see ``rescale_guidance``.
        sampler: one of ``sampling.SAMPLERS`` (default ``sampling.DEFAULT_SAMPLER``).
        seed: the initial latents are ``np.random.default_rng(seed).standard_normal`` (float32): the same on any machine.
        height, width: image size in pixels, multiples of 8 (default: the model's native size).
        added_embeddings: learned tokens, ``{token: vectors [n, hidden] or [hidden]}``, for both prompts.
        callback: ``callback(step, total, latents)`` (raise to stop), the sampler's live latents (as diffusers'; copy
            them to keep them); eta: DDIM's noise (0: deterministic).
        batch_cfg: both guidance passes as one batch (False: one by one, less memory; a memory budget runs each alone).
        token_groups: each embedding's names (``embeddings.load_embeddings``' groups; default: each token alone).
        latents: initial latents ``[num_images, channels, height/8, width/8]`` (unit variance) instead of the seed's;
            the seed still drives DDIM's ``eta`` and the per-step noise of euler_a, lcm and the SDE samplers.
            diffusers' ``latents=`` takes the same array.
        prompt_weighting: "none" (as diffusers: brackets are text, 77 tokens) or "a1111" (A1111's: ``zoodip.emphasis``,
            long prompts, and prompt editing and alternation, ``zoodip.prompt_schedule``).
        image, strength: img2img, as diffusers': ``image`` (path or PIL) noised over the last ``strength`` of the steps
            (default 0.8, with a mask 1.0, diffusers' defaults); mask_image: inpainting, white redrawn, black kept;
            mask_blur (px), padding_mask_crop (diffusers': redraw only around the mask) and paste_back: ``inpainting``.
        clip_skip: the text encoder's k-th layer from the end, through its final norm (as diffusers; A1111's k + 1).
        variation_seed, variation_strength: A1111's variation: that seed's noise mixed in (``zoodip.noise.slerp``; 0:
            the seed's image, 1: the variation seed's); the rest of the run's randomness stays the seed's.
    """
    refuse_arguments(unknown, "generate()", GENERATE_OPTIONS)  # (diffusers' names: said, not Python's bare TypeError)
    check_generate_settings(model, prompt, negative_prompt, sampler, steps, num_images, guidance_scale, eta, seed,
                    prompt_weighting, clip_skip, guidance_rescale, callback=callback, batch_cfg=batch_cfg, groups=token_groups)
    check_variation(variation_seed, variation_strength, latents, seed)
    start, h, w = _image_start(model, image, mask_image, strength, height, width,  # a size that cannot fit: refused
                               InpaintOptions(mask_blur, padding_mask_crop, paste_back), num_images)
    plan = plan_decode(model, h, w, budget := memory_budget_mb(model))
    run = steps_run(steps, None if start is None else start.strength, most_steps(model, sampler))  # (prompt editing: over these)
    phases = _prompt_phases(prompt, negative_prompt, prompt_weighting, run)
    encode = _prompt_encoder(model, added_embeddings, token_groups, phases, prompt_weighting, clip_skip, prompt)
    parts, uncond = _conditioning(model, encode, phases, float(guidance_scale), budget)
    model_fn = _guided(model, parts, uncond, batch_cfg and budget is None, one_image_at_a_time=budget is not None,
                       rescale=float(guidance_rescale), step=(done := _StepCount(callback, _last_step(model, run, budget))))
    noise, rng = seed_noise(seed, (num_images, int(model.latent_channels), h, w), variation_seed, variation_strength)
    noise = checked_latents(latents, noise)
    x0 = None if start is None else _image_latents(model, start.pixels, num_images, rng, budget)
    latents = run_sampler(model, model_fn, noise, sampler=sampler, steps=steps, guidance_scale=guidance_scale, eta=eta,
                          rng=rng, callback=done, image_latents=x0, strength=start.strength if start else 1.0,
                          mask=start.mask if start else None)
    return _images(model, latents, plan, budget, start.paste if start else None)


# generate()'s settings by name (its signature is the one list).
GENERATE_OPTIONS = [name for name, parameter in inspect.signature(generate).parameters.items()
                    if parameter.kind is parameter.KEYWORD_ONLY]


def _images(model: Any, latents: np.ndarray, plan: DecodePlan | None, budget: int | None,
            paste: PasteBack | None) -> list[Image.Image]:
    """The final latents decoded one image at a time (the VAE decoder's activations dominate), pasted back into the
    inpainted original where asked."""
    _release_under_budget(model, budget, "unet")
    images = [picture for i in range(len(latents)) for picture in to_pil(decode_latents(model, latents[i : i + 1], plan))]
    _release_under_budget(model, budget, "vae_decoder")
    return paste(images) if paste else images


def check_prompt(model: Any, prompt: str, *, negative_prompt: str = "", steps: int = DEFAULT_STEPS,
                 prompt_weighting: str = "none", added_embeddings: Mapping[str, np.ndarray] | None = None,
                 clip_skip: int = 0) -> None:
    """What ``generate`` would refuse (or warn about) in these prompts, found without sampling: their texts are read
    and encoded (text encoder only). A job that generates late (training previews) checks its prompt before it starts."""
    check_generate_settings(model, prompt, negative_prompt, DEFAULT_SAMPLER, steps, 1, 1.0, 0.0, 0, prompt_weighting,
                            clip_skip)
    phases = _prompt_phases(prompt, negative_prompt, prompt_weighting, steps)
    encode = _prompt_encoder(model, added_embeddings, None, phases, prompt_weighting, clip_skip, prompt)
    for schedule in [part for _, part in phases[0]] + [phases[1]]:
        schedule.map(encode)
    _release_under_budget(model, memory_budget_mb(model), "text_encoder")  # as generate: not held past its phase


PromptPhases = tuple[list[tuple[float, Phases[str]]], Phases[str]]
"""The prompt's parts (weight, texts over the steps) and the negative prompt's texts over the steps."""


def _prompt_phases(prompt: str, negative_prompt: str, weighting: str, steps: int) -> PromptPhases:
    """Each prompt's texts over the ``steps`` that run: under "a1111", A1111's AND parts of the prompt (its
    extra-network tags taken out, ``zoodip.extra_networks``) and the prompt editing and alternation of both
    (``zoodip.prompt_schedule``); else each prompt whole, all through."""
    if weighting != "a1111":
        return [(1.0, Phases((steps,), (prompt,)))], Phases((steps,), (negative_prompt,))
    parts = [(weight, prompt_schedule(text, steps)) for text, weight in composable_parts(take_out_tags(prompt)[0])]
    negative = prompt_schedule(negative_prompt, steps)  # as A1111: AND in a negative prompt is a word
    for phases, what in [(phases, "prompt") for _, phases in parts] + [(negative, "negative prompt")]:
        check_phase_count(phases, what)
    return parts, negative


def _conditioning(model: Any, encode: Callable[[str], np.ndarray], phases: PromptPhases, g: float,
                  budget: int | None) -> tuple[list[tuple[float, Phases[np.ndarray]]], Phases[np.ndarray] | None]:
    """The prompt parts' guidance scales (``g`` times their weights) and text states, and the negative prompt's
    text states (``encode`` encodes each text once). Under a budget the text encoder is closed after."""
    parts = [(g * weight, part.map(encode)) for weight, part in phases[0]]
    # A guided output that is one part's own (scale 1) needs no negative-prompt pass.
    alone = len(parts) == 1 and parts[0][0] == 1.0
    uncond = None if alone else phases[1].map(encode)
    _release_under_budget(model, budget, "text_encoder")
    return parts, uncond


class _StepCount:
    """The sampler's progress callback, passed through, keeping the count of finished steps: the step (0-based)
    its next UNet call is for, which picks the phase of an edited prompt; and from step ``release_at`` on (None:
    never), that UNet call returns onnxruntime's arena to the system (``_last_step``)."""

    def __init__(self, callback: ProgressCallback | None, release_at: int | None = None) -> None:
        self.done, self._callback, self._release_at = 0, callback, release_at

    @property
    def releases_arena(self) -> bool:
        return self._release_at is not None and self.done >= self._release_at

    def __call__(self, step: int, total: int, latents: np.ndarray) -> None:
        self.done = step
        if self._callback is not None:
            self._callback(step, total, latents)


def _last_step(model: Any, steps: int, budget: int | None) -> int | None:
    """The step whose UNet run releases onnxruntime's arena: the last one, without a budget. The arena keeps the
    UNet's peak activations after a run, and without a budget the UNet stays open while the image is decoded, so that
    memory would sit beside the decode's (``memory_plan.check_unbudgeted_decode`` counts the UNet's weights only);
    earlier steps keep it, so they do not allocate again. Under a budget the UNet is closed before the decode. None
    too for a model-like object whose ``unet`` takes no ``release_arena``."""
    try:
        takes = "release_arena" in inspect.signature(model.unet).parameters
    except (TypeError, ValueError):  # a callable whose signature Python cannot read
        takes = False
    return steps - 1 if budget is None and takes else None


def _release_under_budget(model: Any, budget: int | None, graph: str) -> None:
    """Under a budget, close ``graph``'s session now that its phase is over (it reopens on next use)."""
    release = getattr(model, "release", None)
    if budget is not None and callable(release):
        release(graph)


def decode_latents(model: Any, latents: np.ndarray, plan: DecodePlan | None = None) -> np.ndarray:
    """Images [n, 3, H, W] in about [-1, 1] from scaled latents: whole, or in the tiles of ``plan``."""
    if plan is None or plan.tile is None:
        return np.asarray(model.vae_decode(latents), dtype=np.float32)
    return decode_tiled(model.vae_decode, latents, plan.tile, plan.overlap, int(model.vae_scale_factor))


def _prompt_encoder(model: Any, added_embeddings: Mapping[str, np.ndarray] | None,
                    token_groups: Sequence[Sequence[str]] | None, phases: PromptPhases,
                    weighting: str = "none", clip_skip: int = 0, prompt: str = ""):
    """Text conditioning: ``encode(text)`` gives the text states ``[1, length, d]``, each text encoded once however
    often it is asked for; one warning per added token group that no phase of the prompts uses within what is read,
    per emphasis it cannot honour and per extra-network tag of ``prompt`` that asks for what the export lacks."""
    prompts, read, chunked = _texts_read(model, phases, weighting)
    tokenizer, extra_rows, known_added = tokenizer_with(model, added_embeddings)
    groups = token_groups if token_groups is not None else [[token] for token in added_embeddings or {}]
    strays = [name for group in groups for name in group if name not in (added_embeddings or {})]
    if strays:  # else said as a token the prompt does not use, or (no embeddings) the name read as words
        raise ZoodipError(f"token_groups names {', '.join(map(repr, strays[:5]))}, which added_embeddings does not "
                          "hold: pass the groups load_embeddings gave with its embeddings")
    weighted = weighting == "a1111"
    problems = ([] if chunked else truncation_problems(tokenizer, read, LONG_PROMPT_HINT if weighted else ""))
    names = [name for names in groups for name in names]
    unreadable = unreadable_tokens(names) if weighted else {}  # said as such, not as missing from the prompt
    problems += (token_use_problems(tokenizer, read, [g for g in groups if not unreadable.keys() & set(g)],
                                    whole=chunked)
                 + unloaded_token_problems(read, names, tokenizer)
                 + syntax_problems(prompts, weighted, chunked, negative=phases[1].values)
                 + (list(unreadable.values()) + tag_problems(prompt, model) if weighted else []))
    for problem in dict.fromkeys(problems):
        warnings.warn(problem, stacklevel=3)

    encoded: dict[str, np.ndarray] = {}

    def encode(text: str) -> np.ndarray:
        if text not in encoded:
            encoded[text] = encode_new(text)
        return encoded[text]

    def encode_new(text: str) -> np.ndarray:
        if chunked:
            ids, weights = chunked_token_ids(tokenizer, text)
        else:
            ids, weights = weighted_token_ids(tokenizer, text) if weighted else (tokenizer([text]), None)
        ids = np.asarray(ids, dtype=np.int64)
        check_added_ids(ids, tokenizer.base_vocab_size, known_added, text)
        return _text_states(model, ids, weights, extra_rows, clip_skip)

    return encode


def _texts_read(model: Any, phases: PromptPhases, weighting: str) -> tuple[list[str], list[str], bool]:
    """The texts of the prompts' phases (each once), the words of each the text encoder gets, and whether they are
    read whole (A1111's long prompts, in chunks) rather than to the 77-token limit."""
    schedules = [schedule for _, schedule in phases[0]] + [phases[1]]
    prompts = list(dict.fromkeys(text for schedule in schedules for text in schedule.values))  # each text once
    weighted = weighting == "a1111"
    chunked = weighted and bool(getattr(model, "text_length_free", False))  # A1111's long prompts: read whole
    return prompts, [emphasis_free_text(text) for text in prompts] if weighted else prompts, chunked


def prompt_texts_read(model: Any, prompt: str, negative_prompt: str = "", prompt_weighting: str = "none",
                      steps: int = DEFAULT_STEPS) -> tuple[list[str], bool]:
    """The words the text encoder gets from the prompts over the ``steps`` that run (prompt editing's phases, AND's
    parts), and whether they are read whole (else to the 77-token limit): what an image's prompts used."""
    _, read, whole = _texts_read(model, _prompt_phases(prompt, negative_prompt, prompt_weighting, steps),
                                 prompt_weighting)
    return read, whole


def initial_latents(model: Any, seed: int, num_images: int = 1, height: int | None = None,
                    width: int | None = None, variation_seed: int | None = None,
                    variation_strength: float = 0.0) -> np.ndarray:
    """The initial latents ``generate`` draws for ``seed`` (``[num_images, channels, height/8, width/8]``), with a
    variation seed's mixed in as it mixes them."""
    check_seed(seed)
    check_num_images(num_images)
    check_variation(variation_seed, variation_strength)
    h, w = _latent_size(model, height, width)
    return seed_noise(seed, (num_images, int(model.latent_channels), h, w), variation_seed, variation_strength)[0]


def _text_states(model: Any, ids: np.ndarray, weights: np.ndarray | None, extra_rows: Any,
                 clip_skip: int = 0) -> np.ndarray:
    """The text encoder's states ``[1, 77 * chunks, d]`` for token ids ``[chunks, 77]`` (with ``weights``,
    A1111's emphasis applied to each chunk), the chunks end to end."""
    if clip_skip:
        states = np.asarray(model.encode_text(ids, extra_rows, clip_skip=clip_skip), dtype=np.float32)
    else:  # a model-like object without clip skip works as before
        states = np.asarray(model.encode_text(ids, extra_rows), dtype=np.float32)
    states = states if weights is None else emphasize(states, weights)
    return states.reshape(1, -1, states.shape[-1])


def _guided(model: Any, parts: list[tuple[float, Phases[np.ndarray]]], uncond: Phases[np.ndarray] | None,
            batch_cfg: bool, one_image_at_a_time: bool = False, rescale: float = 0.0,
            step: _StepCount | None = None) -> Callable[[np.ndarray, float], np.ndarray]:
    """The classifier-free-guided UNet ``uncond + sum_k g_k (cond_k - uncond)``, one term per prompt part (one part:
    ``uncond + g (cond - uncond)``; with ``rescale``, ``rescale_guidance``d); the part's pass alone without uncond.

    ``parts`` hold each part's scale g_k and each phase's text states ``[1, length, d]``, as ``uncond`` does, the
    phase picked by ``step``'s count (one phase: the prompt all through). ``one_image_at_a_time``: the UNet sees one
    image per call (its activations grow with the batch; the sampler's arithmetic is per image anyway).
    """

    built: dict[tuple, tuple[list[np.ndarray], np.ndarray | None]] = {}

    def texts_at(i: int, n: int) -> tuple[list[np.ndarray], np.ndarray | None]:
        """Each pass's text states for ``n`` images at step ``i`` (the negative prompt's first, where it runs), and,
        for one batched pass where their lengths agree, them joined: built when a phase changes, not every call."""
        chosen = ([] if uncond is None else [uncond.at(i)]) + [phases.at(i) for _, phases in parts]
        key = (n, *map(id, chosen))
        if key not in built:
            texts = [np.repeat(states, n, axis=0) for states in chosen]
            joined = np.concatenate(texts) if batch_cfg and len({s.shape[1] for s in texts}) == 1 else None
            built.clear()
            built[key] = (texts, joined)
        return built[key]

    def model_fn(x: np.ndarray, t: float) -> np.ndarray:
        texts, joined = texts_at(0 if step is None else step.done, len(x))
        release = step is not None and step.releases_arena
        if uncond is None:
            return _unet(model, x, t, texts[0], release)
        outs = _unet_passes(model, x, t, texts, joined, release)
        guided = outs[0]
        for (scale, _), out in zip(parts, outs[1:]):
            guided = guided + scale * (out - outs[0])
        return (rescale_guidance(guided, outs[1], rescale) if rescale else guided).astype(np.float32, copy=False)

    if not one_image_at_a_time:
        return model_fn
    return lambda x, t: np.concatenate([model_fn(x[i : i + 1], t) for i in range(len(x))])


def _unet_passes(model: Any, x: np.ndarray, t: float, texts: list[np.ndarray],
                 joined: np.ndarray | None, release: bool = False) -> list[np.ndarray]:
    """The UNet's outputs for ``x`` under each of ``texts``: one batched call on ``joined`` (their concatenation,
    diffusers' order, the unconditional first) where given, else one call each, as A1111 runs prompts of different
    lengths (its chunks), without padding. ``release``: the last call releases the UNet's arena."""
    if joined is not None:
        return np.split(_unet(model, np.concatenate([x] * len(texts)), t, joined, release), len(texts))
    return [_unet(model, x, t, text, release and k == len(texts) - 1) for k, text in enumerate(texts)]


def rescale_guidance(guided: np.ndarray, cond: np.ndarray, phi: float) -> np.ndarray:
    """Lin et al. 2024 ("Common Diffusion Noise Schedules and Sample Steps are Flawed"), eq. 15-16: the guided output
    rescaled to the conditional output's standard deviation (per image), mixed back by ``phi``; strong guidance
    otherwise overexposes the images of v-prediction models with a zero-SNR schedule (diffusers' ``rescale_noise_cfg``)."""
    axes = tuple(range(1, guided.ndim))
    rescaled = guided * (cond.std(axis=axes, keepdims=True) / guided.std(axis=axes, keepdims=True))  # eq. 15
    return phi * rescaled + (1.0 - phi) * guided  # eq. 16


def _unet(model: Any, x: np.ndarray, t: float, states: np.ndarray, release: bool = False) -> np.ndarray:
    timestep = np.full((len(x),), t, dtype=np.float32)
    if release:  # (only asked of a model whose unet takes it: _last_step)
        return np.asarray(model.unet(x, timestep, states, release_arena=True), dtype=np.float32)
    return np.asarray(model.unet(x, timestep, states), dtype=np.float32)


@dataclass(frozen=True)
class _ImageStart:
    """Image-to-image's start image [1, 3, H, W], its strength, and for inpainting the latent mask (1: redraw)."""

    pixels: np.ndarray
    strength: float
    mask: np.ndarray | None
    paste: PasteBack | None = None  # the generated images into the whole original (``inpainting``)


def _image_start(model: Any, image: Any, mask_image: Any, strength: object, height: int | None,
                 width: int | None, inpaint: InpaintOptions, num_images: int = 1) -> tuple[_ImageStart | None, int, int]:
    """The start image (None without one) and the latent size of the images, checked (``_latent_size``; with a
    start image, before it is resized)."""
    inpaint.check(with_mask=mask_image is not None)
    check_image_only(image, strength, mask_image)
    if image is None:
        return None, *_latent_size(model, height, width)
    strength = image_strength(strength, mask_image is not None)
    check_strength(strength)
    native = int(model.sample_size) * int(model.vae_scale_factor)
    crop = mask_image is not None and inpaint.padding_mask_crop is not None  # then generated at the size asked
    budget = memory_budget_mb(model)
    fits = None if budget is None else (lambda size: check_photo(size, num_images, crop, budget))
    picture = open_init_image(image, NO_DRAFT if crop else max(native, height or 0, width or 0) * 2, fits)
    width, height = ((width or native, height or native) if crop else
                     init_image_size(picture.size, height, width, native, model_side_multiple(model, derived=True)))
    h, w = _latent_size(model, height, width)
    check_encode(model, h, w, budget)
    mask, paste = None, None
    if mask_image is not None:
        drawn = open_mask(mask_image, max(picture.size) if inpaint.changes_pixels else max(width, height))
        reopen = (lambda: open_init_image(image, NO_DRAFT)) if isinstance(image, (str, Path)) else None
        view, seen, paste = (inpainting_views(picture, drawn, inpaint, (width, height), reopen)
                             if inpaint.changes_pixels else (picture, drawn, None))
        mask = latent_mask(seen, (width, height), int(model.vae_scale_factor))
        for problem in mask_problems(drawn.size, picture.size, mask):
            warnings.warn(problem, stacklevel=3)
        picture = view
    return _ImageStart(image_pixels(picture, (width, height)), float(strength), mask, paste), h, w


def _image_latents(model: Any, pixels: np.ndarray, num_images: int, rng: np.random.Generator,
                   budget: int | None) -> np.ndarray:
    """The image-to-image start's latents (a sample of the VAE posterior, as diffusers takes), one per image."""
    encoded = model.vae_encode(pixels, rng)
    _release_under_budget(model, budget, "vae_encoder")
    return np.repeat(encoded, num_images, axis=0)


def _latent_size(model: Any, height: int | None, width: int | None) -> tuple[int, int]:
    """The latent size of a ``height`` x ``width`` image, after the checks of its pixels and of its memory floor.

    The floor is checked against the model's memory budget if it has one, else the machine's memory;
    images are decoded one at a time, so it is one image's. Under a budget the UNet's weights and activations at
    that size are checked too (``memory_plan.check_unet``: each pass is one image's), before the first step.
    """
    h, w = _latent_shape(model, height, width)
    factor = int(model.vae_scale_factor)
    check_image_size(h * factor, w * factor, factor, f"a {w * factor}x{h * factor} image (width={w * factor}, "
                     f"height={h * factor})", memory_budget_mb=memory_budget_mb(model),
                     multiple=model_side_multiple(model))
    check_unet(model, h, w, memory_budget_mb(model))
    return h, w


def _latent_shape(model: Any, height: int | None, width: int | None) -> tuple[int, int]:
    factor = int(model.vae_scale_factor)
    default = int(model.sample_size) * factor
    sizes = []
    for name, value in (("height", height), ("width", width)):
        sizes.append(check_model_side(model, name, default if value is None else value, default) // factor)
    return sizes[0], sizes[1]

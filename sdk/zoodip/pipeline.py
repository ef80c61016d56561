"""diffusers' calling habits over an export: ``from_pretrained``, ``load_textual_inversion``, ``pipe(prompt,
num_inference_steps=...).images``, so that code written for ``StableDiffusionPipeline`` moves with few changes.

A thin shell: every call is ``zoodip.generate.generate`` (or ``zoodip.hires.generate_hires``) under diffusers'
argument names; the rules, defaults and errors are theirs. What differs from diffusers, by design:

- the noise comes from ``seed`` (NumPy's, the same on every machine), not from a ``torch.Generator``; without one a
  call draws a seed, as diffusers draws noise without a generator, and ``.seed`` of its output says which;
- the sampler is a name (``sampler="euler"``, ``zoodip.sampling.SAMPLERS``), not a scheduler object;
- one prompt per call (diffusers' list of prompts: call once per prompt).
"""
from __future__ import annotations

import numbers
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .embeddings import load_embeddings
from .diffusers_names import NOT_TAKEN, RENAMED, refuse_arguments
from .errors import ZoodipError
from .generate import generate
from .hires import HIRES_OPTIONS, generate_hires
from .model import ExportedModel
from .runtime_options import RuntimeOptions
from .sampling import (DEFAULT_GUIDANCE_SCALE, DEFAULT_SAMPLER, DEFAULT_STEPS, HIRES_STRENGTH, SAMPLERS, call_plan,
                       image_strength, starts_from_noise)

OUTPUT_TYPES = ("pil", "np")

_MEMORY = ("memory is bounded here by from_pretrained(EXPORT, memory_budget_mb=MB): one UNet pass and one graph in "
           "memory at a time, the VAE decoded in tiles where the whole image would not fit")
# diffusers' pipeline methods and attributes that have no place here -> what to do instead (AttributeError before).
_NOT_HELD = {
    "enable_attention_slicing": _MEMORY, "enable_vae_slicing": _MEMORY, "enable_vae_tiling": _MEMORY,
    "enable_model_cpu_offload": _MEMORY, "enable_sequential_cpu_offload": _MEMORY,
    "enable_xformers_memory_efficient_attention": "onnxruntime's attention runs here; drop the call",
    "scheduler": "the sampler is chosen by name: pipe.sampler = 'dpmpp_2m_karras', or sampler= in the call "
                 "(zoodip.sampling.SAMPLERS)",
    "unet": "the UNet is an ONNX graph: pipe.model.unet(sample, timestep, states) runs it",
    "vae": "the VAE is two ONNX graphs: pipe.model.vae_encode(images) and pipe.model.vae_decode(latents)",
    "load_lora_weights": "LoRAs are fused into the weights at export: 'zoodip export SRC OUT --lora FILE:SCALE' "
                         "(export_model(..., loras=['FILE:SCALE'])); 'zoodip info EXPORT' lists an export's",
    "fuse_lora": "LoRAs are fused into the weights at export: 'zoodip export SRC OUT --lora FILE:SCALE'",
    "components": "the export's graphs are pipe.model's (ExportedModel: text encoder, UNet, VAE; 'zoodip info EXPORT' "
                  "lists them)",
    "config": "the export's settings are its manifest: pipe.model.manifest",
    "dtype": "the export's precision was chosen by 'zoodip export --recipe' ('zoodip info EXPORT' says which); "
             "activations are float32",
    "save_pretrained": "the export folder is the saved pipeline: copy it (pipe.model.folder)",
    **{key: advice for key, advice in NOT_TAKEN.items() if key in ("tokenizer", "text_encoder")},
}
# diffusers' switches for a safety checker, which an export never has: read as diffusers reads a pipeline without one.
_NO_SAFETY_CHECKER = {"safety_checker": None, "requires_safety_checker": False}


class NotInThisPipeline(ZoodipError, AttributeError):
    """diffusers' method or attribute that this pipeline has not: a ZoodipError saying what to do, and an
    AttributeError, so that ``hasattr(pipe, "scheduler")`` is False as for any name an object lacks."""


@dataclass
class PipelineOutput:
    """diffusers' ``StableDiffusionPipelineOutput``: ``images`` (PIL images, or float [N, H, W, 3] in [0, 1]) and
    ``nsfw_content_detected`` (None: an export has no safety checker); ``seed``: the call's (drawn where none was
    given), which makes its images again."""

    images: Any
    nsfw_content_detected: None = None
    seed: int = 0


class ZoodipPipeline:
    """An export with diffusers' pipeline calls. ``pipe.model`` is the ``ExportedModel``; ``pipe.sampler`` the
    default sampler of each call (one of ``SAMPLERS``)."""

    def __init__(self, model: ExportedModel) -> None:
        self.model = model
        self.sampler = DEFAULT_SAMPLER
        self._added: dict[str, np.ndarray] = {}

    def __getattr__(self, name: str) -> Any:  # only names the class does not have: diffusers' habits, said in a line
        if name in _NO_SAFETY_CHECKER:
            return _NO_SAFETY_CHECKER[name]
        if name in _NOT_HELD:
            raise NotInThisPipeline(f"this pipeline has no {name}: {_NOT_HELD[name]}")
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _NO_SAFETY_CHECKER:  # "pipe.safety_checker = None" (a diffusers habit) asks for what is already so
            if value is not _NO_SAFETY_CHECKER[name]:
                raise ZoodipError(f"this pipeline has no safety checker to set ({name}={value!r:.40}): an export "
                                  "has none; drop the line")
            return
        if name in _NOT_HELD:  # pipe.scheduler = ... would change nothing: said, not ignored
            raise ZoodipError(f"this pipeline has no {name} to set: {_NOT_HELD[name]}")
        if name == "sampler" and value not in SAMPLERS:  # said here, not at the next call
            raise ZoodipError(f"sampler must be one of {', '.join(SAMPLERS)}, got {value!r}")
        if name == "model" and not isinstance(value, ExportedModel):
            raise ZoodipError(f"model must be an ExportedModel (ZoodipPipeline.from_pretrained(EXPORT) opens one), got "
                              f"{type(value).__name__}")
        object.__setattr__(self, name, value)

    def close(self) -> None:
        """Release the model's onnxruntime sessions now (``ExportedModel.close``); ``with`` closes it at the end."""
        self.model.close()

    def __enter__(self) -> ZoodipPipeline:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def device(self) -> str:
        """diffusers' ``pipe.device``: always the CPU here."""
        return "cpu"

    def set_progress_bar_config(self, **config: Any) -> None:
        """diffusers' call, accepted and without effect: the API draws no progress bar (pass ``callback=`` for one)."""

    @classmethod
    def from_pretrained(cls, export_dir: str | os.PathLike[str], *, threads: int = 0,
                        memory_budget_mb: int | None = None, **unknown: Any) -> ZoodipPipeline:
        """Open a ``zoodip export`` folder (not a diffusers folder: export it first)."""
        refuse_arguments(unknown, "from_pretrained")
        if not isinstance(export_dir, (str, os.PathLike)) or not str(export_dir).strip():
            raise ZoodipError(f"from_pretrained takes the path of a zoodip export folder, got {export_dir!r}")
        folder = Path(export_dir)
        if (folder / "model_index.json").is_file() and not (folder / "manifest.json").is_file():
            raise ZoodipError(f"{folder} is a diffusers folder: export it first with 'zoodip export {folder} OUT_DIR' "
                              "and pass OUT_DIR")
        return cls(ExportedModel.load(folder, RuntimeOptions(threads=threads, memory_budget_mb=memory_budget_mb)))

    def load_textual_inversion(self, pretrained_model_name_or_path: str | os.PathLike[str] | Sequence[Any],
                               token: str | Sequence[str] | None = None, **unknown: Any) -> None:
        """Add embeddings, as diffusers': a file (diffusers' or A1111's .safetensors) or a folder of them, or a list
        of files; ``token`` renames (one per file). A name already loaded is refused."""
        refuse_arguments(unknown, "load_textual_inversion")
        if not isinstance(pretrained_model_name_or_path, (str, os.PathLike, list, tuple)):
            raise ZoodipError("load_textual_inversion takes a file's path (or a folder's, or a list of paths), got "
                              f"{type(pretrained_model_name_or_path).__name__}")
        paths = (list(pretrained_model_name_or_path) if isinstance(pretrained_model_name_or_path, (list, tuple))
                 else [pretrained_model_name_or_path])
        tokens = list(token) if isinstance(token, (list, tuple)) else [token] * len(paths)
        if len(tokens) != len(paths):
            raise ZoodipError(f"load_textual_inversion got {len(paths)} files and {len(tokens)} tokens: give one token "
                              "per file, or none")
        specs = list(zip(paths, tokens))  # (load_embeddings says what is no path)
        m = self.model
        added = load_embeddings(specs, m.tokenizer, m.hidden_size, m.identity)[0]
        for name in added:  # as a name taken twice within one call
            if name in self._added:
                raise ZoodipError(f"an embedding named {name!r} is already loaded (by an earlier load_textual_inversion): "
                                  "rename this one with token=, or call unload_textual_inversion() first")
        self._added = {**self._added, **added}

    def unload_textual_inversion(self, tokens: str | Sequence[str] | None = None, **unknown: Any) -> None:
        """Forget the loaded embeddings named ``tokens`` (an A1111 file's trigger word and ``<stem>`` together), or
        every one (diffusers' call of the same name)."""
        refuse_arguments({key: value for key, value in unknown.items() if value is not None},
                         "unload_textual_inversion")
        if tokens is None:
            self._added = {}
            return
        names = [tokens] if isinstance(tokens, str) else list(tokens) if isinstance(tokens, (list, tuple)) else None
        if names is None or not all(isinstance(name, str) for name in names):
            raise ZoodipError(f"unload_textual_inversion takes a token or a list of tokens, got {tokens!r:.60}")
        unknown_names = [name for name in names if name not in self._added]
        if unknown_names:
            raise ZoodipError(f"no embedding named {unknown_names[0]!r} is loaded (loaded: "
                              f"{', '.join(sorted(self._added)) or 'none'}): name one of them")
        gone = [self._added[name] for name in names]  # an A1111 file's two names hold one array
        self._added = {name: v for name, v in self._added.items() if not any(v is vectors for vectors in gone)}

    def to(self, *devices: object, **options: object) -> ZoodipPipeline:
        """diffusers' ``pipe.to(device)``: the CPU only (onnxruntime's CPU provider), so "cpu" (any case, "cpu:0", a
        torch CPU device) is this pipeline; a dtype is the export's, chosen by ``zoodip export --recipe``."""
        devices += tuple(value for key, value in options.items() if key == "device")
        if any(key != "device" for key in options):
            raise ZoodipError("the export's precision was chosen by 'zoodip export --recipe': drop the dtype from .to()")
        for device in devices:
            if str(device).lower().split(":")[0] != "cpu":
                raise ZoodipError(f"this pipeline runs on the CPU (onnxruntime), not {device!r}: drop .to(...)")
        return self

    def __call__(self, prompt: str | None = None, *positional: Any, negative_prompt: str | None = None,
                 num_inference_steps: int = DEFAULT_STEPS, guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
                 seed: int | None = None, output_type: str = "pil", clip_skip: int | None = None, callback: Any = None, callback_steps: int = 1,
                 **options: Any) -> PipelineOutput:
        """``generate(self.model, prompt, ...)`` under diffusers' names (``num_images_per_prompt``, ``height``,
        ``width``, ``latents``, ``image``, ``strength``, ``mask_image``, ``padding_mask_crop``, ``eta``,
        ``guidance_rescale``; ``hires_scale`` & co. run ``zoodip.hires.generate_hires``). As diffusers': a
        ``guidance_scale`` of at most 1 runs the prompt alone (no negative prompt); ``callback(step, timestep,
        latents)`` after every ``callback_steps``-th step (counted from 0); no ``seed``: one drawn."""
        if isinstance(prompt, (list, tuple)):
            raise ZoodipError("one prompt per call here (diffusers batches a list): call the pipeline once per prompt, "
                              "with num_images_per_prompt for several images of one")
        if positional:  # diffusers' second is height: by position the two would silently differ
            raise ZoodipError("pass the settings after the prompt by name (negative_prompt=, height=, ...)")
        if negative_prompt is not None and not isinstance(negative_prompt, str):
            raise ZoodipError(f"negative_prompt must be one string (one prompt per call), got {negative_prompt!r:.60}")
        if any(key.startswith("hires_") for key in options) and "hires_scale" not in options:
            raise ZoodipError("hires_strength and hires_steps set the hires fix's second pass: add hires_scale=X "
                              "(2: twice the size)")
        if output_type not in OUTPUT_TYPES:
            raise ZoodipError(f"output_type must be one of {', '.join(OUTPUT_TYPES)}, got {output_type!r}")
        refuse_arguments(options, "the pipeline call", allowed=set(RENAMED) | _GENERATE_OPTIONS)
        if prompt is None:  # (diffusers' default: prompt_embeds= in its place, refused above with what to do)
            raise ZoodipError("the pipeline call needs a prompt: pipe('a photo of <token> ...')")
        settings = {RENAMED.get(key, key): value for key, value in options.items()}
        settings.setdefault("sampler", self.sampler)
        run = generate_hires if "hires_scale" in settings else generate
        if callback is not None:
            settings["callback"] = _DiffusersCallback(self.model, callback, callback_steps, num_inference_steps,
                                                      settings, hires=run is generate_hires)
        guidance_scale = _diffusers_guidance(guidance_scale)
        seed = secrets.randbelow(2**32) if seed is None else seed
        # Embeddings stay loaded for many prompts, as diffusers': no groups, so one a prompt leaves out is not warned of.
        images = run(self.model, prompt, negative_prompt=negative_prompt or "", steps=num_inference_steps,
                     guidance_scale=guidance_scale, seed=seed, clip_skip=0 if clip_skip is None else clip_skip,
                     added_embeddings=self._added, token_groups=[], **settings)
        if output_type == "np":
            return PipelineOutput(np.stack([np.asarray(image, np.float32) / 255.0 for image in images]), seed=seed)
        return PipelineOutput(images, seed=seed)


def _diffusers_guidance(scale: Any) -> Any:
    """diffusers' guidance is off at or below 1: the prompt alone, whatever the value (1.0 here); else ``scale`` as
    given (what is no number is refused as generate() refuses it)."""
    is_number = isinstance(scale, numbers.Real) and not isinstance(scale, (bool, np.bool_))
    return 1.0 if is_number and scale <= 1 else scale


class _DiffusersCallback:
    """diffusers' ``callback(step, timestep, latents)`` (the step from 0) every ``every``-th step, as the progress
    callback ``generate()`` calls with ``(step, total, latents)`` (the step from 1)."""

    def __init__(self, model: ExportedModel, callback: Any, every: object, steps: int, settings: dict[str, Any],
                 hires: bool) -> None:
        if not callable(callback):
            raise ZoodipError(f"callback must be callable as callback(step, timestep, latents), got {callback!r:.60}")
        if not isinstance(every, numbers.Integral) or isinstance(every, (bool, np.bool_)) or every < 1:
            raise ZoodipError(f"callback_steps must be a positive integer, got {every!r:.60}")
        self.model, self.callback, self.every, self.steps, self.settings = model, callback, every, steps, settings
        self.hires = hires
        self.passes: tuple[np.ndarray, np.ndarray] | None = None  # the timesteps of the first pass, and of each second

    def __call__(self, step: int, total: int, latents: np.ndarray) -> None:
        if (step - 1) % self.every == 0:
            self.callback(step - 1, self._timestep(step - 1), latents)

    def _timestep(self, index: int) -> float:
        if self.passes is None:  # the call's plans, read once its settings have been checked
            settings, sampler = self.settings, self.settings["sampler"]
            image, masked = settings.get("image") is not None, settings.get("mask_image") is not None
            strength = image_strength(settings.get("strength"), masked) if image else 1.0
            first = call_plan(self.model, sampler, self.steps, strength, starts_from_noise(image, masked, strength))
            second = call_plan(self.model, sampler, settings.get("hires_steps") or self.steps,
                               settings.get("hires_strength", HIRES_STRENGTH), from_noise=False) if self.hires else first
            self.passes = (first.timesteps, second.timesteps)
        first, second = self.passes  # (the hires fix: the first pass, then one second pass an image)
        return first[index] if index < len(first) else second[(index - len(first)) % len(second)]


# generate()'s own settings that a call passes on as they are, and the hires fix's (their signatures are the one list:
# hires.HIRES_OPTIONS), less those the pipeline takes under diffusers' names or sets itself.
_GENERATE_OPTIONS = set(HIRES_OPTIONS) - {"negative_prompt", "steps", "num_images", "guidance_scale", "seed", "clip_skip",
                                          "added_embeddings", "token_groups"}

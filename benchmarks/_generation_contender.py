"""benchmarks/memory.py's generation contender: one image through the SDK's ``generate``, phase by phase.

Run by benchmarks/_contenders.py in its own process (spec kind ``zoodip_generate``). The phases are
the process's: ``imports``, ``load`` (the export folder opened, no session yet), then the three
phases of the call itself, each started by the first call of its graph: ``text`` (the prompts
encoded), ``encode`` (image-to-image only: the start photo through the VAE encoder), ``unet`` (the
denoising loop) and ``decode`` (the VAE, whole or in tiles). Under a budget
``generate`` closes each graph when its phase is over, so that release counts in the phase it ends.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Callable

PROMPT = "a photo of a dog on the beach"
GRAPH_PHASES = {"encode_text": "text", "vae_encode": "encode", "unet": "unet", "vae_decode": "decode"}


class PhaseMarks:
    """Wraps a model's graph methods so that the first call into another graph starts that graph's phase."""

    def __init__(self, model: Any, phases: Any) -> None:
        self.phases = phases
        self.current: str | None = None
        for method, phase in GRAPH_PHASES.items():
            setattr(model, method, self._marked(getattr(model, method), phase))

    def _marked(self, function: Callable, phase: str) -> Callable:
        def call(*args: Any, **kwargs: Any) -> Any:
            if self.current != phase:
                self.finish()
                self.phases.start(phase)
                self.current = phase
            return function(*args, **kwargs)

        return call

    def finish(self) -> None:
        if self.current is not None:
            self.phases.end()
            self.current = None


def prompt_chunks(tokenizer: Any, prompt: str) -> Any:
    from zoodip.emphasis import chunked_token_ids

    return chunked_token_ids(tokenizer, prompt)[0]


def longest_prompt(tokenizer: Any) -> str:
    """PROMPT repeated, comma-separated, as often as A1111's chunks read (``emphasis.MAX_CHUNKS`` of them)."""
    from zoodip.emphasis import MAX_CHUNKS
    from zoodip.errors import ZoodipError

    parts = [PROMPT]
    while True:
        try:
            if len(prompt_chunks(tokenizer, ", ".join(parts + [PROMPT]))) > MAX_CHUNKS:
                break
        except ZoodipError:
            break
        parts.append(PROMPT)
    return ", ".join(parts)


# The composed prompt's second part: edited halfway, weighted (A1111's prompt editing and AND).
EDITED_PART = "[a photo of a dog:a photo of a cat:0.5] :0.8"


def spec_prompt(spec: dict, tokenizer: Any) -> tuple[str, str, str, int]:
    """(prompt, prompt_weighting, negative prompt, UNet passes a step) of a generation spec: ``PROMPT``; with
    ``long_prompt``, the longest A1111 prompt; with ``composed``, that AND ``EDITED_PART`` (three passes a step)."""
    if spec.get("composed"):
        return f"{longest_prompt(tokenizer)} AND {EDITED_PART}", "a1111", "blurry", 3
    if spec.get("long_prompt"):
        return longest_prompt(tokenizer), "a1111", "blurry", 2
    return PROMPT, "none", "", 2


def text_states(tokenizer: Any, prompt: str, weighting: str) -> int:
    """The most text states one UNet pass reads: 77 a chunk of the longest AND part under "a1111"."""
    from zoodip.prompt_schedule import composable_parts, prompt_schedule

    if weighting != "a1111":
        return 77
    texts = [text for part, _ in composable_parts(prompt) for text in prompt_schedule(part, 1).values]
    return max(len(prompt_chunks(tokenizer, text)) for text in texts) * 77


def half_mask(side: int) -> Any:
    """An inpainting mask of ``side`` px: its left half white (redrawn), the right half black (kept)."""
    from PIL import Image

    mask = Image.new("L", (side, side), 0)
    mask.paste(255, (0, 0, side // 2, side))
    return mask


# The only-masked contender's photo: a phone photo's size (24 MP), and the box its mask redraws, about its middle.
LARGE_PHOTO = (6000, 4000)
MASK_BOX = (2600, 1600, 3400, 2400)


def large_photo_and_mask(photo: Path, folder: Path) -> tuple[Path, Any]:
    """``photo`` stretched to ``LARGE_PHOTO`` px and written to ``folder`` (a file: only-masked reads it again at
    paste time), and a mask of that size, white in ``MASK_BOX``."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "large-photo.png"
    with Image.open(photo) as small:
        small.convert("RGB").resize(LARGE_PHOTO, Image.Resampling.BICUBIC).save(path)
    mask = Image.new("L", LARGE_PHOTO, 0)
    mask.paste(255, MASK_BOX)
    return path, mask


def run_generate(spec: dict, phases: Any) -> dict:
    """One ``spec["resolution"]`` px image, ``spec["sampling_steps"]`` DPM-Solver++ steps, guidance 7.5, seed 0,
    on the export, with ``spec["memory_budget_mb"]`` if given (the CLI's ``--memory-budget``); with
    ``spec["strength"]``, image-to-image from the first photo of ``spec["photos"]`` (the last ``strength`` of the steps),
    with ``spec["mask"]`` inpainting its left half; with ``spec["only_masked"]`` (padding px) a 24 MP copy of the photo
    inpainted in a box, only the box redrawn at the resolution (diffusers' ``padding_mask_crop``)."""
    phases.start("imports")
    import numpy as np
    import onnxruntime  # noqa: F401

    from zoodip.generate import generate
    from zoodip.images import list_images
    from zoodip.memory_plan import check_encode, plan_decode
    from zoodip.model import ExportedModel, RuntimeOptions
    phases.end()
    assert "torch" not in sys.modules, "the SDK contender must not import torch"

    phases.start("load")
    budget = spec.get("memory_budget_mb")
    model = ExportedModel.load(Path(spec["export_dir"]), RuntimeOptions(threads=spec.get("threads", 0),
                                                                         memory_budget_mb=budget))
    side = int(spec["resolution"]) // model.vae_scale_factor
    plan = plan_decode(model, side, side, budget)
    strength = spec.get("strength")
    photo = list_images(spec["photos"])[0] if strength is not None else None
    mask = half_mask(int(spec["resolution"])) if spec.get("mask") else None
    only_masked = {} if spec.get("only_masked") is None else {"padding_mask_crop": int(spec["only_masked"])}
    if only_masked:
        photo, mask = large_photo_and_mask(photo, Path(spec["workdir"]))
    phases.end()

    marks = PhaseMarks(model, phases)
    stamps: list[float] = []
    started = time.perf_counter()
    prompt, weighting, negative, passes = spec_prompt(spec, model.tokenizer)
    images = generate(model, prompt, steps=int(spec["sampling_steps"]), height=int(spec["resolution"]),
                      width=int(spec["resolution"]), seed=0, callback=lambda i, n, x: stamps.append(time.perf_counter()),
                      image=photo, mask_image=mask, prompt_weighting=weighting, negative_prompt=negative,
                      **({} if strength is None else {"strength": strength}), **only_masked)
    generate_s = time.perf_counter() - started
    marks.finish()
    step_times = [b - a for a, b in zip([started] + stamps[:-1], stamps)]
    pixels = np.asarray(images[0])
    return {"step_times": step_times, "forwards_per_step": passes, "generate_s": generate_s,
            "decode_s": started + generate_s - stamps[-1] if stamps else None,
            "memory_budget_mb": budget, "decode_tile": plan.tile, "decode_overlap": plan.overlap,
            "decode_estimate_bytes": plan.need_bytes, "image_size": list(pixels.shape), "image_mean": float(pixels.mean()),
            "strength": strength, "mask": mask is not None, "only_masked_padding": only_masked.get("padding_mask_crop"), "text_states": text_states(model.tokenizer, prompt, weighting),
            "encode_estimate_bytes": check_encode(model, side, side, None) if photo else None,
            "weight_file_bytes": {name: model.weights_bytes((name,)) for name in ("text_encoder", "unet", "vae_decoder")}}

"""diffusers' pipeline argument names: the ones ``zoodip.pipeline.ZoodipPipeline`` takes under another name, those
that have no place here, and the one-line refusal of an argument a call does not take (the pipeline's and
``generate()``'s), rather than Python's TypeError, which names no zoodip name."""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from .errors import ZoodipError

# diffusers' names -> generate()'s, where they differ (the pipeline takes diffusers', generate() its own).
RENAMED = {"num_inference_steps": "steps", "num_images_per_prompt": "num_images"}
# What diffusers users pass that has no place here -> what to do instead.
NOT_TAKEN = {
    "generator": "pass seed=INT (the noise is NumPy's, the same on every machine; a torch.Generator's differs)",
    "torch_dtype": "the export's precision was chosen by 'zoodip export --recipe'; drop it",
    "callback_on_step_end": "pass callback= (the pipeline's: diffusers' callback(step, timestep, latents), with "
                            "callback_steps; generate()'s: callback(step, total, latents))",
    "prompt_embeds": "pass the prompt's text (learned tokens through load_textual_inversion)",
    "negative_prompt_embeds": "pass negative_prompt's text",
    "cross_attention_kwargs": "there are no attention processors here, and LoRAs are fused at export ('zoodip export "
                              "--lora FILE:SCALE'): drop it",
    "safety_checker": "the export has no safety checker; drop it",
    "weight_name": "pass the embedding file's own path (or a folder of them)",
    "tokenizer": "the export's tokenizer is used; drop it",
    "text_encoder": "the export's text encoder is used; drop it",
}


class UnknownArgument(ZoodipError, TypeError):
    """An argument a call does not take: a ZoodipError saying what to pass instead, and the TypeError Python raises
    for an unexpected keyword argument."""


def refuse_arguments(options: Mapping[str, Any], where: str, allowed: Iterable[str] = ()) -> None:
    """One line for the first of ``options`` that ``where`` does not take: its own name for a diffusers one it
    names otherwise, what to do for one with no place here, else the names it takes."""
    allowed = set(allowed)
    for key in options:
        if key in allowed:
            continue
        if RENAMED.get(key) in allowed:  # (where its own name is taken)
            raise UnknownArgument(f"{where} takes {RENAMED[key]}=, not diffusers' {key}= (zoodip.pipeline."
                                  "ZoodipPipeline takes diffusers' names)")
        advice = NOT_TAKEN.get(key, f"it takes {', '.join(sorted(allowed))}" if allowed else "drop it")
        raise UnknownArgument(f"{where} does not take {key}=: {advice}")

"""Seeded random Stable Diffusion folders (no downloads): a tiny SD-shaped model and the real SD1.5 architecture.

Both are written in the ordinary diffusers folder layout (``model_index.json`` + one sub-folder per
component + safetensors weights), so the exporter, the tests and the benchmarks go through exactly
the same path as for a downloaded model.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import torch

from zoodip_export.clip_vocab import VOCAB_SIZE, write_clip_tokenizer_files
from zoodip_export.sd15_configs import sd15_configs

# Stable Diffusion's training noise schedule. PNDM is what SD1.5 folders ship; the betas are what matter.
SD_SCHEDULER_CONFIG: dict[str, Any] = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.39.0",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
    "clip_sample": False,
}

# CLIP's special token ids in the real 49408-entry vocabulary.
BOS_TOKEN_ID = 49406
EOS_TOKEN_ID = 49407

# Tiny model sizes. The text width doubles as the UNet's cross-attention width, as in SD.
TINY_TEXT_HIDDEN = 32
TINY_LATENT_SIZE = 16  # latent side; images are 8x larger (128 px)
# A random CLIP draws its token table with std 0.02 (initializer_range). We draw it 5x wider, so
# token content dominates the position embeddings at the encoder input and the prompt visibly
# drives the UNet, as in a trained model. Token norms stay of SD's order, so a finite-difference
# step mu*z with mu=1e-3, z~N(0,I) stays a small relative perturbation, far above float32 rounding.
TINY_TOKEN_EMBEDDING_STD = 0.1


def model_index() -> dict[str, Any]:
    # No safety checker / feature extractor (as in most local SD folders); diffusers then loads it as is.
    return {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": "0.39.0",
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "PNDMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


# Marks a folder as built here (random weights), so an export can say so in its manifest.
SOURCE_MARKER = "zoodip_source.json"


def _write_common_parts(dest: Path, scheduler_config: dict[str, Any], kind: str, seed: int,
                        flavor: str = "sd1") -> None:
    index = model_index()
    index["scheduler"] = ["diffusers", scheduler_config.get("_class_name", "PNDMScheduler")]
    write_json(dest / "model_index.json", index)
    write_json(dest / SOURCE_MARKER, {"kind": kind, "seed": seed, **({"flavor": flavor} if flavor != "sd1" else {})})
    write_json(dest / "scheduler" / "scheduler_config.json", scheduler_config)
    write_clip_tokenizer_files(dest / "tokenizer", **({"pad_token": "!"} if flavor == "sd2" else {}))


# What makes an SD2.x folder different from an SD1.x one, as far as the exporter and the SDK see it:
# v-prediction, DDIM as the shipped scheduler, "!" as the tokenizer's pad token (pad_token_id 1 in the
# text encoder's config), gelu in the text encoder, linear projections and per-block head counts in
# the UNet's transformers.
SD2_SCHEDULER_CONFIG: dict[str, Any] = {
    **SD_SCHEDULER_CONFIG, "_class_name": "DDIMScheduler", "prediction_type": "v_prediction", "clip_sample": False,
}
FLAVORS = ("sd1", "sd2")


def tiny_configs(text_width: int = TINY_TEXT_HIDDEN, flavor: str = "sd1") -> dict[str, dict[str, Any]]:
    """The tiny model's component configs (SD-shaped: 8x VAE, cross-attention UNet, CLIP text encoder).

    ``text_width``: the token-embedding width (SD1.5: 768), for studies where it matters (Subspace
    Gradient assumes a history shorter than the embedding is wide). ``flavor``: ``"sd1"`` or ``"sd2"``
    (SD2.x's differences, see SD2_SCHEDULER_CONFIG).
    """
    if flavor not in FLAVORS:
        raise ValueError(f"flavor must be one of {FLAVORS}, got {flavor!r}")
    text_encoder = {
        "vocab_size": VOCAB_SIZE,
        "hidden_size": text_width,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 77,
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
        "projection_dim": text_width,
        "bos_token_id": BOS_TOKEN_ID,
        "eos_token_id": EOS_TOKEN_ID,
        "pad_token_id": EOS_TOKEN_ID,
    }
    unet = {
        "sample_size": TINY_LATENT_SIZE,
        "in_channels": 4,
        "out_channels": 4,
        "block_out_channels": (32, 64),
        "layers_per_block": 1,
        "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
        "cross_attention_dim": text_width,
        # diffusers' historical naming: for this UNet "attention_head_dim" is the number of heads.
        "attention_head_dim": 4,
        "norm_num_groups": 8,
    }
    vae = {
        "in_channels": 3,
        "out_channels": 3,
        # Four blocks -> three downsamplings -> vae_scale_factor 8, as in SD.
        "block_out_channels": (16, 32, 32, 32),
        "down_block_types": ("DownEncoderBlock2D",) * 4,
        "up_block_types": ("UpDecoderBlock2D",) * 4,
        "layers_per_block": 1,
        "latent_channels": 4,
        "norm_num_groups": 8,
        "sample_size": TINY_LATENT_SIZE * 8,
        "scaling_factor": 0.18215,
    }
    if flavor == "sd2":
        text_encoder.update(hidden_act="gelu", pad_token_id=1)
        unet.update(use_linear_projection=True, attention_head_dim=(2, 4))
    return {"text_encoder": text_encoder, "unet": unet, "vae": vae}


def build_tiny_sd_folder(dest: Path, seed: int = 0, text_width: int = TINY_TEXT_HIDDEN, flavor: str = "sd1") -> Path:
    """Write a small SD-shaped diffusers folder with seeded random weights into ``dest``; returns ``dest``.

    It loads with ``StableDiffusionPipeline.from_pretrained(dest)`` and exports in seconds. ``flavor="sd2"``
    gives an SD2.x-shaped one (see tiny_configs).
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    configs = tiny_configs(text_width, flavor)

    # Each component gets its own seed so changing one architecture does not reshuffle the others.
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(**configs["text_encoder"])).eval()
    generator = torch.Generator().manual_seed(seed + 101)
    with torch.no_grad():
        table = text_encoder.text_model.embeddings.token_embedding.weight
        table.copy_(torch.randn(table.shape, generator=generator) * TINY_TOKEN_EMBEDDING_STD)
    text_encoder.save_pretrained(dest / "text_encoder", safe_serialization=True)

    torch.manual_seed(seed + 1)
    UNet2DConditionModel(**configs["unet"]).save_pretrained(dest / "unet", safe_serialization=True)
    torch.manual_seed(seed + 2)
    AutoencoderKL(**configs["vae"]).save_pretrained(dest / "vae", safe_serialization=True)

    _write_common_parts(dest, SD2_SCHEDULER_CONFIG if flavor == "sd2" else SD_SCHEDULER_CONFIG, "tiny", seed, flavor)
    return dest


# --- full-size SD1.5 with random weights -------------------------------------------------------

_SAFETENSORS_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int64: "I64"}


def save_safetensors_streaming(state_dict: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """Write a safetensors file tensor by tensor, never holding a serialized copy of the weights.

    ``safetensors.torch.save_file`` first turns every tensor into ``bytes`` (a full second copy of
    a 3.4 GB UNet); the format is simple enough to stream instead: an 8-byte little-endian header
    length, a JSON header with each tensor's dtype/shape/byte range, then the raw little-endian data.
    """
    header: dict[str, Any] = {"__metadata__": metadata}
    offset = 0
    for name, tensor in state_dict.items():
        nbytes = tensor.numel() * tensor.element_size()
        header[name] = {
            "dtype": _SAFETENSORS_DTYPES[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    header_bytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    header_bytes += b" " * (-len(header_bytes) % 8)  # the spec pads the header to 8-byte alignment
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(header_bytes)))
        handle.write(header_bytes)
        for tensor in state_dict.values():
            # A contiguous CPU tensor viewed as bytes: written straight from its storage.
            data = tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy()
            handle.write(memoryview(data))


def build_sd15_random_folder(dest: Path, seed: int = 0, configs: dict[str, dict[str, Any]] | None = None) -> Path:
    """Write the full SD1.5 architecture with seeded random weights (fp32, ~4.3 GB) into ``dest``.

    ``configs``: the component configs (text_encoder, unet, vae, scheduler); default SD1.5's, kept in
    this package (``sd15_configs``). Components are built, written and freed one at a time, so peak
    memory is one UNet (~3.4 GB).
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    configs = configs if configs is not None else sd15_configs()
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(seed)
    text_config = CLIPTextConfig(**configs["text_encoder"])
    text_encoder = CLIPTextModel(text_config).eval()
    text_encoder.config.save_pretrained(dest / "text_encoder")
    save_safetensors_streaming(text_encoder.state_dict(), dest / "text_encoder" / "model.safetensors", {"format": "pt"})
    del text_encoder

    for offset, (name, cls) in enumerate((("unet", UNet2DConditionModel), ("vae", AutoencoderKL)), start=1):
        torch.manual_seed(seed + offset)
        config = {k: v for k, v in configs[name].items() if not k.startswith("_")}
        model = cls.from_config(config).eval()
        model.save_config(dest / name)
        save_safetensors_streaming(
            model.state_dict(), dest / name / "diffusion_pytorch_model.safetensors", {"format": "pt"}
        )
        del model

    scheduler_config = dict(configs["scheduler"])
    scheduler_config.setdefault("prediction_type", "epsilon")
    _write_common_parts(dest, scheduler_config, "sd15-random", seed)
    return dest


__all__ = [
    "SD_SCHEDULER_CONFIG",
    "SOURCE_MARKER",
    "build_sd15_random_folder",
    "build_tiny_sd_folder",
    "save_safetensors_streaming",
    "tiny_configs",
]

"""The component configs of Stable Diffusion v1.5 (architecture only, no weights).

They are the ``config.json`` files of the public SD v1.5 diffusers layout (the
``stable-diffusion-v1-5`` folder: ``text_encoder/``, ``unet/``, ``vae/``, ``scheduler/``), copied
here key for key so a clone of this repository can build the real architecture with random weights
(``tiny.build_sd15_random_folder``; memory and speed do not depend on weight values) without any
download or folder outside the repository. The tokenizer is not here: ``clip_vocab`` builds CLIP's
files from the BPE merges shipped inside a PyPI package.

Sizes this builds: UNet 859.5 M parameters, text encoder 123 M, VAE 83.7 M; VAE latent scaling
0.18215. SD 2.x differs in v-prediction, a 1024-wide 23-layer OpenCLIP text encoder,
``cross_attention_dim`` 1024, ``use_linear_projection`` and per-block ``attention_head_dim``; check a
real folder before relying on these differences.
"""
from __future__ import annotations

import copy
from typing import Any

_TEXT_ENCODER: dict[str, Any] = {
    "architectures": ["CLIPTextModel"],
    "attention_dropout": 0.0,
    "bos_token_id": 0,
    "dropout": 0.0,
    "eos_token_id": 2,
    "hidden_act": "quick_gelu",
    "hidden_size": 768,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77,
    "model_type": "clip_text_model",
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "pad_token_id": 1,
    "projection_dim": 768,
    "torch_dtype": "float32",
    "vocab_size": 49408,
}

_UNET: dict[str, Any] = {
    "_class_name": "UNet2DConditionModel",
    "_diffusers_version": "0.6.0",
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}

_VAE: dict[str, Any] = {
    "_class_name": "AutoencoderKL",
    "_diffusers_version": "0.6.0",
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 512,
    "scaling_factor": 0.18215,
    "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"],
}

_SCHEDULER: dict[str, Any] = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.6.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
    "clip_sample": False,
}


def sd15_configs() -> dict[str, dict[str, Any]]:
    """SD1.5's component configs by component (text_encoder, unet, vae, scheduler); a fresh copy per call."""
    return copy.deepcopy({"text_encoder": _TEXT_ENCODER, "unet": _UNET, "vae": _VAE, "scheduler": _SCHEDULER})


__all__ = ["sd15_configs"]

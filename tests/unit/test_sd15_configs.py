"""SD1.5's architecture configs live in the repository: the SD1.5-scale benchmark builds from them alone."""
from __future__ import annotations

import pytest

from zoodip_export.sd15_configs import sd15_configs


def test_sd15_configs_hold_the_sd15_architecture():
    configs = sd15_configs()
    assert set(configs) == {"text_encoder", "unet", "vae", "scheduler"}
    text, unet, vae, scheduler = configs["text_encoder"], configs["unet"], configs["vae"], configs["scheduler"]
    assert (text["hidden_size"], text["num_hidden_layers"], text["num_attention_heads"]) == (768, 12, 12)
    assert text["vocab_size"] == 49408 and text["max_position_embeddings"] == 77
    assert unet["cross_attention_dim"] == text["hidden_size"] == 768
    assert unet["block_out_channels"] == [320, 640, 1280, 1280] and unet["layers_per_block"] == 2
    assert unet["sample_size"] == 64 and unet["in_channels"] == unet["out_channels"] == 4
    assert vae["latent_channels"] == 4 and vae["scaling_factor"] == 0.18215
    assert len(vae["block_out_channels"]) == 4  # three downsamplings: 512 px images, 64 px latents
    assert (scheduler["beta_start"], scheduler["beta_end"], scheduler["beta_schedule"]) == (0.00085, 0.012, "scaled_linear")


def test_sd15_configs_are_a_fresh_copy_per_call():
    first = sd15_configs()
    first["unet"]["block_out_channels"].append(1)
    assert sd15_configs()["unet"]["block_out_channels"] == [320, 640, 1280, 1280]


def test_sd15_configs_build_the_models_with_sd15_parameter_counts():
    # On torch's meta device: the real classes, shapes only, no weight memory.
    torch = pytest.importorskip("torch")
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    configs = sd15_configs()
    with torch.device("meta"):
        text = CLIPTextModel(CLIPTextConfig(**configs["text_encoder"]))
        unet = UNet2DConditionModel.from_config({k: v for k, v in configs["unet"].items() if not k.startswith("_")})
        vae = AutoencoderKL.from_config({k: v for k, v in configs["vae"].items() if not k.startswith("_")})
    millions = [round(sum(p.numel() for p in m.parameters()) / 1e6, 1) for m in (text, unet, vae)]
    assert millions == [123.1, 859.5, 83.7]

"""Diffusers' SD components -> the original (LDM) layout of a single-file checkpoint, as A1111 and civitai keep them:
the inverse of diffusers' single-file conversion. The exporter uses it to check that a converted checkpoint's every
tensor came from the file (diffusers fills a missing one with its random initial values, silently); the tests use it
to write such files from the tiny folders (no real one can be downloaded here). SD1.x's text encoder is stored as is
under ``cond_stage_model.transformer.``; SD2.x's in OpenCLIP's layout (fused q/k/v projections) under
``cond_stage_model.model.``."""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from zoodip.json_text import parse_json


def _resnet(prefix_new: str, prefix_old: str, sd: dict, out: dict) -> None:
    names = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1", "norm2": "out_layers.0",
             "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
    for key in [k for k in sd if k.startswith(prefix_new + ".")]:
        rest = key[len(prefix_new) + 1:]
        head, _, tail = rest.partition(".")
        out[f"{prefix_old}.{names[head]}.{tail}"] = sd[key]


def _move(prefix_new: str, prefix_old: str, sd: dict, out: dict) -> None:
    for key in [k for k in sd if k.startswith(prefix_new + ".")]:
        out[prefix_old + key[len(prefix_new):]] = sd[key]


def unet_to_ldm(sd: dict, config: dict) -> dict:
    out: dict = {}
    L = config["layers_per_block"]
    blocks = len(config["block_out_channels"])
    _move("time_embedding.linear_1", "time_embed.0", sd, out)
    _move("time_embedding.linear_2", "time_embed.2", sd, out)
    _move("conv_in", "input_blocks.0.0", sd, out)
    _move("conv_norm_out", "out.0", sd, out)
    _move("conv_out", "out.2", sd, out)
    for i in range(blocks):
        for j in range(L):
            n = 1 + i * (L + 1) + j
            _resnet(f"down_blocks.{i}.resnets.{j}", f"input_blocks.{n}.0", sd, out)
            _move(f"down_blocks.{i}.attentions.{j}", f"input_blocks.{n}.1", sd, out)
        if i < blocks - 1:
            _move(f"down_blocks.{i}.downsamplers.0.conv", f"input_blocks.{(i + 1) * (L + 1)}.0.op", sd, out)
    _resnet("mid_block.resnets.0", "middle_block.0", sd, out)
    _move("mid_block.attentions.0", "middle_block.1", sd, out)
    _resnet("mid_block.resnets.1", "middle_block.2", sd, out)
    for i in range(blocks):
        has_attention = any(k.startswith(f"up_blocks.{i}.attentions.") for k in sd)
        for j in range(L + 1):
            n = i * (L + 1) + j
            _resnet(f"up_blocks.{i}.resnets.{j}", f"output_blocks.{n}.0", sd, out)
            _move(f"up_blocks.{i}.attentions.{j}", f"output_blocks.{n}.1", sd, out)
        if i < blocks - 1:
            _move(f"up_blocks.{i}.upsamplers.0.conv", f"output_blocks.{i * (L + 1) + L}.{2 if has_attention else 1}.conv",
                  sd, out)
    _check_placed(out, sd, "UNet")
    return {"model.diffusion_model." + k: v for k, v in out.items()}


def _vae_resnet(prefix_new: str, prefix_old: str, sd: dict, out: dict) -> None:
    for key in [k for k in sd if k.startswith(prefix_new + ".")]:
        rest = key[len(prefix_new) + 1:]
        out[prefix_old + "." + rest.replace("conv_shortcut", "nin_shortcut")] = sd[key]


def _vae_attention(prefix_new: str, prefix_old: str, sd: dict, out: dict) -> None:
    names = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
    for new, old in names.items():
        for kind in ("weight", "bias"):
            tensor = sd[f"{prefix_new}.{new}.{kind}"]
            if kind == "weight" and new != "group_norm":
                tensor = tensor[:, :, None, None]  # LDM's 1x1 convolutions
            out[f"{prefix_old}.{old}.{kind}"] = tensor


def vae_to_ldm(sd: dict, config: dict) -> dict:
    out: dict = {}
    blocks = len(config["block_out_channels"])
    L = config["layers_per_block"]
    for part in ("encoder", "decoder"):
        _move(f"{part}.conv_in", f"{part}.conv_in", sd, out)
        _move(f"{part}.conv_out", f"{part}.conv_out", sd, out)
        _move(f"{part}.conv_norm_out", f"{part}.norm_out", sd, out)
        _vae_resnet(f"{part}.mid_block.resnets.0", f"{part}.mid.block_1", sd, out)
        _vae_resnet(f"{part}.mid_block.resnets.1", f"{part}.mid.block_2", sd, out)
        _vae_attention(f"{part}.mid_block.attentions.0", f"{part}.mid.attn_1", sd, out)
    for i in range(blocks):
        for j in range(L):
            _vae_resnet(f"encoder.down_blocks.{i}.resnets.{j}", f"encoder.down.{i}.block.{j}", sd, out)
        _move(f"encoder.down_blocks.{i}.downsamplers.0.conv", f"encoder.down.{i}.downsample.conv", sd, out)
        for j in range(L + 1):
            _vae_resnet(f"decoder.up_blocks.{i}.resnets.{j}", f"decoder.up.{blocks - 1 - i}.block.{j}", sd, out)
        _move(f"decoder.up_blocks.{i}.upsamplers.0.conv", f"decoder.up.{blocks - 1 - i}.upsample.conv", sd, out)
    for name in ("quant_conv", "post_quant_conv"):
        _move(name, name, sd, out)
    assert len(out) == len(sd), (len(out), len(sd))
    return {"first_stage_model." + k: v for k, v in out.items()}


def open_clip_layout(sd: dict) -> dict:
    """A transformers CLIP text encoder's tensors in OpenCLIP's names (SD2.x's checkpoints)."""
    names = {"text_model.embeddings.token_embedding.weight": "token_embedding.weight",
             "text_model.embeddings.position_embedding.weight": "positional_embedding",
             "text_model.final_layer_norm.weight": "ln_final.weight", "text_model.final_layer_norm.bias": "ln_final.bias"}
    out = {new: sd[old] for old, new in names.items()}
    parts = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
             "self_attn.out_proj": "attn.out_proj"}
    layers = {int(k.split(".")[3]) for k in sd if k.startswith("text_model.encoder.layers.")}
    for i in sorted(layers):
        old, new = f"text_model.encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for a, b in parts.items():
            for kind in ("weight", "bias"):
                out[f"{new}{b}.{kind}"] = sd[f"{old}{a}.{kind}"]
        for kind in ("weight", "bias"):
            out[f"{new}attn.in_proj_{kind}"] = torch.cat([sd[f"{old}self_attn.{x}_proj.{kind}"] for x in "qkv"])
    return out


def _check_placed(out: dict, sd: dict, what: str) -> None:
    if len(out) != len(sd):
        raise ValueError(f"the {what} has {len(sd) - len(out)} tensors the original layout does not name here")


def components_to_ldm(unet: dict, unet_config: dict, vae: dict, vae_config: dict, text: dict,
                      open_clip: bool) -> dict:
    """The state dicts of a UNet, a VAE and a CLIP text encoder (with their configs) under a checkpoint's names; the
    text encoder in OpenCLIP's layout where ``open_clip`` (SD2.x)."""
    state = {**unet_to_ldm(unet, unet_config), **vae_to_ldm(vae, vae_config)}
    if open_clip:
        state.update({"cond_stage_model.model." + k: v for k, v in open_clip_layout(text).items()})
    else:
        state.update({"cond_stage_model.transformer." + k: v for k, v in text.items()})
    return state


def folder_to_ldm(folder: Path, dest: Path) -> Path:
    """A diffusers SD folder's weights written as one checkpoint ``dest`` in the original layout; returns ``dest``."""
    folder = Path(folder)

    def config(part: str) -> dict:
        return parse_json((folder / part / "config.json").read_text())

    state = components_to_ldm(load_file(folder / "unet" / "diffusion_pytorch_model.safetensors"), config("unet"),
                              load_file(folder / "vae" / "diffusion_pytorch_model.safetensors"), config("vae"),
                              load_file(folder / "text_encoder" / "model.safetensors"),
                              config("text_encoder").get("hidden_act") == "gelu")  # SD2.x's OpenCLIP
    save_file({k: v.contiguous() for k, v in state.items()}, str(dest))
    return dest

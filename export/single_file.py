"""A1111's single-file checkpoints: one ``.safetensors`` in the original Stable Diffusion (LDM) layout, as A1111,
civitai and most shared SD1.x models keep them, turned into the diffusers folder the exporter reads.

The conversion is diffusers' own (``StableDiffusionPipeline.from_single_file``), run offline: the architecture comes
from configs given here, never from the Hub. SD1.x checkpoints use SD1.5's (``sd15_configs``, with CLIP's tokenizer
files built from the merges shipped in a PyPI package); SD2.x ones need ``config``, a diffusers SD2.x folder of the
same kind, since the weights do not say whether the model predicts noise (2.x base, 512 px) or velocity (2.x, 768 px).
Pickled checkpoints (``.ckpt``) are refused: unpickling runs code, and this tool reads files people download.
"""
from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path
from typing import Any, Callable

from zoodip.errors import ZoodipError

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl")
_UNET, _SD1_TEXT, _SD2_TEXT = "model.diffusion_model.", "cond_stage_model.transformer.", "cond_stage_model.model."
_SDXL, _VAE = "conditioner.embedders.", "first_stage_model."
_INPUT_CONV = _UNET + "input_blocks.0.0.weight"
# A checkpoint's tensors no SD model of diffusers holds: CLIP's position ids, OpenCLIP's projection, scale and last
# layer (SD2.x reads the one before it), the VAE's training loss.
_NOT_CONVERTED = re.compile(r"position_ids$|\.text_projection$|\.logit_scale$|\.resblocks\.23\.|first_stage_model\.loss\.")
_TO_FOLDER = ("python -c \"from diffusers import StableDiffusionPipeline as P; "
              "P.from_single_file('IN.safetensors').save_pretrained('FOLDER')\" on a machine with network access, then "
              "export FOLDER")


def single_file_flavor(path: Path, config: Path | None = None, names: list[str] | None = None) -> str:
    """"sd1" or "sd2" for an SD checkpoint file, from the ``names`` in its header alone (read here where not given; no
    tensor is read); anything else refused in one line saying what to pass instead. A file without a VAE takes
    ``config``'s (``vae_folder``)."""
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise ZoodipError(f"{path} is a pickled checkpoint, which zoodip does not load (unpickling runs code from the "
                          f"file): use the model's .safetensors file, or convert it with {_TO_FOLDER}")
    if not path.is_file():
        raise ZoodipError(f"{path} does not exist (or is not a file): pass a diffusers folder or a .safetensors "
                          "checkpoint")
    if path.suffix.lower() != ".safetensors":
        raise ZoodipError(f"{path} is neither a diffusers folder nor a .safetensors checkpoint: pass one of them")
    names = _tensor_names(path) if names is None else names
    if any(name.startswith(_SDXL) for name in names):
        raise ZoodipError(f"{path} is an SDXL checkpoint: zoodip exports Stable Diffusion 1.x/2.x only")
    if not any(name.startswith(_UNET) for name in names):
        if any(name.startswith("model_ema.") for name in names):
            raise ZoodipError(f"{path} holds its UNet only as EMA weights (model_ema.*), which diffusers' conversion "
                              "does not read: use the model's file with its weights (most are shared so)")
        kind = "a LoRA" if any("lora" in name for name in names) else "not a Stable Diffusion checkpoint"
        raise ZoodipError(f"{path} is {kind} (no {_UNET}* tensors): pass a whole SD1.x/2.x checkpoint or a diffusers "
                          "folder")
    flavor = next((flavor for flavor, prefix in (("sd2", _SD2_TEXT), ("sd1", _SD1_TEXT))
                   if any(name.startswith(prefix) for name in names)), None)
    if flavor is None:
        raise ZoodipError(f"{path} holds a UNet but no text encoder ({_SD1_TEXT}* or {_SD2_TEXT}*): pass a whole "
                          "SD1.x/2.x checkpoint")
    if not any(name.startswith(_VAE) for name in names) and vae_folder(config) is None:
        raise ZoodipError(f"{path} holds no VAE ({_VAE}* tensors; a checkpoint shared without one): pass --config "
                          "FOLDER, a diffusers folder of its kind whose vae/ holds the VAE to use (its weights)")
    if (channels := _in_channels(path, names)) != 4:
        raise ZoodipError(f"{path} is {unet_kind(channels)}: its UNet reads {channels} channels. zoodip exports "
                          f"text-to-image SD1.x/2.x models{UNET_KIND_FIX}")
    return flavor


# UNets that read more than the 4 latent channels, by what their extra channels hold (the diffusers pipelines they
# belong to), so that a refusal names the model the user has rather than calling every one an inpainting model.
_UNET_KINDS = {9: "an inpainting model (it also reads a mask and the masked image)",
               8: "an image-editing model such as InstructPix2Pix (it also reads the input image's latents)",
               5: "a depth-to-image model (it also reads a depth map)"}
UNET_KIND_FIX = ", which inpaint and edit images themselves (generate --image, --mask)"


def unet_kind(channels: int) -> str:
    """What a UNet reading ``channels`` input channels is, where it is not a text-to-image one."""
    return _UNET_KINDS.get(channels, "not a text-to-image model")


def vae_folder(config: Path | None) -> Path | None:
    """``config``'s VAE folder where it holds weights (a checkpoint shared without a VAE takes it), else None."""
    folder = None if config is None else config / "vae"
    return folder if folder is not None and any(folder.glob("diffusion_pytorch_model*.safetensors")) else None


def _tensor_names(path: Path) -> list[str]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as file:
            return list(file.keys())
    except (OSError, SafetensorError, ValueError) as exc:
        with open(path, "rb") as file:
            head = file.read(4)
        if head[:2] == b"PK" or head[:1] == b"\x80":  # a zip (torch.save) or a bare pickle under another name
            raise ZoodipError(f"{path} is a pickled checkpoint under a .safetensors name (a renamed .ckpt?), which "
                              f"zoodip does not load: convert it with {_TO_FOLDER}") from None
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ZoodipError(f"cannot read {path} ({reason}): the file may be damaged or incomplete: copy it again") from None


def single_file_to_folder(path: Path, dest: Path, config: Path | None = None,
                          log: Callable[[str], None] = print) -> Path:
    """Write ``path``'s weights as a diffusers folder ``dest`` (fp32), its architecture from ``config`` (a diffusers
    folder: its configs and tokenizer are read, not its weights) or, for SD1.x, SD1.5's; returns ``dest``. ``log``
    says what the weights could not: whose architecture, prediction type and VAE."""
    import torch
    from diffusers import AutoencoderKL, StableDiffusionPipeline

    names = _tensor_names(path)
    flavor = single_file_flavor(path, config, names)
    own_vae = any(name.startswith(_VAE) for name in names)
    said = "SD1.5" if config is None else str(config)
    if config is None:
        if flavor == "sd2":
            raise ZoodipError(f"{path} is an SD2.x checkpoint, whose weights do not say whether it predicts noise "
                              "(2.x base, 512 px) or velocity (2.x, 768 px): pass --config FOLDER, a diffusers SD2.x "
                              "folder of the same kind (its configs are read, not its weights)")
        config = _sd15_config_folder(dest.with_name(dest.name + "-config"))
    from diffusers.loaders.single_file_utils import SingleFileComponentError
    from diffusers.utils import logging as diffusers_logging

    readable = path
    if path.suffix != ".safetensors":  # diffusers picks its reader by the lower-case suffix alone
        readable = dest.with_name(dest.name + "-checkpoint.safetensors")
        readable.symlink_to(path.absolute())
    diffusers_logging.disable_progress_bar()  # the export's own progress lines say what is done
    try:
        vae = {} if own_vae else {"vae": AutoencoderKL.from_pretrained(vae_folder(config), torch_dtype=torch.float32)}
        pipe = StableDiffusionPipeline.from_single_file(str(readable), config=str(config), local_files_only=True,
                                                        torch_dtype=torch.float32, safety_checker=None,
                                                        requires_safety_checker=False, **vae)
    except (OSError, ValueError, KeyError, RuntimeError, TypeError, SingleFileComponentError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "state_dict" in reason or "size mismatch" in reason:
            reason = f"its tensors do not fit that architecture: {reason.rstrip(':')}"
        what = "SD1.5's configs" if config.name.endswith("-config") else f"the configs of {config}"
        raise ZoodipError(f"cannot convert {path} with {what} ({reason[:300]}): a checkpoint of another "
                          "architecture needs --config FOLDER, a diffusers folder of its kind") from None
    finally:
        diffusers_logging.enable_progress_bar()
    _check_converted(pipe, path, flavor, set(names), own_vae)
    pipe.save_pretrained(dest, safe_serialization=True)
    # diffusers' conversion adds settings of its own to the scheduler's (its timestep spacing, which changes every
    # sampler's steps): the configs' own, as their folder's export has it.
    shutil.copyfile(config / "scheduler" / "scheduler_config.json", dest / "scheduler" / "scheduler_config.json")
    prediction = pipe.scheduler.config.get("prediction_type", "epsilon")
    log(f"its architecture and prediction type ({prediction}) are {said}'s: the weights do not say"
        + ("" if own_vae else f"; its VAE is {said}'s (the file holds none)"))
    return dest


def _in_channels(path: Path, names: list[str]) -> int:
    """The UNet's input channels (4; an inpainting model's 9), from the first convolution's shape."""
    from safetensors import safe_open

    if _INPUT_CONV not in names:
        return 4
    with safe_open(str(path), framework="pt") as file:
        return int(file.get_slice(_INPUT_CONV).get_shape()[1])


def _check_converted(pipe: Any, path: Path, flavor: str, present: set[str], own_vae: bool = True) -> None:
    """Every tensor of the converted model came from ``path`` (diffusers gives a missing one its random initial
    values, silently; the VAE from the configs' folder where the file has none) and is finite."""
    from zoodip_export.ldm_layout import components_to_ldm
    from zoodip_export.weights import first_non_finite

    try:
        expected = components_to_ldm(pipe.unet.state_dict(), dict(pipe.unet.config), pipe.vae.state_dict(),
                                     dict(pipe.vae.config), pipe.text_encoder.state_dict(), flavor == "sd2")
    except (ValueError, KeyError) as exc:
        raise ZoodipError(f"cannot check {path}'s conversion ({exc}): a model of another layout than SD1.x/2.x's") from None
    missing = sorted(name for name in expected if name not in present and not name.endswith("position_ids")
                     and (own_vae or not name.startswith(_VAE)))
    if missing:
        raise ZoodipError(f"{path} lacks {len(missing)} of the model's tensors (e.g. {missing[0]}), which the "
                          "conversion would fill with random values: the file is incomplete: use a whole checkpoint")
    unused = sorted(name for name in present - set(expected) if name.startswith((_UNET, _VAE, _SD1_TEXT, _SD2_TEXT))
                    and not _NOT_CONVERTED.search(name))
    if unused:  # a larger model than the configs' architecture loses them: said, since a file may carry extras
        print(f"warning: the conversion leaves out {len(unused)} of {path.name}'s model tensors (e.g. {unused[0]}): if "
              "its model is larger than the configs' architecture, pass --config FOLDER of its kind", file=sys.stderr)
    broken = first_non_finite(expected)
    if broken is not None:
        raise ZoodipError(f"{path} holds non-finite values (NaN or infinity) in {broken}: the file is damaged")


def _sd15_config_folder(dest: Path) -> Path:
    """SD1.5's configs and CLIP's tokenizer as a weightless diffusers folder, for diffusers' conversion to read."""
    from zoodip_export.clip_vocab import write_clip_tokenizer_files
    from zoodip_export.sd15_configs import sd15_configs
    from zoodip_export.tiny import model_index, write_json

    configs: dict[str, Any] = sd15_configs()
    write_json(dest / "model_index.json", model_index())
    for name, file in (("unet", "config.json"), ("vae", "config.json"), ("text_encoder", "config.json"),
                       ("scheduler", "scheduler_config.json")):
        write_json(dest / name / file, configs[name])
    write_clip_tokenizer_files(dest / "tokenizer")
    return dest

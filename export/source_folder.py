"""The diffusers source folder an export reads: its required parts, its configs, the model facts they give."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from zoodip.json_text import parse_json
from zoodip.errors import ZoodipError
from zoodip.paths import why_missing

# What a diffusers SD folder must hold for us: component -> files that must exist in it.
REQUIRED_PARTS: dict[str, tuple[str, ...]] = {
    "unet": ("config.json",),
    "vae": ("config.json",),
    "text_encoder": ("config.json",),
    "tokenizer": ("vocab.json", "merges.txt"),
    "scheduler": ("scheduler_config.json",),
}

# The largest native latent side an export records (SDXL's is 128): a larger one is a damaged config.
MAX_SAMPLE_SIZE = 512
# UNet config keys of conditioning besides the text and the timestep (SDXL's text_time, class labels, image hints).
_OTHER_CONDITIONING = ("addition_embed_type", "class_embed_type", "num_class_embeds", "encoder_hid_dim_type")


def read_json(path: Path) -> dict[str, Any]:
    """A config of the source: a JSON object, or one line naming the file and what to do."""
    try:
        data = parse_json(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ZoodipError(f"cannot read {path} ({exc.strerror or exc}): make it a readable file") from None
    except ValueError as exc:  # (UnicodeDecodeError is one)
        raise ZoodipError(f"{path} is not readable JSON ({str(exc)[:100] or type(exc).__name__}): copy the file again "
                          "from the model's source") from None
    if not isinstance(data, dict):
        raise ZoodipError(f"{path} is not a JSON object (it holds a {type(data).__name__}): copy the file again from the "
                          "model's source")
    return data


def check_source(source: Path) -> dict[str, dict[str, Any]]:
    """Check that ``source`` is a diffusers SD folder we can export; returns its component configs."""
    if not source.exists():
        raise ZoodipError(f"source folder {source} {why_missing(source)}: pass a diffusers Stable Diffusion folder")
    if not source.is_dir():
        raise ZoodipError(f"source {source} is not a folder (expected a diffusers Stable Diffusion folder)")
    # SDXL folders look like SD ones plus a second text encoder; refuse them before reading weights.
    index = source / "model_index.json"
    pipeline = read_json(index).get("_class_name", "") if index.is_file() else ""
    if (source / "text_encoder_2").exists() or "XL" in str(pipeline):
        raise ZoodipError(f"{source} is an SDXL folder ({pipeline or 'it has text_encoder_2'}): zoodip exports "
                          "Stable Diffusion 1.x/2.x only; use an SD1.5 or SD2.x folder")
    for part, files in REQUIRED_PARTS.items():
        for name in files:
            path = source / part / name
            if not path.is_file():  # (a link into a cache whose file is gone is said as one)
                why = "is missing" if not os.path.lexists(path) else why_missing(path)
                raise ZoodipError(f"{source} is not a diffusers Stable Diffusion folder: {part}/{name} {why}")
    configs = {
        "unet": read_json(source / "unet" / "config.json"),
        "vae": read_json(source / "vae" / "config.json"),
        "text_encoder": read_json(source / "text_encoder" / "config.json"),
        "scheduler": read_json(source / "scheduler" / "scheduler_config.json"),
    }
    text = configs["text_encoder"]
    if text.get("model_type", "clip_text_model") != "clip_text_model" and "CLIPTextModel" not in text.get(
        "architectures", []
    ):
        raise ZoodipError(f"{source}: only CLIP text encoders (Stable Diffusion 1.x/2.x) are supported")
    if not isinstance(configs["unet"].get("cross_attention_dim"), int):
        raise ZoodipError(f"{source}: unsupported UNet (expected one integer cross_attention_dim, as in SD1.x/2.x)")
    layers = text.get("num_hidden_layers", 12)
    if not isinstance(layers, int) or layers < 2:  # (clip skip reads the layers before the last)
        raise ZoodipError(f"{source}: its text encoder has {layers!r} layer(s); SD1.x's has 12, SD2.x's 23: not a "
                          "Stable Diffusion text encoder")
    conditioning = [key for key in _OTHER_CONDITIONING if configs["unet"].get(key) is not None]
    if conditioning:  # SDXL's UNet (text_time), class-conditioned ones: their graphs take inputs zoodip's has not
        raise ZoodipError(f"{source}: its UNet is conditioned on more than the text ({', '.join(conditioning)} in "
                          "unet/config.json, as SDXL's or a class-conditioned model's): zoodip exports Stable "
                          "Diffusion 1.x/2.x UNets only")
    _check_readable_by_the_sdk(source, configs)
    if configs["unet"].get("time_cond_proj_dim") is not None:  # its UNet would be exported without that input
        raise ZoodipError(f"{source}: its UNet takes a guidance-scale embedding (time_cond_proj_dim: a latent "
                          "consistency model distilled with it, such as LCM_Dreamshaper_v7), an input zoodip's export "
                          "does not have: export a base model with the LCM-LoRA fused in instead (diffusers' "
                          "load_lora_weights, fuse_lora, save_pretrained) and generate with --sampler lcm")
    _check_vae_depth(source, configs["vae"])
    unet_channels, latent_channels = configs["unet"].get("in_channels", 4), configs["vae"].get("latent_channels", 4)
    if unet_channels != latent_channels:
        from zoodip_export.single_file import UNET_KIND_FIX, unet_kind

        raise ZoodipError(f"{source} is {unet_kind(unet_channels)}: its UNet reads {unet_channels} channels, not the "
                          f"VAE's {latent_channels} latent channels. zoodip exports text-to-image SD1.x/2.x models"
                          f"{UNET_KIND_FIX}: export the base model")
    return configs


def _check_readable_by_the_sdk(source: Path, configs: dict[str, dict[str, Any]]) -> None:
    """What the SDK reads of the export as the source has it (the scheduler config, the VAE's latent scale, the
    tokenizer's files and how they fit the text encoder and the UNet), checked before any weights are read: an export
    the SDK refuses is not written."""
    from zoodip.model import latent_scale_problem
    from zoodip.samplers import SPACINGS
    from zoodip.schedule import NoiseSchedule
    from zoodip.tokenizer import CLIPTokenizer

    try:
        NoiseSchedule.from_config(configs["scheduler"])
        tokenizer = CLIPTokenizer.from_folder(source / "tokenizer")
    except ZoodipError as exc:
        raise ZoodipError(f"{source}: {exc}") from None
    spacing = configs["scheduler"].get("timestep_spacing")
    if spacing is not None and spacing not in SPACINGS:  # every sampler would refuse it
        raise ZoodipError(f"{source}: scheduler/scheduler_config.json has timestep_spacing {spacing!r:.40}, not one of "
                          f"{', '.join(SPACINGS)}: fix the file")
    scale_problem = latent_scale_problem(configs["vae"].get("scaling_factor", 0.18215))
    if scale_problem:
        raise ZoodipError(f"{source}: vae/config.json has scaling_factor {scale_problem} (SD1.x/2.x: 0.18215): fix the file")
    _check_text_side(source, configs, tokenizer)


def _check_text_side(source: Path, configs: dict[str, dict[str, Any]], tokenizer: Any) -> None:
    """The tokenizer, the text encoder and the UNet's cross-attention fit one another as the SDK joins them."""
    text, unet = configs["text_encoder"], configs["unet"]
    width, attends_to = text.get("hidden_size"), unet["cross_attention_dim"]
    if width != attends_to:  # the UNet's parity inputs are random: only a generate would have found it
        raise ZoodipError(f"{source}: its text encoder is {width!r:.20} wide (text_encoder/config.json hidden_size), its "
                          f"UNet attends to {attends_to} (unet/config.json cross_attention_dim): the two are not one "
                          "model's; copy the model's own text_encoder folder")
    positions = min(_text_positions(source, text), 77)
    if tokenizer.max_length != positions:
        raise ZoodipError(f"{source}: tokenizer/tokenizer_config.json's model_max_length is {tokenizer.max_length}, the "
                          f"text encoder takes {positions} positions: copy the model's own tokenizer folder")
    rows, base, added = text.get("vocab_size", 49408), tokenizer.base_vocab_size, tokenizer.added_tokens
    if rows == base:
        return
    if added and rows == base + len(added):
        embeddings = source / "learned_embeds.safetensors"
        where = (f"{embeddings.name}, which diffusers' script saved beside this pipeline" if embeddings.is_file()
                 else "the learned_embeds.safetensors its training saved")
        names = ", ".join(sorted(added)[:3]) + (f" and {len(added) - 3} more" if len(added) > 3 else "")
        raise ZoodipError(f"{source}: its text encoder holds {len(added)} token(s) added after training "
                          f"({names}: a textual-inversion pipeline saved whole): export the "
                          f"base model it was trained from and pass {where} to generate with --embedding")
    raise ZoodipError(f"{source}: its text encoder has {rows!r:.20} token rows (text_encoder/config.json vocab_size), "
                      f"its tokenizer {base} words: copy the model's own tokenizer folder")


def _text_positions(source: Path, text: dict[str, Any]) -> int:
    """The text encoder's positions (CLIP's default 77 where its config leaves them out)."""
    positions = text.get("max_position_embeddings", 77)
    if isinstance(positions, bool) or not isinstance(positions, int) or positions < 2:
        raise ZoodipError(f"{source}: text_encoder/config.json's max_position_embeddings is {positions!r:.20}, not a "
                          "number of positions (CLIP's is 77): fix the file")
    return positions


# AutoencoderKL's defaults for the keys that set its depth (a config leaving them out gets these).
_VAE_DEPTH_DEFAULTS = {"block_out_channels": (64,), "down_block_types": ("DownEncoderBlock2D",),
                       "up_block_types": ("UpDecoderBlock2D",)}


def _check_vae_depth(source: Path, vae: dict[str, Any]) -> None:
    """The VAE halves the image once per encoder block after the first and doubles it once per decoder block after
    the first; the export records its pixels per latent from ``block_out_channels`` (as diffusers' pipelines do),
    which diffusers does not check against the block lists: a mismatch would give every image a wrong size."""
    counts = {key: vae.get(key, default) for key, default in _VAE_DEPTH_DEFAULTS.items()}
    if any(not isinstance(value, (list, tuple)) or not value for value in counts.values()):
        raise ZoodipError(f"{source}: vae/config.json's block_out_channels, down_block_types and up_block_types must be "
                          "non-empty lists (SD's: 4 entries each): fix the file")
    if len({len(value) for value in counts.values()}) != 1:
        raise ZoodipError(f"{source}: vae/config.json has {len(counts['block_out_channels'])} block_out_channels but "
                          f"{len(counts['down_block_types'])} down_block_types and {len(counts['up_block_types'])} "
                          "up_block_types, so its pixels per latent are not 2^(blocks - 1) (SD's: 4 each, 8 px): "
                          "copy the model's own vae folder")


def pickled_weights_warning(source: Path) -> str | None:
    """A warning line where a component of ``source`` has its weights only as pickles (``.bin``, no ``.safetensors``
    beside them), else None. diffusers and transformers load those with torch's weights-only unpickler, which refuses
    code; the user still learns that the folder is not in the safe format."""
    pickled = [part for part in ("unet", "vae", "text_encoder") if (source / part).is_dir() and _loads_pickle(source / part)]
    if not pickled:
        return None
    return (f"warning: {source}'s {', '.join(pickled)} weights are pickled (.bin), read with torch's weights-only "
            "loader; prefer the model's .safetensors weights, which hold no code")


def _loads_pickle(folder: Path) -> bool:
    """Whether the weights ``from_pretrained`` reads in ``folder`` are pickled: the plain ones (no variant: ".fp16."
    in the name) first, a .safetensors before a .bin; only where there are none, the fp16 variant's, likewise."""
    bins, safe = list(folder.glob("*.bin")), list(folder.glob("*.safetensors"))
    plain = lambda path: "." not in path.stem  # noqa: E731  (a shard, "-00001-of-00002", is plain too)
    if any(map(plain, safe)) or not bins:
        return False
    return any(map(plain, bins)) or not safe


# What diffusers' Stable Diffusion pipelines rewrite in an older scheduler config when they load it (with a
# deprecation warning): a steps_offset other than 1 (the schedulers' own default is 0) and clip_sample on.
PIPELINE_SCHEDULER_SETTINGS = {"steps_offset": 1, "clip_sample": False}


def pipeline_scheduler_config(config: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """``config`` as diffusers' pipelines sample with it (``PIPELINE_SCHEDULER_SETTINGS``), so that an export samples
    the timesteps diffusers does for the same folder; and what was changed, as ``key: old -> new``."""
    changed = [key for key, value in PIPELINE_SCHEDULER_SETTINGS.items()
               if (config.get(key, 0) != value if key == "steps_offset" else config.get(key) is True)]
    return ({**config, **{key: PIPELINE_SCHEDULER_SETTINGS[key] for key in changed}},
            [f"{key}: {config.get(key, 'not given')} -> {PIPELINE_SCHEDULER_SETTINGS[key]}" for key in changed])


def source_warnings(source: Path | None, configs: dict[str, dict[str, Any]], config: Path | None = None) -> list[str]:
    """The warning lines of exporting ``source`` (read as ``configs``; none for the tiny model): pickled weights, a
    scheduler config read otherwise than it says, a ControlNet or adapter left out; ``config``: a single file's
    --config folder, whose scheduler config the export takes."""
    if config is not None:  # (read_source has checked the folder: its scheduler config is read as it stands)
        return [line for line in (scheduler_warning(config, read_json(config / "scheduler" / "scheduler_config.json")),)
                if line]
    if source is None or not configs:
        return []
    lines = (pickled_weights_warning(source), scheduler_warning(source, configs.get("scheduler", {})),
             extra_parts_warning(source))
    return [line for line in lines if line]


# The parts of a diffusers pipeline folder that steer its base model from something besides the prompt, which the
# export leaves out (its graphs are the text-to-image model only): a ControlNet, a T2I-Adapter ("adapter") and an
# IP-Adapter's image encoder. Each is named in model_index.json ([null, null] where saved without one) or has its
# sub-folder. (feature_extractor is not here: every SD folder has one, for its safety checker.)
STEERING_PARTS = ("controlnet", "adapter", "image_encoder")


def extra_parts_warning(source: Path) -> str | None:
    """The line saying which ``STEERING_PARTS`` of ``source`` the export leaves out (the export is the base model,
    steered by the text only), else None: the user would otherwise expect control images, adapters or image prompts
    to work."""
    index = source / "model_index.json"
    entry = read_json(index) if index.is_file() else {}
    dropped = [part for part in STEERING_PARTS
               if (isinstance(entry.get(part), list) and any(entry[part])) or (source / part).is_dir()]
    if not dropped:
        return None
    pipeline = entry.get("_class_name") or "a pipeline"
    return (f"warning: {source} is {pipeline!s:.60}: its {', '.join(dropped)} "
            f"{'is' if len(dropped) == 1 else 'are'} not exported; the export is its base text-to-image model, "
            "steered by the prompt only")


def scheduler_warning(folder: Path, scheduler: dict[str, Any]) -> str | None:
    """The line saying that ``folder``'s scheduler config is read otherwise than it says (as diffusers' pipelines read
    it), else None; also for a single file's --config folder, whose scheduler the export takes."""
    _, changed = pipeline_scheduler_config(scheduler)
    return changed and (f"warning: {folder}'s scheduler_config.json is read as diffusers' Stable Diffusion pipelines "
                        f"read it ({', '.join(changed)}; they warn that the file is outdated)") or None


def vae_scale_factor(vae: dict[str, Any]) -> int:
    """Pixels per latent along a side: the VAE halves the image once per block after the first (8 for SD)."""
    return 2 ** (len(vae.get("block_out_channels", _VAE_DEPTH_DEFAULTS["block_out_channels"])) - 1)


def _config_side(unet: dict[str, Any]) -> int:
    """The latent side of unet/config.json's ``sample_size`` (64 where left out; ``[64, 64]`` is 64)."""
    side = unet.get("sample_size", 64)
    if isinstance(side, (list, tuple)) and len(side) == 2 and side[0] == side[1]:
        side = side[0]
    if isinstance(side, bool) or not isinstance(side, int):  # ("64", null, 32.5 and [64, 32] were tracebacks or taken)
        raise ZoodipError(f"unet/config.json's sample_size is {side!r:.40}, not a whole number of latents (SD1.x's 64, "
                          "SD2.x's 96): fix the file or pass --sample-size")
    return side


def model_info(configs: dict[str, dict[str, Any]], sample_size: int | None) -> dict[str, Any]:
    """The manifest's ``model`` entry, from the component configs."""
    text, unet, vae, scheduler = configs["text_encoder"], configs["unet"], configs["vae"], configs["scheduler"]
    max_positions = int(text.get("max_position_embeddings", 77))
    side = int(sample_size if sample_size is not None else _config_side(unet))
    # The UNet halves the latent (len(blocks) - 1) times; the sides must survive that exactly.
    multiple = 2 ** (len(unet.get("block_out_channels", (0,))) - 1)
    if side <= 0 or side % multiple:
        raise ZoodipError(f"sample_size {side} must be a positive multiple of {multiple} for this UNet: "
                          f"{'pass another' if sample_size is not None else 'fix unet/config.json or pass'} --sample-size")
    if side > MAX_SAMPLE_SIZE:  # the default image of every later command; caught here, not at the first generate
        raise ZoodipError(f"sample_size {side} latents is a {side * vae_scale_factor(vae)} px default image, past any SD "
                          f"model's (64 for SD1.x, 96 for SD2.x; at most {MAX_SAMPLE_SIZE} here): fix unet/config.json "
                          "or pass --sample-size")
    return {
        "hidden_size": int(text["hidden_size"]),
        "cross_attention_dim": int(unet["cross_attention_dim"]),
        "max_length": min(max_positions, 77),
        "vocab_size": int(text.get("vocab_size", 49408)),
        "latent_channels": int(vae.get("latent_channels", 4)),
        "vae_scale_factor": vae_scale_factor(vae),
        "scaling_factor": float(vae.get("scaling_factor", 0.18215)),
        "sample_size": side,
        "unet_halvings": len(unet.get("block_out_channels", (0,))) - 1,  # image sides: multiples of factor * 2^this
        "prediction_type": str(scheduler.get("prediction_type", "epsilon")),
        "num_train_timesteps": int(scheduler.get("num_train_timesteps", 1000)),
    }


def read_source(source: Path | None, sample_size: int | None, seed: int,
                config: Path | None = None) -> tuple[Path | None, dict[str, dict[str, Any]], dict[str, Any]]:
    """(absolute source folder, its checked configs, the manifest's "source" entry); the tiny model's without one, a
    single file's with its configs read after its conversion."""
    from zoodip.model import file_sha256
    from zoodip_export.single_file import single_file_flavor
    from zoodip_export.tiny import SOURCE_MARKER

    if source is None:
        return None, {}, {"kind": "tiny", "path": None, "seed": seed}
    source = Path(source).expanduser().absolute()
    if config is not None:
        check_source(config)  # a diffusers folder, its configs and tokenizer read (its weights need not be there)
    if source.is_file() or source.suffix.lower() == ".safetensors":
        single_file_flavor(source, config)  # refused before any work if it is not an SD1.x/2.x checkpoint
        # A1111 names a checkpoint by its SHA-256 (an image's "Model hash"): kept, so its images name this export.
        return source, {}, {"kind": "single-file", "path": str(source), "seed": None, "sha256": file_sha256(source)}
    if config is not None:
        raise ZoodipError("--config is for a single-file checkpoint; a diffusers folder has its own configs: drop it")
    configs = check_source(source)
    model_info(configs, sample_size)  # fail on a bad sample_size before writing anything
    marker = source / SOURCE_MARKER
    built_here = read_json(marker) if marker.is_file() else {}
    return source, configs, {"kind": built_here.get("kind", "diffusers-folder"), "path": str(source),
                             "seed": built_here.get("seed")}

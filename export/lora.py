"""LoRAs fused into a model's weights before its export: A1111's ``<lora:NAME:SCALE>`` and diffusers' ``fuse_lora``,
done once on the device's behalf, so the exported graphs (and every embedding learned on them) carry them.

A LoRA (Hu et al. 2021) stores, for a weight ``W`` of the UNet or the text encoder, two thin factors ``up`` [out, r]
and ``down`` [r, in] (a convolution's ``down`` keeps its kernel: [r, in, kh, kw], its ``up`` is 1x1) and an ``alpha``;
fused at ``scale`` it is

    W <- W + scale * (alpha / r) * up @ down

Two file layouts are read: kohya's, which A1111 and civitai use (``lora_unet_<module path with _>.lora_down.weight``,
``.lora_up.weight``, ``.alpha``; ``lora_te_`` for the text encoder), and diffusers' PEFT one
(``unet.<module path>.lora_A.weight``, ``.lora_B.weight``; ``text_encoder.`` likewise), whose alpha is the file's
``lora_adapter_metadata`` (PEFT's ``r``, ``lora_alpha``, ``use_rslora`` by component, as diffusers reads it), else
``.alpha`` tensors, else ``r``. Every layer of the file must land on a weight of the model with the right shape, once,
or the LoRA is refused: one made for another model (SDXL, SD2 on SD1) never fuses halfway. LyCORIS' other kinds
(LoHa, LoKr, DoRA) are refused by name.
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from zoodip.json_text import parse_json
from zoodip.paths import check_utf8_path
from zoodip.errors import ZoodipError
from zoodip.extra_networks import lora_name

COMPONENTS = {"unet": ("lora_unet_", "unet."), "text_encoder": ("lora_te_", "text_encoder.")}
KOHYA_PARTS = {".lora_down.weight": "down", ".lora_up.weight": "up", ".alpha": "alpha"}
PEFT_PARTS = {".lora_A.weight": "down", ".lora_B.weight": "up", ".alpha": "alpha"}
# Keys of adapters that are not a plain low-rank product: what each is, for the refusal.
OTHER_KINDS = {"hada_": "LoHa", "lokr_": "LoKr", "dora_scale": "DoRA", ".lora_mid.": "LoCon with a Tucker core",
               "lora_te1_": "SDXL", "lora_te2_": "SDXL", "text_encoder_2.": "SDXL", ".diff": "a full weight difference"}
MAX_SCALE = 10.0  # A1111's LoRA weights are typically 0.5-1.5; far beyond, a typo
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?|[-+]?(nan|inf|infinity)", re.IGNORECASE)  # a scale


@dataclass(frozen=True)
class LoraSpec:
    """One ``--lora FILE[:SCALE]``."""

    path: Path
    scale: float = 1.0

    @property
    def name(self) -> str:
        """A1111's name for it: the file name without its suffix (its ``<lora:NAME:...>``)."""
        return self.path.stem


@dataclass
class LoraLayer:
    """One layer of a LoRA: the model weight it changes and its factors (torch tensors)."""

    module: str  # the weight's module path in the component, e.g. "down_blocks.0.attentions.0.proj_in"
    layout: str = "kohya"  # or "peft": which spelling the file gave it in
    down: Any = None
    up: Any = None
    alpha: float | None = None

    @property
    def label(self) -> str:
        return f"{self.layout} {self.module}"


def parse_lora(text: str) -> LoraSpec:
    """``FILE[:SCALE]``: the scale after the last colon when it reads as a number (a path may hold colons)."""
    path, sep, tail = str(text).rpartition(":")
    scale = 1.0
    if sep and path and not tail.strip() and not Path(text).exists():
        raise ZoodipError(f"--lora {text}: the scale after ':' is empty (FILE or FILE:SCALE, e.g. my_style.safetensors:0.8)")
    if sep and path and _NUMBER.fullmatch(tail.strip()):
        text, scale = path, float(tail)
        _, colon, other = path.rpartition(":")
        if colon and _NUMBER.fullmatch(other.strip()) and not Path(path).exists():  # A1111's te:unet pair, say
            raise ZoodipError(f"--lora {path}:{tail}: two scales given; a LoRA is fused at one (FILE:SCALE, e.g. "
                              "my_style.safetensors:0.8)")
    if not math.isfinite(scale) or not 0 < abs(scale) <= MAX_SCALE:
        raise ZoodipError(f"--lora {text}: its scale {scale:g} is {'0, which fuses nothing' if scale == 0 else 'past +-%g' % MAX_SCALE}"
                          " (A1111's are about 0.5-1.5)")
    if not str(text).strip():
        raise ZoodipError("--lora is empty: give FILE or FILE:SCALE, e.g. my_style.safetensors:0.8")
    path = Path(text).expanduser().absolute()
    if not path.is_file():
        what = ("is a folder, not a file" if path.is_dir() else "is not a regular file" if path.exists()
                else "no such file")
        raise ZoodipError(f"--lora {text}: {what} (FILE or FILE:SCALE, e.g. my_style.safetensors:0.8)")
    if path.suffix.lower() != ".safetensors":
        raise ZoodipError(f"--lora {text}: only .safetensors LoRAs are read (a .pt/.ckpt file is a pickle, which can "
                          "run code when loaded): convert it to safetensors")
    if any(c in path.stem for c in ",:<>"):  # A1111's tags and Lora hashes could not name it
        raise ZoodipError(f"--lora {text}: its file name holds one of , : < > (A1111 names a LoRA by its file name, in "
                          "tags and in the images' Lora hashes): rename the file")
    return LoraSpec(path, scale)


def lora_specs(loras: Sequence[str | LoraSpec]) -> list[LoraSpec]:
    """``--lora`` arguments (``FILE[:SCALE]`` or ``LoraSpec``), each checked."""
    specs = [lora if isinstance(lora, LoraSpec) else parse_lora(lora) for lora in loras]
    for spec in specs:  # (safetensors' own error blamed the file: "the file may be damaged")
        check_utf8_path(spec.path, "--lora", "safetensors (which reads the LoRA)")
    files = [spec.path.resolve() for spec in specs]
    twice = next((spec for spec, file in zip(specs, files) if files.count(file) > 1), None)
    if twice is not None:  # A1111 would add them up; one entry per file keeps the export's record (and tags) plain
        raise ZoodipError(f"--lora {twice.path.name} is given twice: give it once, at the sum of the scales")
    names = [lora_name(spec.name) for spec in specs]  # as tags name them
    same = next((name for name in names if names.count(name) > 1), None)
    if same is not None:  # A1111 names a LoRA by its file name: its tags and Lora hashes could not tell them apart
        raise ZoodipError(f"two --lora files are named {same}: rename one (A1111 names a LoRA by its file name)")
    return specs


def lora_entries(specs: Sequence[LoraSpec]) -> dict[str, Any]:
    """The manifest source entry's ``loras`` (each file's name, SHA-256 and scale), or nothing without LoRAs."""
    from zoodip.integrity import file_sha256

    if not specs:
        return {}
    digests = [file_sha256(spec.path) for spec in specs]
    same = [spec.path.name for spec, digest in zip(specs, digests) if digests.count(digest) > 1]
    if same:  # a copy or a hard link of one file: it would be fused twice
        raise ZoodipError(f"--lora {same[0]} and {same[1]} are the same file (the same bytes): give it once, at the sum "
                          "of the scales")
    return {"loras": [{"file": spec.path.name, "sha256": digest, "scale": spec.scale}
                      for spec, digest in zip(specs, digests)]}


def read_lora(spec: LoraSpec) -> dict[str, dict[str, LoraLayer]]:
    """``{component: {layout and module: layer}}`` of one LoRA file, every key accounted for (module doc)."""
    import torch

    tensors, metadata = _read_file(spec)
    layers: dict[str, dict[str, LoraLayer]] = {component: {} for component in COMPONENTS}
    for key, tensor in tensors.items():
        kind = next((what for marker, what in OTHER_KINDS.items() if marker in key), None)
        if kind is not None:
            raise ZoodipError(f"--lora {spec.path.name} is {kind} ({key}), not a plain LoRA for SD1.x/2.x: zoodip fuses "
                              "plain low-rank LoRAs (kohya's or diffusers' layout) only")
        component, module, part, layout = _split_key(key)
        if component is None or not module.strip("._"):
            raise ZoodipError(f"--lora {spec.path.name}: {key!r} is no LoRA weight of a UNet or text encoder (kohya's "
                              "lora_unet_/lora_te_ or diffusers' unet./text_encoder. layouts are read)")
        alpha = part == "alpha"
        numeric = tensor.dtype != torch.bool and (tensor.numel() == 1 if alpha else tensor.is_floating_point())
        if not numeric or not bool(tensor.float().isfinite().all()):
            what = "is not one finite number" if alpha else "holds non-finite values (NaN or infinity) or no floats"
            raise ZoodipError(f"--lora {spec.path.name}: {key} {what}: the file is damaged")
        layer = layers[component].setdefault(f"{layout} {module}", LoraLayer(module, layout))
        if alpha:
            layer.alpha = float(tensor.float().reshape(-1)[0])
        else:
            setattr(layer, part, tensor.float())
    scalings = _peft_scalings(spec, metadata)
    for component, by_module in layers.items():
        for layer in by_module.values():
            other = by_module.get(f"{'peft' if layer.layout == 'kohya' else 'kohya'} {layer.module}")
            if other is not None and (layer.down is None or layer.up is None):
                raise ZoodipError(f"--lora {spec.path.name}: layer {layer.module} of the {component} has its factors in "
                                  "two layouts (kohya's and diffusers'): the file is damaged")
            if layer.layout == "peft" and scalings and component not in scalings:  # diffusers could not load it
                raise ZoodipError(f"--lora {spec.path.name}: its metadata gives no r or lora_alpha for the {component} "
                                  "layers it holds: the file is damaged")
            _complete(spec, component, layer, scalings.get(component) if layer.layout == "peft" else None)
    if not any(layers.values()):
        raise ZoodipError(f"--lora {spec.path.name} holds no LoRA layers")
    return layers


MAX_ALPHA_PER_RANK = 1000.0  # LoRAs use alpha / r from about 1/r to a few; far beyond, a damaged file


def _complete(spec: LoraSpec, component: str, layer: LoraLayer, peft: tuple[float, int] | None) -> None:
    """A layer checked to have both factors of one rank >= 1 and an alpha (diffusers' metadata's ``scaling * r``, where
    ``peft`` gives its ``(scaling, r)``; else its own; else ``r``: scaling 1) within reason."""
    where = f"--lora {spec.path.name}: layer {layer.module} of the {component}"
    if layer.down is None or layer.up is None:
        has = "an alpha but no factors" if layer.down is None and layer.up is None else "only one of its two factors"
        raise ZoodipError(f"{where} has {has}: the file is incomplete")
    if layer.down.dim() < 2 or layer.up.dim() < 2 or layer.down.shape[0] < 1 or layer.up.shape[1] != layer.down.shape[0]:
        raise ZoodipError(f"{where} has factors {list(layer.up.shape)} x {list(layer.down.shape)}, which are not two "
                          "matrices of one rank >= 1: the file is damaged")
    rank = layer.down.shape[0]
    if peft is not None:  # diffusers builds the layer from the metadata: its rank must be the factors', its alpha wins
        scaling, r = peft
        if r != rank or (layer.alpha is not None and not math.isclose(layer.alpha / rank, scaling, rel_tol=1e-6)):
            own = "" if layer.alpha is None else f" and alpha {layer.alpha:.3g}"
            raise ZoodipError(f"{where} has rank {rank}{own} where the file's metadata says rank {r} and alpha / r "
                              f"{scaling:.3g}: the file is damaged")
        layer.alpha = scaling * rank
    if layer.alpha is None:
        layer.alpha = float(rank)
    if not abs(layer.alpha) / rank <= MAX_ALPHA_PER_RANK:
        raise ZoodipError(f"{where} has alpha {layer.alpha:.3g} for rank {rank}, a factor of {layer.alpha / rank:.3g}: "
                          "far past what LoRAs use, the file is damaged")


def _read_file(spec: LoraSpec) -> tuple[dict[str, Any], dict[str, str]]:
    """The file's tensors (torch) and its safetensors metadata."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(spec.path), framework="pt") as handle:
            return {key: handle.get_tensor(key) for key in handle.keys()}, dict(handle.metadata() or {})
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ZoodipError(f"--lora {spec.path.name}: cannot read it ({first}): the file may be damaged or not a "
                          "safetensors file") from None


def _peft_scalings(spec: LoraSpec, metadata: dict[str, str]) -> dict[str, tuple[float, int]]:
    """``{component: (alpha / r, r)}`` from diffusers' ``lora_adapter_metadata`` (PEFT's ``lora_alpha``, its default
    8, and ``r`` by component; ``alpha / sqrt(r)`` with ``use_rslora``), which recent diffusers writes instead of
    alpha tensors."""
    text = metadata.get("lora_adapter_metadata")
    if not text:
        return {}
    try:
        meta = parse_json(text)
    except ValueError:
        meta = None
    if not isinstance(meta, dict):
        raise ZoodipError(f"--lora {spec.path.name}: its lora_adapter_metadata is not a JSON object: the file is damaged")
    scalings = {}
    for component in COMPONENTS:
        if not any(key.startswith(f"{component}.") for key in meta):
            continue
        r, alpha, rslora = (meta.get(f"{component}.{key}", default) for key, default in
                            (("r", None), ("lora_alpha", 8), ("use_rslora", False)))  # PEFT's LoraConfig defaults
        if meta.get(f"{component}.rank_pattern") or meta.get(f"{component}.alpha_pattern") or \
                meta.get(f"{component}.use_dora"):
            raise ZoodipError(f"--lora {spec.path.name}: its metadata gives the {component} per-layer ranks or alphas "
                              "or DoRA, which zoodip does not read: fuse it with diffusers and export that folder")
        if not (isinstance(r, int) and not isinstance(r, bool) and 0 < r < 1 << 20 and isinstance(alpha, (int, float))
                and not isinstance(alpha, bool) and 0 < alpha < 1e6 and isinstance(rslora, bool)):
            raise ZoodipError(f"--lora {spec.path.name}: its metadata's {component} r {_short(r)}, lora_alpha "
                              f"{_short(alpha)} and use_rslora {_short(rslora)} are not a rank, a positive number and "
                              "true/false: the file is damaged")
        scalings[component] = (alpha / (math.sqrt(r) if rslora else r), r)
    return scalings


def _short(value: object) -> str:
    """A metadata value as JSON writes it, cut short where it is long (a 400-digit number)."""
    text = json.dumps(value)
    return text if len(text) <= 24 else text[:20] + "..."


def _split_key(key: str) -> tuple[str | None, str, str, str]:
    """(component, module, part, layout) of a key, or (None, "", "", "") when it is neither layout's."""
    for component, (kohya, peft) in COMPONENTS.items():
        for prefix, parts, layout in ((kohya, KOHYA_PARTS, "kohya"), (peft, PEFT_PARTS, "peft")):
            if key.startswith(prefix):
                for suffix, part in parts.items():
                    if key.endswith(suffix):
                        return component, key[len(prefix):-len(suffix)], part, layout
    return None, "", "", ""


def fuse_into(module: Any, component: str, layers: dict[str, LoraLayer], spec: LoraSpec) -> None:
    """Add each layer's ``scale * alpha / r * up @ down`` to its weight in ``module`` (a torch model, in place)."""
    import torch

    weights = {name: sub.weight for name, sub in module.named_modules() if isinstance(getattr(sub, "weight", None),
                                                                                      torch.Tensor)}
    kohya_names = {name.replace(".", "_"): name for name in weights}
    placed: dict[str, str] = {}
    for layer in layers.values():
        name = layer.module if layer.module in weights else kohya_names.get(layer.module)
        if name is not None and placed.setdefault(name, layer.label) != layer.label:
            raise ZoodipError(f"--lora {spec.path.name} gives the {component} layer {name} twice ({placed[name]} and "
                              f"{layer.label}): the file is damaged (it would be fused twice)")
        if name is None and re.match(r"(input_blocks|middle_block|output_blocks)_", layer.module):
            raise ZoodipError(f"--lora {spec.path.name} names the UNet's layers in the original SD layout "
                              f"({layer.module}), which zoodip does not map: save it in kohya's diffusers-named layout")
        if name is None:
            raise ZoodipError(f"--lora {spec.path.name}: its {component} layer {layer.module} is not in this model: a "
                              "LoRA made for another model (an SD1.x LoRA fits SD1.x models, an SD2.x one SD2.x)")
        weight, down, up = weights[name], layer.down, layer.up
        if weight.dim() < 2:
            raise ZoodipError(f"--lora {spec.path.name}: its {component} layer {layer.module} is a {weight.dim()}-D "
                              "weight (a norm's or a bias), which no LoRA changes: the file is damaged or foreign")
        if not _fits(weight.shape, down.shape, up.shape):
            raise ZoodipError(f"--lora {spec.path.name}: its {component} layer {layer.module} has factors "
                              f"{list(up.shape)} x {list(down.shape)}, which do not make the model's weight "
                              f"{list(weight.shape)}: a LoRA made for another model")
        rank = down.shape[0]
        alpha = layer.alpha if layer.alpha is not None else float(rank)
        delta = (up.reshape(up.shape[0], rank) @ down.reshape(rank, -1)) * (spec.scale * alpha / rank)
        with torch.no_grad():
            weight += delta.reshape(weight.shape).to(weight.dtype)
        if not torch.isfinite(weight).all():
            raise ZoodipError(f"--lora {spec.path.name}: fused into {component} {layer.module} it gives non-finite "
                              "weights (its values or alpha are far too large): the file is damaged")


def _fits(weight: tuple[int, ...], down: tuple[int, ...], up: tuple[int, ...]) -> bool:
    """Whether ``up @ down`` makes a weight of shape ``weight``: ``up`` [out, r(, 1, 1)], ``down`` [r, in] or, for a
    convolution, [r, in, kh, kw] with the weight's kernel (a 1x1 convolution also takes [r, in])."""
    kernel, down_kernel, up_kernel = tuple(weight[2:]), tuple(down[2:]), tuple(up[2:])
    return (len(weight) >= 2 and len(down) >= 2 and len(up) >= 2 and up[0] == weight[0] and up[1] == down[0] and down[1] == weight[1]
            and all(k == 1 for k in up_kernel) and len(up) in (2, len(weight))
            and (down_kernel == kernel or (not down_kernel and all(k == 1 for k in kernel))))


def fuse_loras(source: Path, dest: Path, specs: Sequence[LoraSpec],
               log: Callable[[str], None] = lambda message: None) -> Path:
    """A diffusers folder at ``dest``: ``source`` with ``specs`` fused into its UNet and text encoder (saved in fp32,
    as the export reads them); its other parts are links to ``source``'s. Every file is read and every layer placed
    before anything is written."""
    from zoodip_export.onnx_export import load_text_encoder, load_unet
    from zoodip_export.weights import load_checked

    files = [read_lora(spec) for spec in specs]
    dest.mkdir(parents=True)
    loaders = {"unet": ("UNet", load_unet), "text_encoder": ("text encoder", load_text_encoder)}
    for part in sorted(os.listdir(source)):
        if part not in loaders:
            os.symlink(source / part, dest / part)
    for component, (what, loader) in loaders.items():
        touching = sum(1 for layers in files if layers[component])
        if not touching:
            os.symlink(source / component, dest / component)
            continue
        log(f"fusing {touching} LoRA(s) into the {what}")
        model = load_checked(what, loader, source / component)
        for spec, layers in zip(specs, files):
            fuse_into(model, component, layers[component], spec)
        model.save_pretrained(str(dest / component), safe_serialization=True)
        del model
    return dest

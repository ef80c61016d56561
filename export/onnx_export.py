"""Torch wrappers with zoodip's graph IO, their ONNX export, and low-memory ONNX file writing.

The four graphs and their IO names are fixed by docs/export-format.md. Export uses the TorchScript
exporter (``dynamo=False``, opset 17): it needs no onnxscript and handles diffusers' UNet as is.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper

OPSET = 17
# Above this the weights go to one "<file>.data" next to the graph (protobuf cannot hold more than
# 2 GiB anyway). 64 MB, not ~2 GB: onnxruntime memory-maps page-aligned external data, so the weights
# are read in place (clean, file-backed pages) instead of being parsed into a protobuf and then copied
# into tensors, which lowers the forward's peak RSS (measured in benchmarks/README.md).
EXTERNAL_DATA_THRESHOLD = 64_000_000
# Tensors smaller than this stay inside the graph even when the rest goes external (as onnx does).
EXTERNAL_MIN_BYTES = 1024
# Large external tensors start at page boundaries, so onnxruntime can memory-map them.
EXTERNAL_ALIGNMENT = 4096
EXTERNAL_ALIGN_MIN_BYTES = 1 << 20


# --- torch wrappers -----------------------------------------------------------------------------


class TextEncoderGraph(torch.nn.Module):
    """CLIP's text transformer from token embeddings: ``inputs_embeds`` [B,L,H] -> ``last_hidden_state``
    (with ``clip_skip_states``: and ``clip_skip_states`` [B, N-1, L, H], as the export writes it).

    Taking the token embeddings (not ids) as input is what lets the SDK put any vector in the
    placeholder's row. transformers' ``CLIPTextTransformer.forward`` insists on ``input_ids``, so
    this rebuilds it from its parts: + position embeddings, CLIP's causal mask, encoder, final norm.

    ``clip_skip_states[:, k - 1]`` is the state diffusers' ``clip_skip=k`` conditions on: the output of
    the k-th layer from the end of the N layers, through the final norm (A1111's "Clip skip" k + 1).
    """

    def __init__(self, text_model: torch.nn.Module, max_length: int, clip_skip_states: bool = False) -> None:
        super().__init__()
        self.clip_skip_states = clip_skip_states
        self.encoder = text_model.encoder
        self.final_layer_norm = text_model.final_layer_norm
        positions = text_model.embeddings.position_embedding.weight[:max_length].detach()
        self.register_buffer("position_embeds", positions.unsqueeze(0).clone(), persistent=False)
        # Additive mask [1,1,L,L]: each token attends to itself and earlier tokens only.
        # finfo.min (as CLIP uses) so the masked logits vanish exactly after softmax.
        mask = torch.full((max_length, max_length), torch.finfo(torch.float32).min).triu(1)
        self.register_buffer("causal_mask", mask[None, None], persistent=False)

    def forward(self, inputs_embeds: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        hidden = inputs_embeds + self.position_embeds
        if not self.clip_skip_states:
            return self.final_layer_norm(self.encoder(inputs_embeds=hidden, attention_mask=None,
                                                      causal_attention_mask=self.causal_mask)[0])
        layers = self.encoder(inputs_embeds=hidden, attention_mask=None, causal_attention_mask=self.causal_mask,
                              output_hidden_states=True).hidden_states  # the embeddings, then each layer's output
        skipped = [self.final_layer_norm(layers[-(k + 1)]) for k in range(1, len(layers) - 1)]
        return self.final_layer_norm(layers[-1]), torch.stack(skipped, dim=1)


# Self-attention at the UNet's finest level is the largest activation of a forward pass: at 512 px
# SD1.5 has 4096 latent tokens, so full scores are heads x 4096 x 4096 fp32 = 512 MB per image (and
# Softmax writes a second buffer of that size). The export splits the QUERY rows of those attention
# layers into this many chunks: each chunk's softmax is over all keys, so the result is the same
# function, but only 1/ATTENTION_QUERY_CHUNKS of the scores exists at a time (16 MiB at 512 px with
# 32 chunks; the next level, 1024 tokens, gets a quarter as many). 0 or 1: no chunking.
ATTENTION_QUERY_CHUNKS = 32


class QueryChunkedAttention:
    """A diffusers attention processor computing softmax(q k^T / sqrt(d)) v in query-row chunks.

    The chunk bounds are computed from the traced sequence length (``Shape``/``Div`` ops in the
    graph), so the graph stays valid for any resolution; the loop is unrolled into ``chunks`` Slice
    -> MatMul -> Softmax -> MatMul branches with no constants beyond a few scalars. Only the plain
    attention of SD1.x/2.x UNets (no masks, spatial/group norms or residual in the processor) is
    handled; anything else is delegated to the module's original processor.
    """

    def __init__(self, chunks: int, fallback: Any) -> None:
        self.chunks = int(chunks)
        self.fallback = fallback

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None, *args: Any,
                 **kwargs: Any) -> torch.Tensor:
        plain = (attention_mask is None and hidden_states.ndim == 3 and attn.spatial_norm is None
                 and attn.group_norm is None and getattr(attn, "norm_q", None) is None
                 and getattr(attn, "norm_k", None) is None and not attn.residual_connection)
        if not plain:
            return self.fallback(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        batch = hidden_states.shape[0]
        query, key, value = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)
        head_dim = key.shape[-1] // attn.heads

        def heads(x: torch.Tensor) -> torch.Tensor:  # [B, L, h*d] -> [B, h, L, d]
            return x.view(batch, -1, attn.heads, head_dim).transpose(1, 2)

        query, key, value = heads(query), heads(key), heads(value)
        key_t = key.transpose(-1, -2) * attn.scale
        length = query.shape[2]
        outputs = []
        for index in range(self.chunks):
            start, end = (length * index) // self.chunks, (length * (index + 1)) // self.chunks
            scores = torch.matmul(query[:, :, start:end], key_t)
            outputs.append(torch.matmul(scores.softmax(dim=-1), value))
        out = torch.cat(outputs, dim=2).transpose(1, 2).reshape(batch, -1, attn.heads * head_dim)
        out = attn.to_out[1](attn.to_out[0](out))
        return out / attn.rescale_output_factor


def chunk_finest_self_attention(unet: torch.nn.Module, chunks: int) -> int:
    """Give the self-attention layers (``attn1``) of the UNet's two finest levels a :class:`QueryChunkedAttention`.

    The finest level (first down block, last up block: the full latent resolution) gets ``chunks``
    chunks; the next level has 4x fewer tokens, so 4x fewer chunks give it the same score size
    (``chunks // 4``, if at least 2). Coarser levels have 16x+ fewer tokens and small scores.
    Returns the number of layers changed.
    """
    if chunks <= 1:
        return 0
    levels = [([unet.down_blocks[0], unet.up_blocks[-1]], chunks)]
    if len(unet.down_blocks) > 1 and chunks // 4 >= 2:
        levels.append(([unet.down_blocks[1], unet.up_blocks[-2]], chunks // 4))
    changed = 0
    for blocks, count in levels:
        for block in blocks:
            for name, module in block.named_modules():
                if name.endswith("attn1") and hasattr(module, "set_processor"):
                    module.set_processor(QueryChunkedAttention(count, module.processor))
                    changed += 1
    return changed


def follow_skip_sizes(unet: torch.nn.Module) -> bool:
    """Make ``unet`` trace its upsamplings to its skip connections' sizes; False where it has no such switch.

    diffusers' UNet doubles its latents at each upsampling, except where a side is not a multiple of
    2^num_upsamplers: then it resizes each upsampling to the size of the skip connection it meets (a down
    block's output, rounded up at odd sizes), so every side runs. That test is Python, fixed at trace time,
    and at SD's 64x64 it takes the doubling path, whose graph fails at any side not a multiple of 64 px.
    Claiming more upsamplers than any side could divide by makes the test always true: the traced graph
    reads its resize sizes from the skip connections, which at exact sides are the doubled sizes (same
    result, nearest-neighbour either way).
    """
    if not isinstance(getattr(unet, "num_upsamplers", None), int):
        return False
    unet.num_upsamplers = 62  # 2^62: past any latent side, so no side is a multiple of it
    return True


class UNetGraph(torch.nn.Module):
    """(sample, timestep [B] float32, encoder_hidden_states) -> noise_pred (or v, per prediction_type).

    The finest level's self-attention is exported query-chunked (see :data:`ATTENTION_QUERY_CHUNKS`).
    """

    def __init__(self, unet: torch.nn.Module, attention_query_chunks: int | None = None) -> None:
        super().__init__()
        self.unet = unet
        chunks = ATTENTION_QUERY_CHUNKS if attention_query_chunks is None else attention_query_chunks
        self.attention_query_chunks = chunk_finest_self_attention(unet, chunks) and chunks
        self.upsampling_follows_skips = follow_skip_sizes(unet)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        return self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states, return_dict=False)[0]


class VaeEncoderGraph(torch.nn.Module):
    """Image in [-1,1] -> latent distribution parameters (mean and logvar on channels), unscaled."""

    def __init__(self, vae: torch.nn.Module) -> None:
        super().__init__()
        self.encoder = vae.encoder
        self.quant_conv = vae.quant_conv

    def forward(self, sample: torch.Tensor) -> torch.Tensor:
        moments = self.encoder(sample)
        return moments if self.quant_conv is None else self.quant_conv(moments)


class VaeDecoderGraph(torch.nn.Module):
    """Unscaled latent -> image in ~[-1,1] (the SDK divides by scaling_factor before calling it)."""

    def __init__(self, vae: torch.nn.Module) -> None:
        super().__init__()
        self.decoder = vae.decoder
        self.post_quant_conv = vae.post_quant_conv

    def forward(self, latent_sample: torch.Tensor) -> torch.Tensor:
        if self.post_quant_conv is not None:
            latent_sample = self.post_quant_conv(latent_sample)
        return self.decoder(latent_sample)


# --- graph specs ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class GraphSpec:
    """One graph's file name, IO names and which axes are dynamic (axis -> symbolic name)."""

    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    dynamic_axes: dict[str, dict[int, str]] = field(default_factory=dict)

    @property
    def file(self) -> str:
        return f"{self.name}.onnx"


_LATENT_AXES = {0: "batch", 2: "latent_height", 3: "latent_width"}
_IMAGE_AXES = {0: "batch", 2: "image_height", 3: "image_width"}

GRAPH_SPECS: dict[str, GraphSpec] = {
    "text_encoder": GraphSpec(
        "text_encoder", ("inputs_embeds",), ("last_hidden_state", "clip_skip_states"),
        {"inputs_embeds": {0: "batch"}, "last_hidden_state": {0: "batch"}, "clip_skip_states": {0: "batch"}},
    ),
    # The text states' length is free: A1111's long prompts are several 77-token encodings end to end.
    "unet": GraphSpec(
        "unet", ("sample", "timestep", "encoder_hidden_states"), ("noise_pred",),
        {"sample": _LATENT_AXES, "timestep": {0: "batch"}, "encoder_hidden_states": {0: "batch", 1: "text_length"},
         "noise_pred": _LATENT_AXES},
    ),
    "vae_encoder": GraphSpec(
        "vae_encoder", ("sample",), ("latent_parameters",),
        {"sample": _IMAGE_AXES, "latent_parameters": _LATENT_AXES},
    ),
    "vae_decoder": GraphSpec(
        "vae_decoder", ("latent_sample",), ("sample",),
        {"latent_sample": _LATENT_AXES, "sample": _IMAGE_AXES},
    ),
}
GRAPH_NAMES: tuple[str, ...] = tuple(GRAPH_SPECS)


def export_graph(module: torch.nn.Module, spec: GraphSpec, example_inputs: tuple[torch.Tensor, ...], path: Path) -> Path:
    """Trace ``module`` to ``path`` (ONNX, opset 17, dynamic axes of ``spec``).

    A graph over 2 GiB is written by torch with one external file per tensor next to ``path``;
    put each export in its own folder and let :func:`write_onnx` gather them afterwards.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    module.eval()
    with torch.no_grad():
        torch.onnx.export(
            module,
            example_inputs,
            str(path),  # a path (not a file object) lets torch spill >2 GiB weights to external files
            input_names=list(spec.inputs),
            output_names=list(spec.outputs),
            dynamic_axes={k: dict(v) for k, v in spec.dynamic_axes.items()},
            opset_version=OPSET,
            do_constant_folding=True,  # folds the Linear weight transposes into plain [K,N] initializers
            dynamo=False,
        )
    return path


# --- loading the diffusers components ----------------------------------------------------------


def _from_pretrained(cls: Any, folder: Path, **kwargs: Any) -> Any:
    """``cls.from_pretrained`` in float32; falls back to an fp16-only ``variant`` checkpoint. Refuses weights that leave
    some of the config's tensors unfilled: diffusers and transformers give those their random initial values, warning
    only in a log the export keeps quiet."""
    try:
        model, info = cls.from_pretrained(str(folder), torch_dtype=torch.float32, output_loading_info=True, **kwargs)
    except (OSError, EnvironmentError):
        if not any(".fp16." in p.name for p in Path(folder).iterdir()):
            raise
        model, info = cls.from_pretrained(str(folder), variant="fp16", output_loading_info=True, **kwargs)
    missing = sorted(info.get("missing_keys") or ())
    if missing:
        from zoodip.errors import ZoodipError

        shown = Path(folder).resolve()
        raise ZoodipError(f"the weights in {shown} lack {len(missing)} of the tensors of the model its config.json "
                          f"describes (e.g. {missing[0]}), which would be left random: the config and the weights are "
                          f"not one model's, or the weights are incomplete: copy the model's {shown.name} folder again")
    return model.float().eval().requires_grad_(False)


def load_text_encoder(folder: Path) -> torch.nn.Module:
    """CLIPTextModel with eager attention (plain MatMul/Softmax ops, which trace cleanly)."""
    from transformers import CLIPTextModel

    return _from_pretrained(CLIPTextModel, folder, attn_implementation="eager")


def _diffusers_kwargs() -> dict[str, Any]:
    # Without `accelerate`, diffusers falls back to a plain load anyway, but warns on every call.
    return {} if importlib.util.find_spec("accelerate") else {"low_cpu_mem_usage": False}


def load_unet(folder: Path) -> torch.nn.Module:
    from diffusers import UNet2DConditionModel

    return _from_pretrained(UNet2DConditionModel, folder, **_diffusers_kwargs())


def load_vae(folder: Path) -> torch.nn.Module:
    from diffusers import AutoencoderKL

    return _from_pretrained(AutoencoderKL, folder, **_diffusers_kwargs())


def example_inputs(name: str, model_info: dict[str, Any], *, batch: int = 2, latent_size: int | None = None,
                   seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Inputs to trace ``name`` with. Batch 2 (not 1) so no size-1 broadcast gets baked into the graph."""
    generator = torch.Generator().manual_seed(seed)
    side = int(latent_size or model_info["sample_size"])
    channels = int(model_info["latent_channels"])
    image_side = side * int(model_info["vae_scale_factor"])
    if name == "text_encoder":
        return (torch.randn(batch, model_info["max_length"], model_info["hidden_size"], generator=generator),)
    if name == "unet":
        return (
            torch.randn(batch, channels, side, side, generator=generator),
            torch.linspace(999.0, 1.0, batch),
            torch.randn(batch, model_info["max_length"], model_info["cross_attention_dim"], generator=generator),
        )
    if name == "vae_encoder":
        return (torch.rand(batch, 3, image_side, image_side, generator=generator) * 2 - 1,)
    if name == "vae_decoder":
        return (torch.randn(batch, channels, side, side, generator=generator),)
    raise KeyError(name)


# --- ONNX files with (optionally) one external data file ----------------------------------------


def load_graph(path: Path) -> onnx.ModelProto:
    """The graph without its external weights (initializers keep pointing at their files)."""
    return onnx.load(str(path), load_external_data=False)


def initializer_array(tensor: onnx.TensorProto, base_dir: Path) -> np.ndarray:
    """One initializer as a numpy array, read from the graph or from its external file."""
    return numpy_helper.to_array(tensor, base_dir=str(base_dir))


def _is_external(tensor: onnx.TensorProto) -> bool:
    return tensor.HasField("data_location") and tensor.data_location == onnx.TensorProto.EXTERNAL


def _external_info(tensor: onnx.TensorProto) -> dict[str, str]:
    return {entry.key: entry.value for entry in tensor.external_data}


def tensor_nbytes(tensor: onnx.TensorProto) -> int:
    """Size of an initializer's data, inline or external (from its shape: torch's external
    entries carry no length)."""
    itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
    return int(np.prod(tensor.dims, dtype=np.int64)) * itemsize


def _raw_bytes(tensor: onnx.TensorProto, base_dir: Path) -> bytes:
    """The tensor's little-endian raw bytes (what raw_data or an external file holds)."""
    if _is_external(tensor):
        info = _external_info(tensor)
        with open(base_dir / info["location"], "rb") as handle:
            handle.seek(int(info.get("offset", "0")))
            length = info.get("length")
            return handle.read(int(length)) if length is not None else handle.read()
    if tensor.raw_data:
        return tensor.raw_data
    return initializer_array(tensor, base_dir).tobytes()


_TYPED_DATA_FIELDS = ("float_data", "int32_data", "string_data", "int64_data", "double_data", "uint64_data")


def _set_inline(tensor: onnx.TensorProto, raw: bytes) -> None:
    del tensor.external_data[:]
    tensor.data_location = onnx.TensorProto.DEFAULT
    for name in _TYPED_DATA_FIELDS:
        tensor.ClearField(name)
    tensor.raw_data = raw


def _set_external(tensor: onnx.TensorProto, location: str, offset: int, length: int) -> None:
    tensor.ClearField("raw_data")
    for name in _TYPED_DATA_FIELDS:
        tensor.ClearField(name)
    del tensor.external_data[:]
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value


def write_onnx(model: onnx.ModelProto, source_dir: Path, dest: Path, *, external: bool | None = None) -> str | None:
    """Save ``model`` to ``dest``, weights inline or all in ``dest.name + '.data'``.

    ``model``'s initializers may point into external files under ``source_dir``; they are copied
    one tensor at a time, so neither the weights nor a serialized copy of them are ever held whole
    in memory. ``external=None`` decides by size (over ~1.8 GB -> external). Returns the data
    file's name, or None. ``model`` is modified (its initializers end up pointing at ``dest``'s data).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    initializers = list(model.graph.initializer)
    if external is None:
        external = sum(tensor_nbytes(t) for t in initializers) > EXTERNAL_DATA_THRESHOLD
    data_name = dest.name + ".data"
    data_path = dest.parent / data_name
    if data_path.exists():
        data_path.unlink()

    if not external:
        for tensor in initializers:
            if _is_external(tensor):
                _set_inline(tensor, _raw_bytes(tensor, source_dir))
        onnx.save_model(model, str(dest))
        return None

    with open(data_path, "wb") as data_file:
        for tensor in initializers:
            if tensor_nbytes(tensor) < EXTERNAL_MIN_BYTES:
                if _is_external(tensor):  # small external tensors come back inline
                    _set_inline(tensor, _raw_bytes(tensor, source_dir))
                continue
            raw = _raw_bytes(tensor, source_dir)
            alignment = EXTERNAL_ALIGNMENT if len(raw) >= EXTERNAL_ALIGN_MIN_BYTES else 64
            padding = -data_file.tell() % alignment
            data_file.write(b"\0" * padding)
            offset = data_file.tell()
            data_file.write(raw)
            # Point the tensor at the file right away: the proto must stay small while we go.
            _set_external(tensor, data_name, offset, len(raw))
            del raw
    onnx.save_model(model, str(dest))
    return data_name

"""How an image is decoded within a memory budget: whole, or in overlapping tiles.

Under a budget ``generate`` holds one graph at a time (text encoder, then UNet, then VAE decoder),
so the decode has the whole budget to itself. What it needs grows with the image's pixels: Stable
Diffusion's VAE decoder (1.x, 2.x and XL alike: block widths 128, 256, 512, 512) upsamples
256-channel feature maps to full resolution, and its first full-resolution ResNet block holds the
upsampled map, its group normalization and its activation at once: three fp32 maps of 256
channels per pixel. Its mid-block self-attention over all latent positions comes on top, as one score matrix
(``_attention_phase``). A model with a narrower VAE needs less, so the estimate errs towards
tiling. The estimate leaves out what the process holds anyway (Python, NumPy, onnxruntime), as the
weight check of ``RuntimeOptions.memory_budget_mb`` does; ``benchmarks/memory.py`` measures both. The decoder's
maps are ``malloc``'s (no arena), and its session fixes the C heap's threshold, budget or not
(``heap.return_large_blocks``): freed, they go back to the system, so what it holds follows the live maps counted here.

The plan is made before the first denoising step, so a size whose decode cannot fit is refused
before minutes of UNet work, and tiles are used only where the whole image would not fit. The UNet's own phase
(``unet_bytes``: its weights and its activations, which grow with the image) is checked there too.

Without a budget no graph is closed: the text encoder and UNet stay open beside the decoder and the image is
decoded whole, so a size is refused where that estimate plus their weights exceeds the machine's memory (the
attention floor of ``limits`` alone let sizes pass that the decode then ran out of memory on). The UNet's
activations are not counted: its last run of a generation returns onnxruntime's arena to the system, which would
otherwise keep them beside the decode (``generate``; benchmarks/README.md, "The decode estimate without a budget").
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import ZoodipError
from .image_side import side_multiple
from .limits import attention_bytes, available_bytes, gigabytes

_FLOAT32 = 4
FULL_RESOLUTION_CHANNELS = 256  # SD's VAE decoder: block_out_channels[1], upsampled to full resolution
ENCODER_FULL_RESOLUTION_CHANNELS = 128  # SD's VAE encoder: block_out_channels[0], its full-resolution blocks
# The encoder's full-resolution maps alive at once, as its memory run on the SD1.5 architecture counted them (besides
# its weights and attention), rounded up with one more for margin (benchmarks/README.md, "Image-to-image under the
# same budget").
ENCODER_LIVE_FULL_RESOLUTION_MAPS = 5
LIVE_FULL_RESOLUTION_MAPS = 3  # that map, its GroupNorm and its SiLU output, alive together
BLEND_FLOATS_PER_PIXEL = 4  # a tiled decode's accumulators: RGB sums and the weight
OVERLAP_FRACTION = 4  # tiles overlap by a quarter of their side (diffusers' tiled VAE does the same)
MIN_TILE = 8  # latents a side: the smallest tile whose overlap (2 latents, 16 px) still leaves a seam room to blend


@dataclass(frozen=True)
class DecodePlan:
    """How one image's latents are decoded: ``tile`` latents a side (None: whole), neighbours sharing
    ``overlap`` latents, and the estimate of the bytes it needs."""

    tile: int | None
    overlap: int
    need_bytes: int

    @property
    def tiled(self) -> bool:
        return self.tile is not None


def graph_weight_bytes(model: Any, graph: str) -> int:
    """A graph's file bytes (its weights), or 0 for a model that does not say."""
    weights = getattr(model, "weights_bytes", None)
    return int(weights((graph,))) if callable(weights) else 0


def _attention_phase(maps: int, latent_h: int, latent_w: int) -> int:
    """The full-resolution ``maps`` and the mid-block attention, estimated as the measured runs calibrated them: the
    maps plus one score matrix. The attention's scores and softmax (``limits.attention_bytes``) are not alive with
    the maps, and that sum holds them while one matrix is smaller than the maps; past that (sides of thousands of px)
    the two matrices set the need."""
    both = attention_bytes(latent_h, latent_w)
    return max(maps + both // 2, both)


def decode_bytes(model: Any, latent_h: int, latent_w: int, whole_h: int | None = None,
                 whole_w: int | None = None) -> int:
    """Estimated bytes to decode a ``latent_h`` x ``latent_w`` tile of a ``whole_h`` x ``whole_w`` latent image
    (default: the tile is the whole image, and nothing is blended)."""
    factor = int(model.vae_scale_factor)
    pixels = latent_h * latent_w * factor * factor
    maps = LIVE_FULL_RESOLUTION_MAPS * FULL_RESOLUTION_CHANNELS * _FLOAT32 * pixels
    need = graph_weight_bytes(model, "vae_decoder") + _attention_phase(maps, latent_h, latent_w)
    if whole_h is not None and whole_w is not None:
        need += BLEND_FLOATS_PER_PIXEL * _FLOAT32 * whole_h * whole_w * factor * factor
    return need


def plan_decode(model: Any, latent_h: int, latent_w: int, budget_mb: int | None) -> DecodePlan:
    """The whole image if its estimate fits the budget (or there is none), else the largest square tiles that fit.

    Raises ZoodipError, naming the budget that would do, when even ``MIN_TILE`` tiles do not fit.
    """
    whole = decode_bytes(model, latent_h, latent_w)
    if budget_mb is None:
        check_unbudgeted_decode(model, latent_h, latent_w)
        return DecodePlan(None, 0, whole)
    budget = int(budget_mb) << 20
    if whole <= budget:
        return DecodePlan(None, 0, whole)
    for tile in range(max(latent_h, latent_w) - 1, MIN_TILE - 1, -1):
        need = decode_bytes(model, min(tile, latent_h), min(tile, latent_w), latent_h, latent_w)
        if need <= budget:
            return DecodePlan(tile, tile // OVERLAP_FRACTION, need)
    factor = int(model.vae_scale_factor)
    smallest = decode_bytes(model, min(MIN_TILE, latent_h), min(MIN_TILE, latent_w), latent_h, latent_w)
    raise ZoodipError(
        f"decoding a {latent_w * factor}x{latent_h * factor} image needs about {-(-smallest // (1 << 20))} MB even in "
        f"tiles of {MIN_TILE * factor} px, more than the memory_budget_mb of {budget_mb} MB: raise the budget "
        "or make a smaller image")


# Without a budget these stay open while the image is decoded (``generate`` releases them only under one).
OPEN_DURING_DECODE = ("text_encoder", "unet")


def unbudgeted_decode_bytes(model: Any, latent_h: int, latent_w: int) -> int:
    """Estimated bytes of a whole decode without a budget: ``decode_bytes`` plus the weights of the graphs still open."""
    return decode_bytes(model, latent_h, latent_w) + sum(graph_weight_bytes(model, g) for g in OPEN_DURING_DECODE)


def check_unbudgeted_decode(model: Any, latent_h: int, latent_w: int) -> None:
    """Refuse a size whose whole decode without a budget exceeds this machine's memory (one line, with the largest
    square side that fits); an OS that does not say its memory is not checked."""
    available, where = available_bytes(None)
    need = unbudgeted_decode_bytes(model, latent_h, latent_w)
    if available is None or need <= available:
        return
    factor = int(model.vae_scale_factor)
    step = max(1, side_multiple(factor) // factor)  # latents a side: the image sides zoodip takes
    side = max(latent_h, latent_w) // step * step
    while side > 0 and unbudgeted_decode_bytes(model, side, side) > available:
        side -= step
    raise ZoodipError(
        f"decoding a {latent_w * factor}x{latent_h * factor} image whole needs about {gigabytes(need)} (without "
        f"memory_budget_mb every graph stays loaded), more than {where}: use at most {side * factor} px, or give "
        "memory_budget_mb=MB to decode in tiles")


# A start photo at its decoded size (PIL holds RGB in 4 bytes a pixel): decoded, and one converted copy. Inpainting
# only the masked area pastes into the whole photo: then it holds the photo read again and its array (RGB), and per
# image the canvas pasted into and the image made of it.
PHOTO_BYTES_PER_PIXEL = 2 * 4
PASTE_BYTES_PER_PIXEL = 4 + 3
PASTE_BYTES_PER_PIXEL_PER_IMAGE = 3 + 4


def check_photo(size: tuple[int, int], num_images: int, pasted_whole: bool, budget_mb: int | None) -> int:
    """Estimated bytes of a start photo decoded at ``size`` (and, ``pasted_whole``, of pasting ``num_images`` images
    into it whole), refused over the budget before it is decoded."""
    per_pixel = PHOTO_BYTES_PER_PIXEL
    if pasted_whole:
        per_pixel = max(per_pixel, PASTE_BYTES_PER_PIXEL + PASTE_BYTES_PER_PIXEL_PER_IMAGE * int(num_images))
    need = size[0] * size[1] * per_pixel
    if budget_mb is not None and need > int(budget_mb) << 20:
        doing = "decoding and pasting into" if pasted_whole else "decoding"
        raise ZoodipError(
            f"{doing} the whole {size[0]}x{size[1]} start photo takes about {-(-need // (1 << 20))} MB, more than "
            f"the memory_budget_mb of {budget_mb} MB: make the photo smaller or raise the budget")
    return need


def check_encode(model: Any, latent_h: int, latent_w: int, budget_mb: int | None) -> int:
    """Estimated bytes to encode an image-to-image start (whole: the encoder is not tiled), refused over the budget.

    The same terms as ``decode_bytes``: the encoder's weights, live maps of its full-resolution width per pixel (as
    many as measured, plus one), and the mid-block attention over all latent positions.
    """
    factor = int(model.vae_scale_factor)
    pixels = latent_h * latent_w * factor * factor
    maps = ENCODER_LIVE_FULL_RESOLUTION_MAPS * ENCODER_FULL_RESOLUTION_CHANNELS * _FLOAT32 * pixels
    need = graph_weight_bytes(model, "vae_encoder") + _attention_phase(maps, latent_h, latent_w)
    if budget_mb is not None and need > int(budget_mb) << 20:
        raise ZoodipError(
            f"encoding a {latent_w * factor}x{latent_h * factor} start image needs about {-(-need // (1 << 20))} MB (the "
            f"VAE encoder is not tiled), more than the memory_budget_mb of {budget_mb} MB: make a smaller image "
            "(width=W, height=H) or raise the budget")
    return need


def memory_budget_mb(model: Any) -> int | None:
    """The budget a model was loaded with (``RuntimeOptions.memory_budget_mb``), or None."""
    return getattr(getattr(model, "options", None), "memory_budget_mb", None)



# The UNet under a budget runs one image and one guidance branch a pass. Its activations grow with the latents and
# sit in onnxruntime's CPU arena, which keeps every page it has touched for the session's life: buffers freed by one
# layer serve only smaller ones later, so the largest phases' buffers add up rather than take turns. Counted as for
# Stable Diffusion 1.x/2.x (block widths 320, 640, 1280, 1280), so a narrower UNet needs less and the estimate errs
# towards refusing; the terms (besides the weights):
UNET_FINEST_CHANNELS = 320  # block_out_channels[0]: the width at the full latent resolution
UNET_FINEST_HEADS = 8  # SD1.x's heads there (SD2.x has 5 of 64 channels: fewer scores)
# The exporter's default query chunks of that level's self-attention (export/onnx_export.py, ATTENTION_QUERY_CHUNKS):
# only one chunk's scores exist at a time (an export patched to fewer, as benchmarks/memory.py's q0 ones, needs more).
UNET_ATTENTION_QUERY_CHUNKS = 32
# The finest level's feed-forward (GEGLU, four times the width): its projection (two halves' worth, 8 maps of the
# level's width), the two halves (4 + 4), the GELU of the gate (4) and the product (4), alive in the arena together.
UNET_LIVE_FINEST_MAPS = 8 + 4 + 4 + 4 + 4
# The weights are dequantized to fp32 as each layer runs: the largest copy is SD's widest 3x3 convolution (the
# first up block's 2 x 1280 channels of skip and input to 1280), never more than every weight in fp32 (8 bytes a
# weight byte, for 4-bit weights).
UNET_LARGEST_LAYER_WEIGHTS = 2 * 1280 * 1280 * 3 * 3
FP32_PER_WEIGHT_BYTE = 8


def unet_attention_bytes(latent_h: int, latent_w: int, chunks: int = UNET_ATTENTION_QUERY_CHUNKS) -> int:
    """Bytes of one query chunk's scores and their softmax (written beside them, as ``limits.attention_bytes`` counts)
    in the UNet's finest self-attention: ``UNET_FINEST_HEADS`` heads of ceil(positions / ``chunks``) x positions."""
    positions = int(latent_h) * int(latent_w)
    rows = -(-positions // max(1, int(chunks)))
    return 2 * UNET_FINEST_HEADS * rows * positions * _FLOAT32


def unet_bytes(model: Any, latent_h: int, latent_w: int, chunks: int = UNET_ATTENTION_QUERY_CHUNKS,
               batch: int = 1) -> int:
    """Estimated bytes of the UNet's phase of ``generate`` under a budget at ``latent_h`` x ``latent_w`` latents: its
    weights, the largest dequantized weight copy, the finest level's live feed-forward maps and one attention chunk,
    the last two for each of a call's ``batch`` images. Like the other estimates it leaves out what the process holds
    anyway (Python, NumPy, onnxruntime)."""
    weights = graph_weight_bytes(model, "unet")
    copy = min(UNET_LARGEST_LAYER_WEIGHTS * _FLOAT32, FP32_PER_WEIGHT_BYTE * weights)
    maps = UNET_LIVE_FINEST_MAPS * UNET_FINEST_CHANNELS * _FLOAT32 * int(latent_h) * int(latent_w)
    return weights + copy + int(batch) * (maps + unet_attention_bytes(latent_h, latent_w, chunks))


def check_unet(model: Any, latent_h: int, latent_w: int, budget_mb: int | None) -> int:
    """``unet_bytes`` at this size, refused over the budget (one line, with the budget that holds) before the first
    step: the weight check of ``RuntimeOptions.memory_budget_mb`` counts the weights alone, and at large images the
    activations alone take hundreds of MB more."""
    need = unet_bytes(model, latent_h, latent_w)
    if budget_mb is not None and need > int(budget_mb) << 20:
        factor = int(model.vae_scale_factor)
        raise ZoodipError(
            f"the UNet at a {latent_w * factor}x{latent_h * factor} image needs about {-(-need // (1 << 20))} MB (its "
            f"weights and its activations at {latent_w}x{latent_h} latents), more than the memory_budget_mb of "
            f"{budget_mb} MB: raise the budget to at least that, or make a smaller image")
    return need


# Training keeps the text encoder (CLIP) open beside the UNet and encodes a step's candidates in one call. Besides its
# weights it holds its widest layer dequantized (the MLP's 4d x d matrix in fp32, d its width) and, per candidate,
# every layer's states (the clip-skip output and the last), one MLP's two 4d-wide maps (projection and GELU) and one
# layer's attention scores and softmax (heads of 64 channels), all over its max_length tokens.
TEXT_MLP_WIDTH = 4
TEXT_HEAD_CHANNELS = 64


def text_encoder_bytes(model: Any, candidates: int = 1) -> int:
    """Estimated bytes of the open text encoder encoding ``candidates`` prompts at once: its weights, its widest layer's
    fp32 copy and each candidate's states and maps (a model that does not say its width counts its weights alone)."""
    weights = graph_weight_bytes(model, "text_encoder")
    width, tokens = int(getattr(model, "hidden_size", 0)), int(getattr(model, "max_length", 0))
    layers = int(getattr(model, "clip_skip_layers", 0)) + 1
    copy = min(TEXT_MLP_WIDTH * width * width * _FLOAT32, FP32_PER_WEIGHT_BYTE * weights)
    per_candidate = (layers * tokens * width + 2 * TEXT_MLP_WIDTH * tokens * width
                     + 2 * (width // TEXT_HEAD_CHANNELS) * tokens * tokens) * _FLOAT32
    return weights + copy + int(candidates) * per_candidate


def training_bytes(model: Any, latent_h: int, latent_w: int, candidates: int = 1, batched: bool = False) -> int:
    """Estimated bytes of ``personalize``'s steps at ``latent_h`` x ``latent_w`` latents: the open text encoder with a
    step's ``candidates`` (``text_encoder_bytes``) beside ``unet_bytes`` at the batch of the trainer's UNet calls (all
    the candidates where the loss is ``batched``; one by one under a budget)."""
    batch = int(candidates) if batched else 1
    return text_encoder_bytes(model, candidates) + unet_bytes(model, latent_h, latent_w, batch=batch)


def check_training(model: Any, resolution: int, candidates: int, batched: bool, budget_mb: int | None) -> int:
    """The larger of ``training_bytes`` and the photos' encoding (``check_encode``: one photo at a time, before the
    steps) at ``resolution``, refused over the budget before any work (one line, with the budget that holds)."""
    side = int(resolution) // int(model.vae_scale_factor)
    steps, encode = training_bytes(model, side, side, candidates, batched), check_encode(model, side, side, None)
    need = max(steps, encode)
    if budget_mb is not None and need > int(budget_mb) << 20:
        what = ("the text encoder's and the UNet's weights and activations" if steps >= encode else
                "encoding the photos: the VAE encoder's weights and activations")
        raise ZoodipError(
            f"training at resolution={resolution} needs about {-(-need // (1 << 20))} MB ({what} at {side}x{side} "
            f"latents), more than the memory_budget_mb of {budget_mb} MB: raise the budget to at least that, or train "
            "at a lower resolution")
    return need

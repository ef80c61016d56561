"""Numerical checks of an export: ONNX fp32 vs the torch module, and the quantized graph vs ONNX fp32.

Inputs are seeded and SD-like in scale (real token embeddings for the text encoder, unscaled latents
for the VAE decoder), at a small spatial size so the check stays cheap even for SD1.5.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from zoodip_export.onnx_export import GraphSpec
from zoodip_export.quantize import open_session

# Parity runs at most at this latent side (x8 for images): big enough to cover every UNet level
# of SD (64 -> 8 at the bottom would be 16 -> 2), small enough to run in seconds on a CPU.
MAX_PARITY_LATENT = 16


def parity_latent_size(model_info: dict[str, Any], multiple: int = 8) -> int:
    side = min(int(model_info["sample_size"]), MAX_PARITY_LATENT)
    return max(multiple, side - side % multiple)


def parity_inputs(name: str, model_info: dict[str, Any], *, seed: int = 0,
                  token_embeddings: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Fixed, seeded inputs for graph ``name`` (batch 2 for the text encoder and UNet)."""
    rng = np.random.default_rng(seed)
    side = parity_latent_size(model_info)
    channels = int(model_info["latent_channels"])
    length = int(model_info["max_length"])
    if name == "text_encoder":
        if token_embeddings is None:
            embeds = rng.standard_normal((2, length, int(model_info["hidden_size"])), dtype=np.float32) * 0.02
            return {"inputs_embeds": embeds}
        vocab = token_embeddings.shape[0]
        bos, eos = vocab - 2, vocab - 1  # CLIP puts <|startoftext|>, <|endoftext|> last
        ids = np.full((2, length), eos, dtype=np.int64)
        ids[:, 0] = bos
        ids[0, 1:6] = rng.integers(0, vocab - 2, 5)
        ids[1, 1:12] = rng.integers(0, vocab - 2, 11)
        return {"inputs_embeds": np.asarray(token_embeddings[ids], dtype=np.float32)}
    if name == "unet":
        return {
            "sample": rng.standard_normal((2, channels, side, side), dtype=np.float32),
            "timestep": np.array([981.0, 261.0], dtype=np.float32),
            "encoder_hidden_states": rng.standard_normal((2, length, int(model_info["cross_attention_dim"])),
                                                         dtype=np.float32),
        }
    image_side = side * int(model_info["vae_scale_factor"])
    if name == "vae_encoder":
        return {"sample": rng.uniform(-1.0, 1.0, (1, 3, image_side, image_side)).astype(np.float32)}
    if name == "vae_decoder":
        # The decoder takes unscaled latents: SD's are ~N(0,1) / scaling_factor.
        scale = 1.0 / float(model_info["scaling_factor"])
        return {"latent_sample": rng.standard_normal((1, channels, side, side), dtype=np.float32) * scale}
    raise KeyError(name)


def run_torch(module: torch.nn.Module, spec: GraphSpec, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """The module's outputs, flattened and joined in ``spec.outputs``' order (one array to compare)."""
    with torch.no_grad():
        out = module(*(torch.from_numpy(inputs[k]) for k in spec.inputs))
    return np.concatenate([o.numpy().ravel() for o in (out if isinstance(out, tuple) else (out,))])


def run_onnx(path: Path, inputs: dict[str, np.ndarray], session: dict[str, Any] | None = None) -> np.ndarray:
    """The graph's outputs, flattened and joined in its output order (as :func:`run_torch`)."""
    return np.concatenate([o.ravel() for o in open_session(path, session).run(None, inputs)])


def max_abs_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    """||a - b|| / ||b||."""
    b64 = b.astype(np.float64)
    return float(np.linalg.norm(a.astype(np.float64) - b64) / max(np.linalg.norm(b64), 1e-30))


def fp32_vs_torch(module: torch.nn.Module, spec: GraphSpec, onnx_path: Path, inputs: dict[str, np.ndarray]) -> float:
    """Max abs difference between the exported fp32 graph and the torch module."""
    return max_abs_error(run_onnx(onnx_path, inputs), run_torch(module, spec, inputs))


def quantized_vs_fp32(quant_path: Path, fp32_path: Path, inputs: dict[str, np.ndarray],
                      session: dict[str, Any] | None) -> float:
    """Relative error of the quantized graph (run with the recipe's session settings) vs fp32 ONNX."""
    return relative_error(run_onnx(quant_path, inputs, session), run_onnx(fp32_path, inputs))


# The fp32 graph against torch: at the parity side, and for the UNet also at a side every halving rounds up.
ODD_SIDE_KEY = "fp32_vs_torch_odd_side_max_abs"
FP32_VS_TORCH_KEYS = ("fp32_vs_torch_max_abs", ODD_SIDE_KEY)


def format_parity_table(parity: dict[str, dict[str, float | None]]) -> str:
    """A small text table of the parity numbers."""
    rows = [("graph", "fp32 vs torch (max abs)", "int8 vs fp32 (rel)")]
    for name, values in parity.items():
        cells = []
        for keys in (FP32_VS_TORCH_KEYS, ("int8_vs_fp32_rel",)):
            value = max((values[key] for key in keys if values.get(key) is not None), default=None)
            cells.append("-" if value is None else f"{value:.3g}")
        rows.append((name, *cells))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)

"""Quantization recipes for the exported graphs, and the onnxruntime session settings each one needs.

``w8a32``: weight-only INT8. Every large weight feeding a Conv/ConvTranspose/MatMul/Gemm
becomes an int8 initializer with one fp32 scale per output channel, dequantized in the graph by a
``DequantizeLinear`` node; activations stay fp32. That keeps the loss a smooth function of the
text embedding, which is what forward-only (finite-difference) training needs. It only stays that
way if onnxruntime is told not to rewrite the graph (see :data:`SESSION_SETTINGS`).

``w4a32`` (default): 4-bit weights where they hold, int8 elsewhere, activations fp32. In the UNet and
the VAE, each
MatMul or Gemm (linear layer) weight whose 4-bit version changes that layer's output (measured on the graph's own parity inputs)
by at most :data:`~zoodip_export.quantize_int4.INT4_MAX_LAYER_ERROR` becomes onnxruntime's ``MatMulNBits`` (com.microsoft; blocks along
K with one fp32 scale each, the block of :data:`~zoodip_export.quantize_int4.INT4_BLOCKS` that holds in the fewest bytes;
``accuracy_level=1``: the weights are unpacked inside the GEMM and multiplied in fp32, so activations are
never quantized and no fp32 copy of the weight exists). onnxruntime has no 4-bit convolution (and its
int4 ``DequantizeLinear`` is slower than int8), so in the UNet the convolutions of the
:data:`~zoodip_export.quantize_int4.INT4_CONV_LEVELS` deepest resolution levels, where most of its weights are and a convolution's
input is small, are rewritten as im2col + ``MatMulNBits`` under the same per-layer test; at the shallow
levels that rewrite is slower than the int8 convolution and holds 9x the layer's input, so they stay
int8 (benchmarks/README.md, "4-bit weights", has the kernel timings). The UNet's cross-attention keys
and values, which read the text encoder's output (the input a finite difference perturbs), stay int8
(:data:`~zoodip_export.quantize_int4.INT4_INT8_READERS_OF`). Every other weight gets the
``w8a32`` treatment. The text encoder stays ``w8a32`` whole (:data:`W4A32_INT8_GRAPHS`): its 4-bit layers
each pass the per-layer limit but their errors compound through its stacked layers, and on SD1.5's
architecture that turned the finite differences away from the true gradient, for a few percent of the
weight bytes.

``dynamic-int8`` (opt-in): onnxruntime's ``quantize_dynamic``; it also quantizes activations on the
fly, so the loss becomes piecewise constant at the finite-difference scale (gradients are noise).

``fp32``: no quantization.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from zoodip_export.quantize_int4 import quantize_w4a32
from zoodip_export.quantize_int8 import (DEFAULT_MAX_WEIGHT_MIB, MIN_QUANT_ELEMENTS,  # noqa: F401 (public here too)
                                         quantize_per_channel, quantize_w8a32)

# (zoodip_export.onnx_export is imported inside the functions: it pulls in torch, and the CLI's
# --help and the session helpers below should not have to.)

RECIPES: tuple[str, ...] = ("w8a32", "w4a32", "dynamic-int8", "fp32")
RECIPE_PRECISION = {"w8a32": "int8", "w4a32": "int8", "dynamic-int8": "int8", "fp32": "fp32"}
DEFAULT_RECIPE = {"int8": "w4a32", "fp32": "fp32"}

# What the SDK must apply to onnxruntime for each recipe (stored as manifest["session"]).
# With its defaults, onnxruntime fuses DequantizeLinear+MatMul/Conv into kernels that quantize the
# activations too (finite differences then barely correlate with the true gradient), and constant
# folding turns every int8 weight back into an fp32 copy. Both are switched off (the correlations are
# measured in benchmarks/README.md, "fidelity").
SESSION_SETTINGS: dict[str, dict[str, Any]] = {
    "w8a32": {"disable_quant_qdq": True, "disabled_optimizers": ["ConstantFolding"]},
    # Same reasons; the QDQ switch also stops DequantizeLinear+MatMul from being fused into
    # MatMulNBits with its default accuracy level, which quantizes activations to int8.
    "w4a32": {"disable_quant_qdq": True, "disabled_optimizers": ["ConstantFolding"]},
    "dynamic-int8": {},
    "fp32": {},
}

# Bumped when a recipe's graph layout changes (same arithmetic, different nodes); written into the
# manifest so that caches of exports (the benchmarks') know to re-export.
# w8a32 revision 2: MatMul weights stored transposed and read by FusedMatMul (faster dequantization);
# revision 3: layers with fp32 weights over DEFAULT_MAX_WEIGHT_MIB split along output channels.
# w4a32 revision 2: the text encoder w8a32 whole; revision 3: the UNet's deepest convolutions 4-bit too,
# and each 4-bit layer's block chosen from INT4_BLOCKS; revision 4: layers reading the text encoder's output
# (quantize_int4.INT4_INT8_READERS_OF) stay int8.
# Every recipe, one revision up (w8a32 4, w4a32 5, dynamic-int8 and fp32 2): the text encoder also gives its inner
# layers' states (clip skip) and the UNet takes text states of any length (A1111's long prompts).
RECIPE_REVISION: dict[str, int] = {"w8a32": 4, "w4a32": 5, "dynamic-int8": 2, "fp32": 2}
# Graphs the w4a32 recipe keeps entirely in w8a32 (see the module docstring).
W4A32_INT8_GRAPHS: tuple[str, ...] = ("text_encoder",)
# Graphs whose convolutions w4a32 may make 4-bit (those of INT4_CONV_LEVELS deepest resolution levels;
# see the module docstring).
W4A32_CONV_GRAPHS: tuple[str, ...] = ("unet",)

DYNAMIC_INT8_WARNING = (
    "WARNING: recipe 'dynamic-int8' quantizes activations at run time: the loss becomes piecewise constant "
    "at the finite-difference scale and forward-only gradients turn into noise: 'zoodip personalize' refuses such "
    "an export (it generates images). Export w4a32 or w8a32 to train."
)

def session_options(session: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
    """``(SessionOptions, extra InferenceSession kwargs)`` for a manifest ``session`` entry."""
    import onnxruntime as ort
    from zoodip.runtime_options import apply_export_session

    options = ort.SessionOptions()
    disabled = apply_export_session(options, session)
    return options, ({"disabled_optimizers": disabled} if disabled else {})


def open_session(path: Path, session: dict[str, Any] | None = None, threads: int | None = None) -> Any:
    """An onnxruntime CPU session for ``path`` with a manifest ``session`` entry applied."""
    import onnxruntime as ort

    options, kwargs = session_options(session)
    if threads:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"], **kwargs)


def quantize_dynamic_int8(src: Path, dest: Path, *, warn: bool = True) -> dict[str, int]:
    """onnxruntime's dynamic quantization (int8 weights and run-time-quantized activations)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if warn:
        print(DYNAMIC_INT8_WARNING, file=sys.stderr)
    Path(dest).parent.mkdir(parents=True, exist_ok=True)
    big = sum(f.stat().st_size for f in Path(src).parent.iterdir() if f.is_file()) > 1_800_000_000
    # ConvInteger only exists for uint8 on onnxruntime's CPU provider, hence QUInt8 weights.
    quantize_dynamic(
        str(src), str(dest), weight_type=QuantType.QUInt8, op_types_to_quantize=["MatMul", "Gemm", "Conv"],
        use_external_data_format=big,
    )
    return _int8_stats(Path(dest))


def _int8_stats(path: Path) -> dict[str, int]:
    """Counts of 8-bit weight initializers in a written graph (for the log)."""
    from zoodip_export.onnx_export import load_graph

    eight_bit = (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)
    stats = {"quantized": 0, "kept_fp32": 0, "int8_bytes": 0}
    for tensor in load_graph(path).graph.initializer:
        size = int(np.prod(tensor.dims, dtype=np.int64))
        if tensor.data_type in eight_bit and size >= MIN_QUANT_ELEMENTS:
            stats["quantized"] += 1
            stats["int8_bytes"] += size
        elif tensor.data_type == onnx.TensorProto.FLOAT and len(tensor.dims) >= 2 and size >= MIN_QUANT_ELEMENTS:
            stats["kept_fp32"] += 1
    return stats


def graph_recipe(recipe: str, graph: str | None) -> str:
    """The recipe the graph named ``graph`` gets in an export made with ``recipe``.

    ``w4a32`` keeps :data:`W4A32_INT8_GRAPHS` in ``w8a32`` whole; every other recipe applies to all graphs.
    """
    return "w8a32" if recipe == "w4a32" and graph in W4A32_INT8_GRAPHS else recipe


def quantize_graph(recipe: str, src: Path, dest: Path, *, graph: str | None = None, warn: bool = True,
                   calibration: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """Apply the export's ``recipe`` to the fp32 graph ``src`` (named ``graph``), writing ``dest`` (+ ``dest.data`` if large).

    The recipe is the one :func:`graph_recipe` gives for ``graph``. ``calibration``: inputs of ``src`` on
    which ``w4a32`` measures each layer's 4-bit error (required there).
    """
    recipe = graph_recipe(recipe, graph)
    if recipe == "w8a32":
        return quantize_w8a32(src, dest)
    if recipe == "w4a32":
        if calibration is None:
            raise ValueError("recipe 'w4a32' needs calibration inputs")
        return quantize_w4a32(src, dest, calibration, convs=graph in W4A32_CONV_GRAPHS)
    if recipe == "dynamic-int8":
        return quantize_dynamic_int8(src, dest, warn=warn)
    if recipe == "fp32":
        from zoodip_export.onnx_export import load_graph, write_onnx

        write_onnx(load_graph(src), Path(src).parent, dest)
        return {"quantized": 0, "kept_fp32": 0, "int8_bytes": 0}
    raise ValueError(f"unknown recipe {recipe!r}")

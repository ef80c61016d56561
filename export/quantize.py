"""Quantization recipes for the exported graphs, and the onnxruntime session settings each one needs.

``w8a32`` (default): weight-only INT8. Every large weight feeding a Conv/ConvTranspose/MatMul/Gemm
becomes an int8 initializer with one fp32 scale per output channel, dequantized in the graph by a
``DequantizeLinear`` node; activations stay fp32. That keeps the loss a smooth function of the
text embedding, which is what forward-only (finite-difference) training needs. It only stays that
way if onnxruntime is told not to rewrite the graph (see :data:`SESSION_SETTINGS`).

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
from onnx import helper, numpy_helper

# (zoodip_export.onnx_export is imported inside the functions: it pulls in torch, and the CLI's
# --help and the session helpers below should not have to.)

RECIPES: tuple[str, ...] = ("w8a32", "dynamic-int8", "fp32")
RECIPE_PRECISION = {"w8a32": "int8", "dynamic-int8": "int8", "fp32": "fp32"}
DEFAULT_RECIPE = {"int8": "w8a32", "fp32": "fp32"}

# What the SDK must apply to onnxruntime for each recipe (stored as manifest["session"]).
# With its defaults, onnxruntime fuses DequantizeLinear+MatMul/Conv into kernels that quantize the
# activations too (finite differences then correlate ~0.2 with the true gradient), and constant
# folding turns every int8 weight back into an fp32 copy. With both switched off: ~0.96.
SESSION_SETTINGS: dict[str, dict[str, Any]] = {
    "w8a32": {"disable_quant_qdq": True, "disabled_optimizers": ["ConstantFolding"]},
    "dynamic-int8": {},
    "fp32": {},
}

DYNAMIC_INT8_WARNING = (
    "WARNING: recipe 'dynamic-int8' quantizes activations at run time: the loss becomes piecewise constant "
    "at the finite-difference scale and forward-only gradients turn into noise. Use 'w8a32' for training."
)

# Weights with fewer elements stay fp32: int8 saves nothing there and the scales would cost as much.
MIN_QUANT_ELEMENTS = 256


def session_options(session: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
    """``(SessionOptions, extra InferenceSession kwargs)`` for a manifest ``session`` entry."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    session = session or {}
    if session.get("disable_quant_qdq"):
        options.add_session_config_entry("session.disable_quant_qdq", "1")
    kwargs: dict[str, Any] = {}
    if session.get("disabled_optimizers"):
        kwargs["disabled_optimizers"] = list(session["disabled_optimizers"])
    return options, kwargs


def open_session(path: Path, session: dict[str, Any] | None = None, threads: int | None = None) -> Any:
    """An onnxruntime CPU session for ``path`` with a manifest ``session`` entry applied."""
    import onnxruntime as ort

    options, kwargs = session_options(session)
    if threads:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"], **kwargs)


def _output_channel_axis(node: onnx.NodeProto, rank: int) -> int | None:
    """Axis of the weight (the node's input 1) that indexes output channels; None = do not quantize."""
    if node.op_type == "Conv":
        return 0  # [C_out, C_in/g, kH, kW]
    if node.op_type == "ConvTranspose":
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        return 1 if group == 1 else None  # [C_in, C_out/g, kH, kW]; grouped: channels interleave
    if node.op_type == "MatMul":
        return 1 if rank == 2 else None  # B is [K, N]
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1  # B is [N, K] with transB=1, else [K, N]
    return None


def quantize_per_channel(weights: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per-channel quantization: ``weights ~= q * scale`` along ``axis``."""
    moved = np.moveaxis(weights.astype(np.float32), axis, 0)
    max_abs = np.abs(moved.reshape(moved.shape[0], -1)).max(axis=1)
    # All-zero channels: any positive scale reproduces them exactly.
    scale = np.where(max_abs > 0, max_abs / 127.0, 1.0).astype(np.float32)
    shape = [1] * weights.ndim
    shape[axis] = -1
    q = np.clip(np.rint(weights / scale.reshape(shape)), -127, 127).astype(np.int8)
    return q, scale


def quantize_w8a32(src: Path, dest: Path) -> dict[str, int]:
    """Write ``src`` (fp32 ONNX) to ``dest`` with int8 weights + DequantizeLinear; returns counts.

    Weights are read and quantized one at a time (low memory). A weight shared by several nodes is
    quantized once, and only when they agree on its output-channel axis.
    """
    from zoodip_export.onnx_export import initializer_array, load_graph, write_onnx

    src, dest = Path(src), Path(dest)
    model = load_graph(src)
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}

    wanted: dict[str, set[int | None]] = {}
    for node in graph.node:
        if node.op_type in ("Conv", "ConvTranspose", "MatMul", "Gemm") and len(node.input) > 1:
            tensor = initializers.get(node.input[1])
            if tensor is None or tensor.data_type != onnx.TensorProto.FLOAT:
                continue
            wanted.setdefault(tensor.name, set()).add(_output_channel_axis(node, len(tensor.dims)))

    renamed: dict[str, str] = {}
    new_nodes: list[onnx.NodeProto] = []
    stats = {"quantized": 0, "kept_fp32": 0, "int8_bytes": 0}
    for name, axes in wanted.items():
        tensor = initializers[name]
        axis = next(iter(axes))
        if len(axes) != 1 or axis is None or int(np.prod(tensor.dims)) < MIN_QUANT_ELEMENTS:
            stats["kept_fp32"] += 1
            continue
        q, scale = quantize_per_channel(initializer_array(tensor, src.parent), axis)
        q_name, scale_name, zero_name, out_name = (f"{name}_int8", f"{name}_scale", f"{name}_zero", f"{name}_dq")
        tensor.CopyFrom(numpy_helper.from_array(q, q_name))  # replaces the fp32 data in place
        graph.initializer.extend([
            numpy_helper.from_array(scale, scale_name),
            numpy_helper.from_array(np.zeros_like(scale, dtype=np.int8), zero_name),
        ])
        new_nodes.append(helper.make_node(
            "DequantizeLinear", [q_name, scale_name, zero_name], [out_name], name=f"{name}_DequantizeLinear", axis=axis,
        ))
        renamed[name] = out_name
        stats["quantized"] += 1
        stats["int8_bytes"] += q.nbytes

    for node in graph.node:
        for index, name in enumerate(node.input):
            if name in renamed:
                node.input[index] = renamed[name]
    # Dequantize nodes first: the graph stays topologically sorted.
    nodes = new_nodes + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    write_onnx(model, src.parent, dest)
    return stats


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


def quantize_graph(recipe: str, src: Path, dest: Path, *, warn: bool = True) -> dict[str, int]:
    """Apply ``recipe`` to the fp32 graph ``src``, writing ``dest`` (+ ``dest.data`` if large)."""
    if recipe == "w8a32":
        return quantize_w8a32(src, dest)
    if recipe == "dynamic-int8":
        return quantize_dynamic_int8(src, dest, warn=warn)
    if recipe == "fp32":
        from zoodip_export.onnx_export import load_graph, write_onnx

        write_onnx(load_graph(src), Path(src).parent, dest)
        return {"quantized": 0, "kept_fp32": 0, "int8_bytes": 0}
    raise ValueError(f"unknown recipe {recipe!r}")

"""The ``w8a32`` recipe's weight quantization: int8 weights with one fp32 scale per output channel.

zoodip_export.quantize describes the recipes and applies them; this module holds the graph rewrite of
the int8 one (``w4a32`` uses it for every weight it does not turn into 4 bits).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

# Weights with fewer elements stay fp32: int8 saves nothing there and the scales would cost as much.
MIN_QUANT_ELEMENTS = 256



def _output_channel_axis(node: onnx.NodeProto, rank: int) -> int | None:
    """Axis of the weight (the node's input 1) that indexes output channels; None = do not quantize."""
    if node.op_type == "Conv":
        return 0  # [C_out, C_in/g, kH, kW]
    if node.op_type == "ConvTranspose":
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        return 1 if group == 1 else None  # [C_in, C_out/g, kH, kW]; grouped: channels interleave
    if node.op_type == "MatMul":
        return 1 if rank == 2 else None  # B is [K, N] (stored transposed, see quantize_w8a32)
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


# Layers whose fp32 weight copy would exceed this are split along output channels into several
# layers (outputs concatenated). The dequantized copy of the largest layer is the single biggest
# buffer of a forward pass (112 MiB for an SD1.5 up-block conv); split, it is at most this.
DEFAULT_MAX_WEIGHT_MIB = 32.0


def quantize_w8a32(src: Path, dest: Path, max_weight_mib: float = DEFAULT_MAX_WEIGHT_MIB, *,
                   model: onnx.ModelProto | None = None) -> dict[str, int]:
    """Write ``src`` (fp32 ONNX) to ``dest`` with int8 weights + DequantizeLinear; returns counts.

    Weights are read and quantized one at a time (low memory). A weight shared by several nodes is
    quantized once, and only when they agree on its output-channel axis.

    Three layout choices are about speed and memory at run time, not arithmetic:
    - A MatMul weight ``[K, N]`` is stored transposed, ``[N, K]``, dequantized along axis 0, and
      the MatMul becomes onnxruntime's ``FusedMatMul`` with ``transB=1`` (the GEMM reads B
      transposed at no cost). onnxruntime dequantizes along the last axis much more slowly than the first.
    - A Conv or MatMul whose fp32 weight would exceed ``max_weight_mib`` becomes several layers over
      slices of its output channels, concatenated (per-channel scales make the slices exact).
    - DequantizeLinear nodes come first in the node list, which makes onnxruntime run each one right
      before its consumer (see the comment below), so the fp32 copy of a weight only exists while
      the layer that needs it runs (with memory reuse off, see ``zoodip.model.RuntimeOptions``).

    ``model``: ``src``'s graph already loaded (and possibly partly quantized, see :func:`quantize_w4a32`).
    """
    from zoodip_export.onnx_export import load_graph, write_onnx

    src, dest = Path(src), Path(dest)
    model = load_graph(src) if model is None else model
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    limit = max(1, int(max_weight_mib * (1 << 20)))
    readers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in graph.node:
        for index, name in enumerate(node.input):
            readers.setdefault(name, []).append((node, index))

    done = _Quantized()
    for name, axes in _weights_to_quantize(graph, initializers).items():
        tensor = initializers[name]
        axis = next(iter(axes)) if len(axes) == 1 else None
        if axis is None or int(np.prod(tensor.dims)) < MIN_QUANT_ELEMENTS:
            done.stats["kept_fp32"] += 1
            continue
        _quantize_weight(graph, tensor, axis, readers, initializers, limit, src.parent, done)
    _reorder_nodes(graph, initializers, done, src.parent)
    if done.transposed_weights and not any(op.domain == "com.microsoft" for op in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    write_onnx(model, src.parent, dest)
    return done.stats


class _Quantized:
    """What quantize_w8a32 has done so far, by fp32 weight name."""

    def __init__(self) -> None:
        self.dequantize: dict[str, list[onnx.NodeProto]] = {}  # DequantizeLinear node(s)
        self.parts: dict[str, list[str]] = {}  # dequantized tensor(s): one, or one per slice
        self.widths: dict[str, list[int]] = {}  # output channels of each slice
        self.transposed_weights: set[str] = set()
        self.stats = {"quantized": 0, "kept_fp32": 0, "int8_bytes": 0, "split_layers": 0}


def _weights_to_quantize(graph: onnx.GraphProto, initializers: dict) -> dict[str, set[int | None]]:
    """fp32 weights of Conv/ConvTranspose/MatMul/Gemm nodes -> the output-channel axes their readers use."""
    wanted: dict[str, set[int | None]] = {}
    for node in graph.node:
        if node.op_type in ("Conv", "ConvTranspose", "MatMul", "Gemm") and len(node.input) > 1:
            tensor = initializers.get(node.input[1])
            if tensor is None or tensor.data_type != onnx.TensorProto.FLOAT:
                continue
            wanted.setdefault(tensor.name, set()).add(_output_channel_axis(node, len(tensor.dims)))
    return wanted


def _quantize_weight(graph: onnx.GraphProto, tensor: onnx.TensorProto, axis: int, readers: dict, initializers: dict,
                     limit: int, folder: Path, done: _Quantized) -> None:
    """One weight to int8 per channel (transposed for MatMul B, sliced past ``limit`` bytes), with its
    DequantizeLinear node(s); the int8 data replaces the fp32 data in place."""
    from zoodip_export.onnx_export import initializer_array

    name = tensor.name
    weights = initializer_array(tensor, folder)
    # Transposed storage only when every reader is a MatMul taking it as B.
    transposed = all(n.op_type == "MatMul" and i == 1 for n, i in readers[name])
    if transposed:
        weights, axis = np.ascontiguousarray(weights.T), 0
        done.transposed_weights.add(name)
    q, scale = quantize_per_channel(weights, axis)
    slices = -(-weights.size * 4 // limit) if _splittable(name, readers, initializers, transposed) else 1
    bounds = np.linspace(0, q.shape[0], min(slices, q.shape[0]) + 1).round().astype(int)
    done.dequantize[name], done.parts[name] = [], []
    for k, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
        tag = f"_p{k}" if len(bounds) > 2 else ""
        q_name, scale_name, zero_name = f"{name}_int8{tag}", f"{name}_scale{tag}", f"{name}_zero{tag}"
        out_name = f"{name}_dq{'T' if transposed else ''}{tag}"
        q_part = numpy_helper.from_array(np.ascontiguousarray(q[lo:hi]), q_name)
        if k == 0:
            tensor.CopyFrom(q_part)  # replaces the fp32 data in place
        else:
            graph.initializer.append(q_part)
        graph.initializer.extend([
            numpy_helper.from_array(scale[lo:hi], scale_name),
            numpy_helper.from_array(np.zeros(hi - lo, dtype=np.int8), zero_name),
        ])
        done.dequantize[name].append(helper.make_node(
            "DequantizeLinear", [q_name, scale_name, zero_name], [out_name],
            name=f"{name}_DequantizeLinear{tag}", axis=axis,
        ))
        done.parts[name].append(out_name)
    done.stats["quantized"] += 1
    done.stats["int8_bytes"] += q.nbytes
    done.stats["split_layers"] += len(done.parts[name]) > 1
    done.widths[name] = [int(w) for w in np.diff(bounds)]


def _reorder_nodes(graph: onnx.GraphProto, initializers: dict, done: _Quantized, folder: Path) -> None:
    """Readers rewired to the dequantized tensors (split layers, transposed MatMuls), DequantizeLinear first."""
    ordered: list[onnx.NodeProto] = [dq for nodes in done.dequantize.values() for dq in nodes]
    split_biases: set[str] = set()
    for node in graph.node:
        weight = node.input[1] if node.op_type in ("Conv", "MatMul") and len(node.input) > 1 else None
        if weight in done.parts and len(done.parts[weight]) > 1:
            ordered.extend(_split_layer(node, done.parts[weight], done.widths[weight], graph, initializers, folder))
            if node.op_type == "Conv" and len(node.input) > 2 and node.input[2]:
                split_biases.add(node.input[2])  # replaced by per-slice biases
            continue
        for index, name in enumerate(node.input):
            if name in done.parts:
                node.input[index] = done.parts[name][0]
        if node.op_type == "MatMul" and weight in done.transposed_weights:
            node = _matmul_transposed_b(node)
        ordered.append(node)
    # DequantizeLinear nodes go first in the node list. onnxruntime orders execution by a depth-first
    # walk back from the outputs that visits a node's higher-numbered inputs first, so each
    # DequantizeLinear then runs right before its consumer (listed next to it, they would all run at
    # the start and every fp32 weight copy would live for the whole forward).
    del graph.node[:]
    graph.node.extend(ordered)
    read = {name for node in graph.node for name in node.input}
    for tensor in [t for t in graph.initializer if t.name in split_biases - read]:
        graph.initializer.remove(tensor)


def _splittable(name: str, readers: dict[str, list[tuple[onnx.NodeProto, int]]],
                initializers: dict[str, onnx.TensorProto], transposed: bool) -> bool:
    """A weight read by one node that can be split along output channels: a MatMul B, or a Conv
    without groups whose bias (if any) is an initializer."""
    if len(readers[name]) != 1:
        return False
    node, index = readers[name][0]
    if index != 1:
        return False
    if node.op_type == "MatMul":
        return transposed
    if node.op_type != "Conv" or next((a.i for a in node.attribute if a.name == "group"), 1) != 1:
        return False
    return len(node.input) < 3 or not node.input[2] or node.input[2] in initializers


def _split_layer(node: onnx.NodeProto, weights: list[str], widths: list[int], graph: onnx.GraphProto,
                 initializers: dict[str, onnx.TensorProto], folder: Path) -> list[onnx.NodeProto]:
    """``node`` as one layer per weight slice (``widths`` output channels each), outputs concatenated."""
    from zoodip_export.onnx_export import initializer_array

    bias = None
    if node.op_type == "Conv" and len(node.input) > 2 and node.input[2]:
        bias = initializer_array(initializers[node.input[2]], folder)
    out, nodes, start = node.output[0], [], 0
    for k, weight in enumerate(weights):
        part_out = f"{out}_p{k}"
        if node.op_type == "MatMul":
            nodes.append(_fused_matmul_transposed_b(node.input[0], weight, part_out, f"{node.name}_p{k}"))
            continue
        inputs = [node.input[0], weight]
        if bias is not None:
            bias_name = f"{node.input[2]}_p{k}"
            graph.initializer.append(numpy_helper.from_array(bias[start : start + widths[k]].astype(np.float32), bias_name))
            inputs.append(bias_name)
            start += widths[k]
        part = helper.make_node("Conv", inputs, [part_out], name=f"{node.name}_p{k}")
        part.attribute.extend(node.attribute)
        nodes.append(part)
    nodes.append(helper.make_node("Concat", [f"{out}_p{k}" for k in range(len(weights))], [out],
                                  name=f"{node.name}_concat", axis=1 if node.op_type == "Conv" else -1))
    return nodes


def _matmul_transposed_b(node: onnx.NodeProto) -> onnx.NodeProto:
    """``MatMul(A, B)`` with B given as B^T: onnxruntime's ``FusedMatMul`` with ``transB=1``.

    (A standard ``Transpose`` in front of the MatMul would do too, but onnxruntime's QDQ propagation
    then wraps it in a QuantizeLinear/DequantizeLinear pair that re-quantizes the weight every call.)
    """
    return _fused_matmul_transposed_b(node.input[0], node.input[1], node.output[0], node.name)


def _fused_matmul_transposed_b(a: str, b_transposed: str, out: str, name: str) -> onnx.NodeProto:
    return helper.make_node("FusedMatMul", [a, b_transposed], [out], name=name, domain="com.microsoft",
                            transA=0, transB=1, alpha=1.0)

"""The ``w4a32`` recipe's 4-bit weights: which layers, which block size, and the graph rewrites.

zoodip_export.quantize describes the recipes and applies them; this module measures each candidate
layer's 4-bit error on the calibration inputs, packs the weights that hold into ``MatMulNBits`` blocks,
and rewrites MatMul, Gemm and (deep) Conv nodes to use them. Every other weight goes through
zoodip_export.quantize_int8.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from zoodip_export.quantize_int8 import MIN_QUANT_ELEMENTS, quantize_w8a32

# (zoodip_export.onnx_export is imported inside the functions: it pulls in torch.)

# The convolutions w4a32 makes 4-bit are those of this many of the graph's deepest resolution levels
# (output side on the calibration inputs within 2**(levels-1) of the smallest). Above them the im2col
# rewrite runs at large spatial sizes, where it is slower than the int8 convolution and holds 9x the
# layer's input (benchmarks/README.md, "4-bit weights", has the kernel timings).
INT4_CONV_LEVELS = 2

# Weights per 4-bit block (one fp32 scale each, along K): the finest block used, and the default of the
# packing functions. The scale costs 32/block bits per weight on top of the 4 (1 bit at 32), so each layer
# gets the block of INT4_BLOCKS that holds (see INT4_MAX_LAYER_ERROR) in the fewest bytes.
INT4_BLOCK = 32
INT4_BLOCKS: tuple[int, ...] = (128, 64, 32)
# A block coarser than INT4_BLOCK is used only where its error is within this factor of INT4_BLOCK's: where
# the weights have no outliers a coarse scale costs almost nothing, where they do it costs accuracy that
# the per-layer limit alone let through (benchmarks/README.md, "4-bit weights", has the measurement).
INT4_COARSE_BLOCK_SLACK = 1.1
# Scales tried per block, as fractions of the block's largest |weight| / 7 (see quantize_blockwise_int4).
# Least squared weight error is not least output error: clipping the largest weights of a block errs to
# one side, which adds up over inputs that are mostly positive (after a SiLU). So each layer gets the
# searched scales or plain max/7 ones, whichever changes its output less on the calibration inputs.
INT4_SCALE_FRACTIONS: tuple[float, ...] = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75)
# A layer goes 4-bit (with a given block) when that alone changes its output on the calibration inputs by
# at most this (relative L2 error); otherwise it stays int8. A choice, not a measurement: the
# measured errors per layer are in the manifest (``graphs.<name>.quantization``).
INT4_MAX_LAYER_ERROR = 0.1
# Layers that read these graph inputs directly stay int8 whatever their 4-bit error. The UNet's cross-attention
# keys and values read the text encoder's output, the input a finite difference perturbs, so their weight
# error enters the estimated gradient whole, where the errors of other layers partly average out. They are a
# few percent of the weights (benchmarks/README.md, "4-bit weights", measures what they cost and buy).
INT4_INT8_READERS_OF: tuple[str, ...] = ("encoder_hidden_states",)
# Rows of a layer's input used to measure its error (a random subset when it has more).
_ERROR_ROWS = 4096


def quantize_blockwise_int4(weights_nk: np.ndarray, block: int = INT4_BLOCK,
                            search: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric 4-bit blocks along K of an ``[N, K]`` matrix, in ``MatMulNBits``' layout.

    Returns ``(packed, scales)``: ``packed`` uint8 ``[N, ceil(K/block), block/2]`` (two weights a byte,
    the even one in the low nibble, stored as ``q + 8`` with ``q`` in [-8, 7]: MatMulNBits' default
    zero point), ``scales`` fp32 ``[N, ceil(K/block)]``. K is padded with zeros to whole blocks.
    ``search``: each block's scale searched over :data:`INT4_SCALE_FRACTIONS`, else max/7.
    """
    n, k = weights_nk.shape
    blocks = -(-k // block)
    padded = np.zeros((n, blocks * block), np.float32)
    padded[:, :k] = weights_nk
    grouped = padded.reshape(n, blocks, block)
    max_abs = np.abs(grouped).max(axis=2)
    # Each block's scale: of max/7 times each fraction in INT4_SCALE_FRACTIONS, the one with the least
    # squared error. Below 1 the largest weights are clipped and every other one rounds more finely,
    # which pays where a block has one outlier.
    scales, best = np.ones_like(max_abs), np.full(max_abs.shape, np.inf, np.float32)
    for fraction in INT4_SCALE_FRACTIONS if search else (1.0,):
        trial = np.where(max_abs > 0, max_abs * np.float32(fraction / 7.0), 1.0).astype(np.float32)
        error = np.square(np.clip(np.rint(grouped / trial[:, :, None]), -8, 7) * trial[:, :, None] - grouped).sum(axis=2)
        better = error < best
        scales, best = np.where(better, trial, scales), np.where(better, error, best)
    q = (np.clip(np.rint(grouped / scales[:, :, None]), -8, 7) + 8).astype(np.uint8)
    packed = (q[:, :, 0::2] | (q[:, :, 1::2] << 4)).astype(np.uint8)
    return packed, scales


def dequantize_blockwise_int4(packed: np.ndarray, scales: np.ndarray, k: int) -> np.ndarray:
    """The ``[N, K]`` fp32 matrix that :func:`quantize_blockwise_int4`'s output stands for."""
    n, blocks, half = packed.shape
    q = np.empty((n, blocks, 2 * half), np.float32)
    q[:, :, 0::2] = packed & 0x0F
    q[:, :, 1::2] = packed >> 4
    return ((q - 8.0) * scales[:, :, None]).reshape(n, -1)[:, :k]


def int4_candidates(graph: onnx.GraphProto, convs: bool = False) -> dict[str, onnx.NodeProto]:
    """Layers that ``MatMulNBits`` can replace, by weight name: MatMul nodes whose B is an fp32 ``[K, N]``
    initializer, plain Gemm nodes (``y = A B' + C``, B or its transpose an initializer), and (``convs``)
    2-D convolutions that :func:`conv_as_matmul_nbits` can rewrite; the weight read by that node alone,
    large enough to be worth it, K at least one block."""
    initializers = {t.name: t for t in graph.initializer}
    readers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    found: dict[str, onnx.NodeProto] = {}
    for node in graph.node:
        if (node.op_type == "MatMul" and len(node.input) == 2) or (node.op_type == "Gemm" and _plain_gemm(node)):
            rank = 2
        elif convs and node.op_type == "Conv" and _conv_geometry(node) is not None:
            rank = 4
        else:
            continue
        tensor = initializers.get(node.input[1])
        if (tensor is None or tensor.data_type != onnx.TensorProto.FLOAT or len(tensor.dims) != rank
                or readers[tensor.name] != 1 or int(np.prod(tensor.dims)) < MIN_QUANT_ELEMENTS
                or _matrix_shape(node, list(tensor.dims))[1] < INT4_BLOCK):
            continue
        found[tensor.name] = node
    return found


def _conv_geometry(node: onnx.NodeProto) -> tuple[int, int, int] | None:
    """``(kernel, stride, pad)`` of a Conv the im2col rewrite handles (square 1x1 or 3x3 kernel, one
    group, no dilation, the same stride and symmetric padding on both axes), else None."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    kernel = list(attrs.get("kernel_shape", []))
    strides = list(attrs.get("strides", [1, 1]))
    pads = list(attrs.get("pads", [0, 0, 0, 0]))
    if (len(kernel) != 2 or kernel[0] != kernel[1] or kernel[0] not in (1, 3) or attrs.get("group", 1) != 1
            or list(attrs.get("dilations", [1, 1])) != [1, 1] or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET")
            or len(strides) != 2 or strides[0] != strides[1] or strides[0] not in (1, 2)
            or len(set(pads)) != 1 or pads[0] != kernel[0] // 2 or (kernel[0] == 1 and strides[0] != 1)):
        return None
    return kernel[0], strides[0], pads[0]


def _plain_gemm(node: onnx.NodeProto) -> bool:
    """A Gemm that is ``A @ W (+ C)``: alpha and beta 1, A not transposed."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    return attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0 and attrs.get("transA", 0) == 0


def _weights_transposed(node: onnx.NodeProto) -> bool:
    """Whether the layer stores its weight ``[N, K]`` (a Gemm with transB) rather than ``[K, N]``."""
    return node.op_type == "Gemm" and any(a.name == "transB" and a.i == 1 for a in node.attribute)


def _matrix_shape(node: onnx.NodeProto, dims: list[int]) -> tuple[int, int]:
    """The ``(N, K)`` of :func:`_as_matrix` from the weight's dims."""
    if node.op_type == "Conv":
        return dims[0], int(np.prod(dims[1:]))
    return (dims[0], dims[1]) if _weights_transposed(node) else (dims[1], dims[0])


def _as_matrix(node: onnx.NodeProto, weights: np.ndarray) -> np.ndarray:
    """The layer's weight as the ``[N, K]`` matrix its 4-bit GEMM multiplies: a MatMul's (or Gemm's)
    ``[K, N]`` transposed; a Conv's ``[C_out, C_in, k, k]`` ordered (row, column, input channel) along K,
    the order of :func:`conv_as_matmul_nbits`' im2col."""
    if node.op_type != "Conv":
        return np.ascontiguousarray(weights if _weights_transposed(node) else weights.T)
    return conv_as_matrix(weights)


def conv_as_matrix(weights: np.ndarray) -> np.ndarray:
    """A Conv's ``[C_out, C_in, k, k]`` weight as ``[N, K]``, K ordered (row, column, input channel)."""
    return np.ascontiguousarray(weights.transpose(0, 2, 3, 1).reshape(weights.shape[0], -1))


def _input_rows(node: onnx.NodeProto, x: np.ndarray, rows: int, rng: np.random.Generator) -> np.ndarray:
    """Up to ``rows`` random rows of the matrix the layer's GEMM multiplies: a MatMul's or Gemm's input
    rows, or a Conv's im2col patches (one per output position) from its NCHW input ``x``."""
    if node.op_type != "Conv":
        flat = x.reshape(-1, x.shape[-1])
        return flat[rng.choice(len(flat), rows, replace=False)] if len(flat) > rows else flat
    kernel, stride, pad = _conv_geometry(node)  # type: ignore[misc]
    padded = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad))).transpose(0, 2, 3, 1)  # NHWC
    out_h = (padded.shape[1] - kernel) // stride + 1
    out_w = (padded.shape[2] - kernel) // stride + 1
    positions = x.shape[0] * out_h * out_w
    picked = rng.choice(positions, rows, replace=False) if positions > rows else np.arange(positions)
    n, rest = np.divmod(picked, out_h * out_w)
    ys, xs = np.divmod(rest, out_w)
    patches = [padded[n, ys * stride + dy, xs * stride + dx] for dy in range(kernel) for dx in range(kernel)]
    return np.concatenate(patches, axis=1)


def measure_int4_errors(src: Path, model: onnx.ModelProto, candidates: dict[str, onnx.NodeProto],
                        calibration: dict[str, np.ndarray], blocks: tuple[int, ...] = INT4_BLOCKS
                        ) -> tuple[dict[str, dict[int, tuple[float, bool]]], dict[str, int]]:
    """Per candidate weight and block size: ``(error, search)``, the smaller of ``||X (W4 - W)|| / ||X W||``
    on the layer's real inputs ``X`` (im2col patches for a convolution) with searched and with plain
    scales, and which one it was; and each convolution's output side on the calibration inputs.

    One fp32 run of ``src`` on ``calibration`` with every candidate's input exposed as an output (a
    probe graph written next to ``src``, sharing its external weights, removed afterwards).
    """
    import onnxruntime as ort

    from zoodip_export.onnx_export import initializer_array

    src = Path(src)
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    outputs = {o.name for o in probe.graph.output}
    for node in candidates.values():
        if node.input[0] not in outputs:
            probe.graph.output.append(helper.make_tensor_value_info(node.input[0], onnx.TensorProto.FLOAT, None))
            outputs.add(node.input[0])
    probe_path = src.with_name(f"{src.stem}.int4-probe.onnx")
    try:
        onnx.save(probe, str(probe_path))
        session = ort.InferenceSession(str(probe_path), providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        values = dict(zip(names, session.run(None, calibration)))
    finally:
        probe_path.unlink(missing_ok=True)
    initializers = {t.name: t for t in model.graph.initializer}
    rng = np.random.default_rng(0)
    errors: dict[str, dict[int, tuple[float, bool]]] = {}
    sides: dict[str, int] = {}
    for name, node in candidates.items():
        weights = _as_matrix(node, initializer_array(initializers[name], src.parent).astype(np.float32))  # [N, K]
        x = values[node.input[0]]
        if node.op_type == "Conv":
            kernel, stride, pad = _conv_geometry(node)  # type: ignore[misc]
            sides[name] = (x.shape[2] + 2 * pad - kernel) // stride + 1
        rows = _input_rows(node, x, _ERROR_ROWS, rng)
        norm = float(np.linalg.norm(rows @ weights.T))
        errors[name] = {}
        for block in blocks:
            for search in (True, False):
                packed, scales = quantize_blockwise_int4(weights, block, search)
                restored = dequantize_blockwise_int4(packed, scales, weights.shape[1])
                error = float(np.linalg.norm(rows @ (restored - weights).T)) / norm if norm > 0 else 0.0
                if block not in errors[name] or error < errors[name][block][0]:
                    errors[name][block] = (error, search)
    return errors, sides


def int4_bytes(n: int, k: int, block: int) -> int:
    """Bytes of an ``[N, K]`` weight in 4-bit blocks: K padded to whole blocks, 4 bits a weight, an fp32 scale a block."""
    return n * -(-k // block) * (block // 2 + 4)


def matmul_nbits_nodes(a: str, packed: str, scales: str, bias: str | None, out: str, name: str, n: int, k: int,
                block: int) -> list[onnx.NodeProto]:
    """``out = a @ W4^T (+ bias)``: one MatMulNBits with fp32 compute (``accuracy_level=1``; levels 2-4 would
    quantize the activations), and an Add of the bias when there is one."""
    product = f"{name}/gemm" if bias else out
    nodes = [helper.make_node("MatMulNBits", [a, packed, scales], [product], name=name, domain="com.microsoft",
                              K=k, N=n, bits=4, block_size=block, accuracy_level=1)]
    if bias:
        nodes.append(helper.make_node("Add", [product, bias], [out], name=f"{name}/bias"))
    return nodes


def conv_as_matmul_nbits(node: onnx.NodeProto, packed: str, scales: str, n: int, k: int,
                          block: int) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Nodes computing ``node`` (a Conv, see :func:`_conv_geometry`) with its 4-bit ``[N, K]`` weight:
    onnxruntime has no 4-bit convolution, so the input is moved channels-last, a 3x3 kernel's 9 shifted
    (strided) views of the padded input are concatenated along channels (im2col, in
    :func:`_as_matrix`'s K order), one MatMulNBits multiplies them, and the result moves back to NCHW.
    Spatial sizes stay dynamic: each view's end is counted from the padded input's end."""
    kernel, stride, pad = _conv_geometry(node)  # type: ignore[misc]
    base = node.name or node.output[0]
    nhwc, cols = f"{base}/nhwc", f"{base}/im2col"
    nodes = [helper.make_node("Transpose", [node.input[0]], [nhwc], perm=[0, 2, 3, 1], name=nhwc)]
    inits: list[onnx.TensorProto] = []
    if kernel == 1:
        cols = nhwc
    else:
        def const(suffix: str, values: list[int]) -> str:
            inits.append(numpy_helper.from_array(np.array(values, np.int64), f"{base}/{suffix}"))
            return f"{base}/{suffix}"

        padded = f"{base}/padded"
        nodes.append(helper.make_node("Pad", [nhwc, const("pads", [0, pad, pad, 0, 0, pad, pad, 0])], [padded],
                                      name=padded))
        axes, steps, views = const("axes", [1, 2]), const("steps", [stride, stride]), []
        last = np.iinfo(np.int64).max
        for dy in range(kernel):
            for dx in range(kernel):
                view = f"{base}/view{dy}{dx}"
                ends = [d - (kernel - 1) if d < kernel - 1 else last for d in (dy, dx)]
                nodes.append(helper.make_node("Slice", [padded, const(f"start{dy}{dx}", [dy, dx]),
                                                        const(f"end{dy}{dx}", ends), axes, steps], [view], name=view))
                views.append(view)
        nodes.append(helper.make_node("Concat", views, [cols], axis=3, name=cols))
    bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
    nodes += matmul_nbits_nodes(cols, packed, scales, bias, f"{base}/biased" if bias else f"{base}/gemm", base, n, k, block)
    nodes.append(helper.make_node("Transpose", [nodes[-1].output[0]], list(node.output), perm=[0, 3, 1, 2],
                                  name=f"{base}/nchw"))
    return nodes, inits


def _to_matmul_nbits(model: onnx.ModelProto, folder: Path, nodes: dict[str, onnx.NodeProto],
                     layouts: dict[str, tuple[int, bool]]) -> int:
    """Replace each ``nodes`` layer (by weight name) with a 4-bit MatMulNBits packed as ``layouts[name]``
    (block, scale search) (a Conv through :func:`conv_as_matmul_nbits`), in place and in graph order;
    returns the packed bytes."""
    from zoodip_export.onnx_export import initializer_array

    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    replaced: dict[int, list[onnx.NodeProto]] = {}
    packed_bytes = 0
    for name, node in nodes.items():
        tensor = initializers[name]
        matrix = _as_matrix(node, initializer_array(tensor, folder))
        n, k = matrix.shape
        block, search = layouts[name]
        packed, scales = quantize_blockwise_int4(matrix, block, search)
        q_name, scale_name = f"{name}_int4", f"{name}_scale4"
        tensor.CopyFrom(numpy_helper.from_array(packed, q_name))
        graph.initializer.append(numpy_helper.from_array(scales, scale_name))
        if node.op_type == "Conv":
            replacement, constants = conv_as_matmul_nbits(node, q_name, scale_name, n, k, block)
            graph.initializer.extend(constants)
            replaced[id(node)] = replacement
        else:  # a MatMul, or a Gemm with its C as the bias
            bias = node.input[2] if node.op_type == "Gemm" and len(node.input) > 2 and node.input[2] else None
            replaced[id(node)] = matmul_nbits_nodes(node.input[0], q_name, scale_name, bias, node.output[0],
                                             node.name or name, n, k, block)
        packed_bytes += packed.nbytes + scales.nbytes
    if replaced:
        order = [new for node in graph.node for new in replaced.get(id(node), [node])]
        del graph.node[:]
        graph.node.extend(order)
    if nodes and not any(op.domain == "com.microsoft" for op in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return packed_bytes


def quantize_w4a32(src: Path, dest: Path, calibration: dict[str, np.ndarray], *, convs: bool = False,
                   max_layer_error: float = INT4_MAX_LAYER_ERROR) -> dict[str, Any]:
    """Write ``src`` (fp32 ONNX) to ``dest``: 4-bit weights where measured to hold, the rest as in
    :func:`quantize_w8a32`. The candidates are the MatMuls and (``convs``) the convolutions of the
    :data:`INT4_CONV_LEVELS` deepest resolution levels; those reading :data:`INT4_INT8_READERS_OF` stay int8.
    Returns the counts plus ``layers``: per candidate (node name) the width, block and scale rule chosen, the
    measured 4-bit error with them (with the finest block for an int8 layer), and a convolution's output side
    on the calibration inputs."""
    from zoodip_export.onnx_export import load_graph

    src = Path(src)
    model = load_graph(src)
    candidates = int4_candidates(model.graph, convs=convs)
    kept = {name for name, node in candidates.items() if node.input[0] in INT4_INT8_READERS_OF}
    errors, sides = measure_int4_errors(src, model, candidates, calibration) if candidates else ({}, {})
    # Resolution levels halve the side: the deepest INT4_CONV_LEVELS are within 2**(levels-1) of the smallest.
    max_side = min(sides.values()) * 2 ** (INT4_CONV_LEVELS - 1) if sides else 0
    dims = {t.name: [int(d) for d in t.dims] for t in model.graph.initializer if t.name in candidates}
    layouts: dict[str, tuple[int, bool]] = {}
    layers: dict[str, dict[str, Any]] = {}
    for name, node in candidates.items():
        n, k = _matrix_shape(node, dims[name])
        finest = errors[name][INT4_BLOCK][0] * INT4_COARSE_BLOCK_SLACK
        holding = [block for block, (error, _) in errors[name].items()
                   if error <= max_layer_error and (block == INT4_BLOCK or error <= finest)]
        if holding and sides.get(name, 0) <= max_side and name not in kept:
            block = min(holding, key=lambda block: (int4_bytes(n, k, block), -block))
            layouts[name] = (block, errors[name][block][1])
        error, search = errors[name][layouts.get(name, (INT4_BLOCK,))[0]]
        record = layers[node.name] = {"bits": 4 if name in layouts else 8, "block": layouts.get(name, (None,))[0],
                                      "scale_search": search, "int4_error": round(error, 6)}
        if name in sides:
            record["side"] = sides[name]
    packed_bytes = _to_matmul_nbits(model, src.parent, {name: candidates[name] for name in layouts}, layouts)
    stats: dict[str, Any] = dict(quantize_w8a32(src, dest, model=model))
    stats.update({"int4": len(layouts), "int4_bytes": packed_bytes, "int4_blocks": list(INT4_BLOCKS),
                  "max_layer_error": max_layer_error, "int4_conv_max_side": max_side,
                  "int8_readers_of": list(INT4_INT8_READERS_OF), "layers": layers})
    return stats

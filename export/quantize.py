"""Quantization recipes for the exported graphs, and the onnxruntime session settings each one needs.

``w8a32`` (default): weight-only INT8. Every large weight feeding a Conv/ConvTranspose/MatMul/Gemm
becomes an int8 initializer with one fp32 scale per output channel, dequantized in the graph by a
``DequantizeLinear`` node; activations stay fp32. That keeps the loss a smooth function of the
text embedding, which is what forward-only (finite-difference) training needs. It only stays that
way if onnxruntime is told not to rewrite the graph (see :data:`SESSION_SETTINGS`).

``w4a32`` (opt-in): 4-bit weights where they hold, activations fp32. In the UNet and the VAE, each
MatMul weight whose 4-bit version changes that layer's output (measured on the graph's own parity inputs)
by at most :data:`INT4_MAX_LAYER_ERROR` becomes onnxruntime's ``MatMulNBits`` (com.microsoft; blocks of
:data:`INT4_BLOCK` weights along K with one fp32 scale each, ``accuracy_level=1``: the weights are
unpacked inside the GEMM and multiplied in fp32, so activations are never quantized and no fp32
copy of the weight exists). Every other weight gets the ``w8a32`` treatment. Convolutions stay
int8: onnxruntime 1.32's CPU ``DequantizeLinear`` unpacks int4 several times slower than int8 and
has no 4-bit convolution kernel (README.md of benchmarks/ has the measurement). The text encoder stays
``w8a32`` whole (:data:`W4A32_INT8_GRAPHS`): its 4-bit layers each pass the per-layer limit but their
errors compound through its stacked layers, and on SD1.5's architecture that turned the finite
differences away from the true gradient (benchmarks/README.md, "4-bit weights"), for a few percent of
the weight bytes.

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

from zoodip_export.quantize_int8 import (DEFAULT_MAX_WEIGHT_MIB, MIN_QUANT_ELEMENTS,  # noqa: F401 (public here too)
                                         quantize_per_channel, quantize_w8a32)

# (zoodip_export.onnx_export is imported inside the functions: it pulls in torch, and the CLI's
# --help and the session helpers below should not have to.)

RECIPES: tuple[str, ...] = ("w8a32", "w4a32", "dynamic-int8", "fp32")
RECIPE_PRECISION = {"w8a32": "int8", "w4a32": "int8", "dynamic-int8": "int8", "fp32": "fp32"}
DEFAULT_RECIPE = {"int8": "w8a32", "fp32": "fp32"}

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
RECIPE_REVISION: dict[str, int] = {"w8a32": 3, "w4a32": 2, "dynamic-int8": 1, "fp32": 1}
# Graphs the w4a32 recipe keeps entirely in w8a32 (see the module docstring).
W4A32_INT8_GRAPHS: tuple[str, ...] = ("text_encoder",)

DYNAMIC_INT8_WARNING = (
    "WARNING: recipe 'dynamic-int8' quantizes activations at run time: the loss becomes piecewise constant "
    "at the finite-difference scale and forward-only gradients turn into noise. Use 'w8a32' for training."
)

def session_options(session: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
    """``(SessionOptions, extra InferenceSession kwargs)`` for a manifest ``session`` entry."""
    import onnxruntime as ort
    from zoodip.model import apply_export_session

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


# --- w4a32: 4-bit MatMul weights where they hold -------------------------------------------------

# Weights per 4-bit block (one fp32 scale each, along K). 32 is the finest block MatMulNBits packs,
# and the most accurate: the scale costs 1 bit per weight on top of the 4.
INT4_BLOCK = 32
# A MatMul weight goes 4-bit when that alone changes the layer's output on the calibration inputs by
# at most this (relative L2 error); otherwise it stays int8. A choice, not a measurement: the
# measured errors per layer are in the manifest (``graphs.<name>.quantization``).
INT4_MAX_LAYER_ERROR = 0.1
# Rows of a layer's input used to measure its error (a random subset when it has more).
_ERROR_ROWS = 4096


def quantize_blockwise_int4(weights_nk: np.ndarray, block: int = INT4_BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric 4-bit blocks along K of an ``[N, K]`` matrix, in ``MatMulNBits``' layout.

    Returns ``(packed, scales)``: ``packed`` uint8 ``[N, ceil(K/block), block/2]`` (two weights a byte,
    the even one in the low nibble, stored as ``q + 8`` with ``q`` in [-8, 7]: MatMulNBits' default
    zero point), ``scales`` fp32 ``[N, ceil(K/block)]``. K is padded with zeros to whole blocks.
    """
    n, k = weights_nk.shape
    blocks = -(-k // block)
    padded = np.zeros((n, blocks * block), np.float32)
    padded[:, :k] = weights_nk
    grouped = padded.reshape(n, blocks, block)
    max_abs = np.abs(grouped).max(axis=2)
    scales = np.where(max_abs > 0, max_abs / 7.0, 1.0).astype(np.float32)
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


def int4_candidates(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    """MatMul nodes that MatMulNBits can replace, by weight name: B an fp32 ``[K, N]`` initializer
    read by this node alone, large enough to be worth it and K at least one block."""
    initializers = {t.name: t for t in graph.initializer}
    readers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    found: dict[str, onnx.NodeProto] = {}
    for node in graph.node:
        if node.op_type != "MatMul" or len(node.input) != 2:
            continue
        tensor = initializers.get(node.input[1])
        if (tensor is None or tensor.data_type != onnx.TensorProto.FLOAT or len(tensor.dims) != 2
                or readers[tensor.name] != 1 or int(np.prod(tensor.dims)) < MIN_QUANT_ELEMENTS
                or tensor.dims[0] < INT4_BLOCK):
            continue
        found[tensor.name] = node
    return found


def measure_int4_errors(src: Path, model: onnx.ModelProto, candidates: dict[str, onnx.NodeProto],
                        calibration: dict[str, np.ndarray], block: int = INT4_BLOCK) -> dict[str, float]:
    """Per candidate weight: ``||X (W4 - W)|| / ||X W||`` on the layer's real inputs ``X``.

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
    errors: dict[str, float] = {}
    for name, node in candidates.items():
        weights = initializer_array(initializers[name], src.parent).astype(np.float32)  # [K, N]
        x = values[node.input[0]].reshape(-1, weights.shape[0])
        if len(x) > _ERROR_ROWS:
            x = x[rng.choice(len(x), _ERROR_ROWS, replace=False)]
        packed, scales = quantize_blockwise_int4(np.ascontiguousarray(weights.T), block)
        exact = x @ weights
        diff = x @ (dequantize_blockwise_int4(packed, scales, weights.shape[0]).T - weights)
        norm = float(np.linalg.norm(exact))
        errors[name] = float(np.linalg.norm(diff)) / norm if norm > 0 else 0.0
    return errors


def _to_matmul_nbits(model: onnx.ModelProto, folder: Path, nodes: dict[str, onnx.NodeProto],
                     block: int = INT4_BLOCK) -> int:
    """Replace each ``nodes`` MatMul (by weight name) with a 4-bit MatMulNBits; returns packed bytes."""
    from zoodip_export.onnx_export import initializer_array

    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    packed_bytes = 0
    for name, node in nodes.items():
        tensor = initializers[name]
        k, n = (int(d) for d in tensor.dims)
        packed, scales = quantize_blockwise_int4(np.ascontiguousarray(initializer_array(tensor, folder).T), block)
        q_name, scale_name = f"{name}_int4", f"{name}_scale4"
        tensor.CopyFrom(numpy_helper.from_array(packed, q_name))
        graph.initializer.append(numpy_helper.from_array(scales, scale_name))
        # accuracy_level=1: fp32 compute (levels 2-4 would quantize the activations).
        node.CopyFrom(helper.make_node("MatMulNBits", [node.input[0], q_name, scale_name], list(node.output),
                                       name=node.name, domain="com.microsoft", K=k, N=n, bits=4,
                                       block_size=block, accuracy_level=1))
        packed_bytes += packed.nbytes
    if nodes and not any(op.domain == "com.microsoft" for op in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return packed_bytes


def quantize_w4a32(src: Path, dest: Path, calibration: dict[str, np.ndarray],
                   max_layer_error: float = INT4_MAX_LAYER_ERROR) -> dict[str, Any]:
    """Write ``src`` (fp32 ONNX) to ``dest``: 4-bit MatMul weights where measured to hold, the rest
    as in :func:`quantize_w8a32`. Returns its counts plus ``layers``: per candidate MatMul (node
    name) the measured 4-bit error and the width chosen."""
    from zoodip_export.onnx_export import load_graph

    src = Path(src)
    model = load_graph(src)
    candidates = int4_candidates(model.graph)
    errors = measure_int4_errors(src, model, candidates, calibration) if candidates else {}
    chosen = {name: node for name, node in candidates.items() if errors[name] <= max_layer_error}
    layers = {node.name: {"bits": 4 if name in chosen else 8, "int4_error": round(errors[name], 6)}
              for name, node in candidates.items()}
    packed_bytes = _to_matmul_nbits(model, src.parent, chosen)
    stats: dict[str, Any] = dict(quantize_w8a32(src, dest, model=model))
    stats.update({"int4": len(chosen), "int4_bytes": packed_bytes, "int4_block": INT4_BLOCK,
                  "max_layer_error": max_layer_error,
                  "layers": layers})
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
        return quantize_w4a32(src, dest, calibration)
    if recipe == "dynamic-int8":
        return quantize_dynamic_int8(src, dest, warn=warn)
    if recipe == "fp32":
        from zoodip_export.onnx_export import load_graph, write_onnx

        write_onnx(load_graph(src), Path(src).parent, dest)
        return {"quantized": 0, "kept_fp32": 0, "int8_bytes": 0}
    raise ValueError(f"unknown recipe {recipe!r}")

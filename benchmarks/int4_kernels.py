"""Time one SD1.5-sized layer in onnxruntime (CPU) with each weight layout a 4-bit recipe could use.

    python benchmarks/int4_kernels.py [--threads 2] [--repeats 5]

Why: a weight-only recipe dequantizes (or unpacks) its weights on every call, so the kernel that does
it decides the speed. Layouts: fp32 weights; int8 per-channel ``DequantizeLinear`` (the w8a32 recipe);
int4 ``DequantizeLinear`` (ONNX opset 21) per channel or in blocks of 32 along the input channels;
``com.microsoft.MatMulNBits`` with fp32 compute (``accuracy_level`` 1), for convolutions through im2col
(onnxruntime has no 4-bit convolution). Prints a
Markdown table of milliseconds per call (median). Weights are random: the time does not depend on them.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file: the repository's benchmarks

from zoodip.console import interrupts_said_from_here  # noqa: E402

interrupts_said_from_here(__name__)  # (a Ctrl-C during the imports below, NumPy's among them: one line, not a traceback)

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from benchmarks._quality_report import run_line  # noqa: E402
from zoodip.console import OneLineParser, print_error, script_main  # noqa: E402
from zoodip.errors import ZoodipError  # noqa: E402
from zoodip.validation import positive_int  # noqa: E402

BLOCK = 32
# (kind, output channels / N, input channels / K, spatial side or rows): 3x3 UNet convolutions of SD1.5 at
# 512 px from the deepest level (8x8, an up block's, where the weight mass is) to the shallowest (64x64),
# and two linear layers.
LAYERS = [("conv3x3", 1280, 2560, 8), ("conv3x3", 1280, 1280, 16), ("conv3x3", 640, 640, 32),
          ("conv3x3", 320, 320, 64), ("matmul", 10240, 1280, 256), ("matmul", 320, 1280, 4096)]


def _int4(name: str, q: np.ndarray) -> onnx.TensorProto:
    flat = (q.reshape(-1).astype(np.int16) & 0xF).astype(np.uint8)
    if flat.size % 2:
        flat = np.append(flat, np.uint8(0))
    return helper.make_tensor(name, TensorProto.INT4, list(q.shape), (flat[0::2] | (flat[1::2] << 4)).tobytes(), raw=True)


def _weight_nodes(layout: str, shape: tuple[int, ...], rng: np.random.Generator) -> tuple[list, list]:
    """Nodes and initializers producing fp32 weight ``w`` of ``shape`` in ``layout``."""
    if layout == "fp32":
        return [], [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), "w")]
    if layout == "int8":
        q = rng.integers(-127, 128, shape).astype(np.int8)
        return ([helper.make_node("DequantizeLinear", ["q", "s", "z"], ["w"], axis=0)],
                [numpy_helper.from_array(q, "q"), numpy_helper.from_array(np.ones(shape[0], np.float32), "s"),
                 numpy_helper.from_array(np.zeros(shape[0], np.int8), "z")])
    q = rng.integers(-8, 8, shape).astype(np.int8)
    if layout == "int4-channel":
        return ([helper.make_node("DequantizeLinear", ["q", "s"], ["w"], axis=0)],
                [_int4("q", q), numpy_helper.from_array(np.ones(shape[0], np.float32), "s")])
    scale_shape = list(shape)
    scale_shape[1] = -(-shape[1] // BLOCK)
    return ([helper.make_node("DequantizeLinear", ["q", "s"], ["w"], axis=1, block_size=BLOCK)],
            [_int4("q", q), numpy_helper.from_array(np.ones(scale_shape, np.float32), "s")])


def _random_packed(n: int, k: int, rng: np.random.Generator) -> list:
    """Initializers ``b`` and ``s``: a random ``[n, k]`` weight in 4-bit blocks of :data:`BLOCK` (MatMulNBits' layout)."""
    blocks = -(-k // BLOCK)
    packed = rng.integers(0, 256, (n, blocks, BLOCK // 2)).astype(np.uint8)
    return [numpy_helper.from_array(packed, "b"), numpy_helper.from_array(np.ones((n, blocks), np.float32), "s")]


def _as_matmulnbits(kind: str, n: int, k: int, rng: np.random.Generator) -> tuple[list, list]:
    """The layer as the w4a32 recipe writes it, with random 4-bit weights: one ``MatMulNBits`` with fp32
    compute (``zoodip_export.quantize_int4.matmul_nbits_nodes``), for a 3x3 convolution (padding 1) after
    im2col (``conv_as_matmul_nbits``; onnxruntime has no 4-bit Conv)."""
    from zoodip_export.quantize_int4 import conv_as_matmul_nbits, matmul_nbits_nodes

    if kind == "matmul":
        return matmul_nbits_nodes("x", "b", "s", None, "y", "matmul", n, k, BLOCK), _random_packed(n, k, rng)
    conv = helper.make_node("Conv", ["x", "w"], ["y"], name="conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    nodes, inits = conv_as_matmul_nbits(conv, "b", "s", n, 9 * k, BLOCK)
    return nodes, inits + _random_packed(n, 9 * k, rng)


def layer_model(kind: str, n: int, k: int, side: int, layout: str, seed: int = 0) -> tuple[onnx.ModelProto, dict]:
    rng = np.random.default_rng(seed)
    if kind == "conv3x3":
        x = rng.standard_normal((2, k, side, side)).astype(np.float32)
        out = [2, n, side, side]
        if layout == "matmulnbits":
            nodes, inits = _as_matmulnbits(kind, n, k, rng)
        else:
            nodes, inits = _weight_nodes(layout, (n, k, 3, 3), rng)
            nodes.append(helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1]))
    else:
        x = rng.standard_normal((side, k)).astype(np.float32)
        out = [side, n]
        if layout == "matmulnbits":
            nodes, inits = _as_matmulnbits(kind, n, k, rng)
        else:  # weights stored [N, K], read transposed, as the w8a32 recipe does
            nodes, inits = _weight_nodes(layout, (n, k), rng)
            nodes.append(helper.make_node("FusedMatMul", ["x", "w"], ["y"], domain="com.microsoft", transB=1))
    graph = helper.make_graph(nodes, "layer", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 10
    return model, {"x": x}


def time_layer(model: onnx.ModelProto, feeds: dict, threads: int, repeats: int) -> float:
    """Median ms per call with the w8a32 recipe's session settings."""
    options = ort.SessionOptions()
    options.add_session_config_entry("session.disable_quant_qdq", "1")
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"],
                                   disabled_optimizers=["ConstantFolding"])
    session.run(None, feeds)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


MAX_REPEATS = (1000, "timed calls of every layer in every layout")


@script_main("nothing was written")
def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="python benchmarks/int4_kernels.py", description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    try:
        args = parser.parse_args(argv)
        if args.threads < 0 or args.repeats < 1:
            parser.error("--threads must be 0 (onnxruntime's default) or more and --repeats at least 1")
        positive_int("--repeats", args.repeats, 1, *MAX_REPEATS)
    except ZoodipError as exc:
        return print_error(exc)
    layouts = ["fp32", "int8", "int4-channel", "int4-block32", "matmulnbits"]
    print(f"python benchmarks/int4_kernels.py --threads {args.threads} --repeats {args.repeats}\n{run_line()}")
    threads = f"{args.threads} threads" if args.threads else "onnxruntime's default threads"
    print(f"{threads}, median of {args.repeats} (ms per call)\n")
    print("| layer | " + " | ".join(layouts) + " |")
    print("|---|" + "---|" * len(layouts))
    for kind, n, k, side in LAYERS:
        cells = []
        for layout in layouts:
            cells.append(f"{time_layer(*layer_model(kind, n, k, side, layout), args.threads, args.repeats):.0f}")
        where = f"{side}x{side} x2" if kind == "conv3x3" else f"{side} rows"
        print(f"| {kind} {k}->{n}, {where} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

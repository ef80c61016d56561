"""w4a32's 4-bit layers beyond MatMul. Convolutions: the im2col + MatMulNBits rewrite computes the
convolution with the 4-bit weights (any spatial size, stride 1 or 2, 1x1 or 3x3, with or without bias),
its measured error is the layer's real error, and only the deepest resolution levels of a graph are
rewritten. Gemm: its bias becomes an Add after the MatMulNBits."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

pytest.importorskip("torch")  # zoodip_export.onnx_export (initializer reading) imports it

from zoodip_export.quantize import SESSION_SETTINGS, open_session  # noqa: E402
from zoodip_export.quantize_int4 import INT4_CONV_LEVELS, dequantize_blockwise_int4, quantize_w4a32  # noqa: E402

OPSET = [helper.make_opsetid("", 17)]


def _conv(name: str, x: str, y: str, weight: np.ndarray, stride: int, bias: np.ndarray | None = None
          ) -> tuple[onnx.NodeProto, list[onnx.TensorProto]]:
    k = weight.shape[-1]
    inits = [numpy_helper.from_array(weight, f"{name}.w")]
    inputs = [x, f"{name}.w"]
    if bias is not None:
        inits.append(numpy_helper.from_array(bias, f"{name}.b"))
        inputs.append(f"{name}.b")
    node = helper.make_node("Conv", inputs, [y], name=name, kernel_shape=[k, k], strides=[stride, stride],
                            pads=[k // 2] * 4)
    return node, inits


def _save(nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], channels: int, path: Path) -> Path:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT,
                                                                         [None, channels, None, None])],
                              [helper.make_tensor_value_info(nodes[-1].output[0], onnx.TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=OPSET)
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _run(path: Path, x: np.ndarray, session: dict | None = None) -> np.ndarray:
    if session is None:
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    return open_session(path, session).run(None, {"x": x})[0]


@pytest.mark.parametrize("kernel,stride,bias", [(3, 1, True), (3, 2, True), (3, 2, False), (1, 1, True)])
def test_the_rewrite_is_the_convolution_with_its_4bit_weights(kernel: int, stride: int, bias: bool,
                                                              tmp_path: Path) -> None:
    rng = np.random.default_rng(kernel * 10 + stride)
    c_in, c_out = 40, 24  # K = 40 * 9 = 360: not a whole number of 32-blocks
    weight = rng.standard_normal((c_out, c_in, kernel, kernel)).astype(np.float32)
    node, inits = _conv("c", "x", "y", weight, stride, rng.standard_normal(c_out).astype(np.float32) if bias else None)
    src = _save([node], inits, c_in, tmp_path / "src.onnx")
    calibration = rng.standard_normal((2, c_in, 9, 9)).astype(np.float32)
    stats = quantize_w4a32(src, tmp_path / "w4.onnx", {"x": calibration}, convs=True, max_layer_error=1.0)
    written = onnx.load(str(tmp_path / "w4.onnx")).graph
    assert stats["layers"]["c"]["bits"] == 4 and not [n for n in written.node if n.op_type == "Conv"]
    # The reference: the same Conv with the weights the 4-bit blocks stand for.
    tensors = {t.name: numpy_helper.to_array(t) for t in written.initializer}
    restored = dequantize_blockwise_int4(tensors["c.w_int4"], tensors["c.w_scale4"], c_in * kernel * kernel)
    restored = restored.reshape(c_out, kernel, kernel, c_in).transpose(0, 3, 1, 2)
    reference = _save([node], [numpy_helper.from_array(np.ascontiguousarray(restored), "c.w"), *inits[1:]], c_in,
                      tmp_path / "reference.onnx")
    for x in (calibration, rng.standard_normal((1, c_in, 11, 10)).astype(np.float32)):  # sizes stay dynamic
        got, want = _run(tmp_path / "w4.onnx", x, SESSION_SETTINGS["w4a32"]), _run(reference, x)
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    # The recorded error is the layer's: every output position of the calibration input is sampled here.
    exact = _run(src, calibration)
    got = _run(tmp_path / "w4.onnx", calibration, SESSION_SETTINGS["w4a32"])
    biases = numpy_helper.to_array(inits[1])[None, :, None, None] if bias else 0.0  # not part of X W
    actual = np.linalg.norm(got - exact) / np.linalg.norm(exact - biases)
    assert stats["layers"]["c"]["int4_error"] == pytest.approx(actual, rel=1e-3)


def test_only_the_deepest_levels_and_only_where_asked(tmp_path: Path) -> None:
    """Sides 16 -> 8 -> 4 -> 2: the convolutions whose output is at the two smallest sides go 4-bit."""
    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "x"
    for i, stride in enumerate([1, 2, 1, 2, 1, 2, 1]):
        node, weights = _conv(f"c{i}", x, f"y{i}", rng.standard_normal((32, 32, 3, 3)).astype(np.float32) * 0.1, stride)
        nodes.append(node)
        inits += weights
        x = f"y{i}"
    src = _save(nodes, inits, 32, tmp_path / "src.onnx")
    calibration = {"x": rng.standard_normal((1, 32, 16, 16)).astype(np.float32)}
    stats = quantize_w4a32(src, tmp_path / "w4.onnx", calibration, convs=True, max_layer_error=1.0)
    sides = {name: record["side"] for name, record in stats["layers"].items()}
    assert sides == {"c0": 16, "c1": 8, "c2": 8, "c3": 4, "c4": 4, "c5": 2, "c6": 2}
    assert INT4_CONV_LEVELS == 2 and stats["int4_conv_max_side"] == 4
    assert {name for name, record in stats["layers"].items() if record["bits"] == 4} == {"c3", "c4", "c5", "c6"}
    np.testing.assert_allclose(_run(tmp_path / "w4.onnx", calibration["x"], SESSION_SETTINGS["w4a32"]),
                               _run(src, calibration["x"]), rtol=0.3, atol=0.3 * np.abs(_run(src, calibration["x"])).max())
    # Without convs=True (every graph but the UNet) no convolution is even a candidate.
    assert quantize_w4a32(src, tmp_path / "w8.onnx", calibration)["layers"] == {}


@pytest.mark.parametrize("trans_b,bias", [(1, True), (0, False)])
def test_a_gemm_becomes_matmul_nbits_and_its_bias_an_add(trans_b: int, bias: bool, tmp_path: Path) -> None:
    rng = np.random.default_rng(trans_b)
    k, n = 96, 40
    weight = rng.standard_normal((n, k) if trans_b else (k, n)).astype(np.float32)
    inits = [numpy_helper.from_array(weight, "w")] + ([numpy_helper.from_array(rng.standard_normal(n).astype(np.float32), "b")]
                                                      if bias else [])
    node = helper.make_node("Gemm", ["x", "w"] + (["b"] if bias else []), ["y"], name="g", transB=trans_b)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [None, k])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=OPSET)
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "src.onnx"))
    x = rng.standard_normal((3, k)).astype(np.float32)
    stats = quantize_w4a32(tmp_path / "src.onnx", tmp_path / "w4.onnx", {"x": x}, max_layer_error=1.0)
    written = onnx.load(str(tmp_path / "w4.onnx")).graph
    assert [n.op_type for n in written.node] == ["MatMulNBits"] + (["Add"] if bias else [])
    tensors = {t.name: numpy_helper.to_array(t) for t in written.initializer}
    restored = dequantize_blockwise_int4(tensors["w_int4"], tensors["w_scale4"], k)  # [N, K]
    want = x @ restored.T + (tensors["b"] if bias else 0.0)
    got = open_session(tmp_path / "w4.onnx", SESSION_SETTINGS["w4a32"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    assert stats["layers"]["g"]["bits"] == 4 and stats["layers"]["g"]["block"] in stats["int4_blocks"]


def test_each_layer_gets_the_scale_rule_that_changes_its_output_less(tmp_path: Path) -> None:
    """Searched scales cut the weight error; whether they cut the output error depends on the inputs.
    One layer with outlier weights and zero-mean inputs (the search pays), one with uniform weights and
    positive inputs (clipping errs to one side and adds up): each gets the better rule, measured."""
    from zoodip_export.quantize_int4 import INT4_BLOCK, quantize_blockwise_int4

    rng = np.random.default_rng(0)
    k, n = 256, 64
    heavy = rng.standard_t(2, (k, n)).astype(np.float32)
    uniform = rng.uniform(-1, 1, (k, n)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "heavy"], ["a"], name="heavy"),
             helper.make_node("MatMul", ["p", "uniform"], ["b"], name="uniform")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [None, k]),
                                           helper.make_tensor_value_info("p", onnx.TensorProto.FLOAT, [None, k])],
                              [helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None) for name in "ab"],
                              [numpy_helper.from_array(heavy, "heavy"), numpy_helper.from_array(uniform, "uniform")])
    model = helper.make_model(graph, opset_imports=OPSET)
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "src.onnx"))
    x = rng.standard_normal((512, k)).astype(np.float32)
    p = np.abs(rng.standard_normal((512, k))).astype(np.float32) + 1.0
    layers = quantize_w4a32(tmp_path / "src.onnx", tmp_path / "w4.onnx", {"x": x, "p": p}, max_layer_error=1.0)["layers"]

    def output_error(weights: np.ndarray, rows: np.ndarray, block: int, search: bool) -> float:
        restored = dequantize_blockwise_int4(*quantize_blockwise_int4(np.ascontiguousarray(weights.T), block, search), k)
        return float(np.linalg.norm(rows @ (restored.T - weights)) / np.linalg.norm(rows @ weights))

    for name, weights, rows in (("heavy", heavy, x), ("uniform", uniform, p)):
        record = layers[name]
        errors = {search: output_error(weights, rows, record["block"], search) for search in (True, False)}
        assert record["scale_search"] == (errors[True] < errors[False]), (name, errors)
        assert record["int4_error"] == pytest.approx(min(errors.values()), rel=1e-4)
    assert layers["heavy"]["scale_search"] and not layers["uniform"]["scale_search"]
    assert layers["heavy"]["block"] == INT4_BLOCK  # with outliers a coarser block costs more than the slack allows

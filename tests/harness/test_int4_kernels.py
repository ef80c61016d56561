"""benchmarks/int4_kernels.py: every layout it times computes the same layer (so the table compares
like with like), and the script prints its table."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from onnx import numpy_helper

pytest.importorskip("torch")  # the convolution layout comes from zoodip_export.quantize

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

import int4_kernels  # noqa: E402

from zoodip_export.quantize_int4 import dequantize_blockwise_int4  # noqa: E402


@pytest.mark.parametrize("kind,n,k,side", [("conv3x3", 24, 40, 7), ("matmul", 24, 64, 5)])
def test_the_matmulnbits_layout_computes_the_layer(kind: str, n: int, k: int, side: int) -> None:
    model, feeds = int4_kernels.layer_model(kind, n, k, side, "matmulnbits")
    (got,) = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    tensors = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    # [n, K] (K padded to whole blocks), in (row, column, channel) order along K for the convolution
    weights = dequantize_blockwise_int4(tensors["b"], tensors["s"], tensors["b"].shape[1] * int4_kernels.BLOCK)
    x = feeds["x"]
    if kind == "matmul":
        want = x @ weights[:, :k].T
    else:
        w = weights[:, :9 * k].reshape(n, 3, 3, k).transpose(0, 3, 1, 2)  # back to [n, k, 3, 3]
        padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
        want = sum(np.einsum("bchw,oc->bohw", padded[:, :, dy:dy + side, dx:dx + side], w[:, :, dy, dx])
                   for dy in range(3) for dx in range(3))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_the_script_prints_its_table(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(int4_kernels, "LAYERS", [("conv3x3", 16, 32, 6), ("matmul", 16, 32, 8)])
    assert int4_kernels.main(["--repeats", "1", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    table = [line for line in out.splitlines() if line.startswith("| ")]
    command, when = out.splitlines()[:2]  # what ran, when and where: a table of timings means nothing without them
    assert command == "python benchmarks/int4_kernels.py --threads 1 --repeats 1" and "cores)" in when
    assert len(table) == 1 + 2 and all(len(line.split("|")) == 2 + 1 + 5 for line in table)

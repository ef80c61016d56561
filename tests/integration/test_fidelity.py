"""The property the whole method rests on: the SDK's finite differences through the INT8 graphs
track the true gradient of the textual-inversion loss.

The SDK's own DenoisingLoss (text encoder + UNet, the W8A32 and the default W4A32 export, their session options, the
default perturbation mu=1e-3) gives finite-difference directional derivatives; torch autograd on
the fp32 model gives the exact ones. They must correlate over many random directions.
"""
from __future__ import annotations

import pytest

from benchmarks._fidelity import DIRECTIONS, MU, finite_difference_fidelity
from zoodip.model import ExportedModel, RuntimeOptions

torch = pytest.importorskip("torch")


# Measured on the tiny model (seed 0): W8A32 0.9998, W4A32 0.988 (its text encoder, random and only
# 32 wide, drifts 0.19 from fp32). The bounds leave room for onnxruntime versions and machines.
@pytest.mark.parametrize("recipe,bound", [("w8a32", 0.9), ("w4a32", 0.9)])
def test_quantized_finite_differences_correlate_with_autograd(request, tiny_sd_folder, photos, recipe, bound):
    export = request.getfixturevalue({"w8a32": "tiny_export", "w4a32": "tiny_w4_export"}[recipe])
    assert ExportedModel.load(export, RuntimeOptions(threads=1)).manifest["recipe"] == recipe
    correlation, slope = finite_difference_fidelity(export, tiny_sd_folder, photos)
    print(f"finite-difference fidelity ({recipe}, mu={MU}, {DIRECTIONS} directions): {correlation:.4f}")
    assert correlation >= bound
    # Not a sign-only agreement: the magnitudes match too (quantization changes the model a little).
    assert 0.5 < slope < 1.5


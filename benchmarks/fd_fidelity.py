"""Finite-difference fidelity of exports: correlation of the SDK's finite differences (mu=1e-3) with
torch autograd on the fp32 source model, over 48 random directions (the check of tests/integration/test_fidelity.py,
for any diffusers folder and its exports).

    python benchmarks/fd_fidelity.py SOURCE_FOLDER EXPORT [EXPORT ...]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import test_fidelity as fidelity  # noqa: E402  (one definition of the fixed problem and of the exact gradient)
from zoodip.model import ExportedModel, RuntimeOptions  # noqa: E402
from zoodip.denoising_loss import DenoisingLoss  # noqa: E402

PHOTOS = REPO / "sdk" / "zoodip" / "data" / "example_concept"


def measure(source: Path, export: Path) -> tuple[float, float]:
    """(correlation, least-squares slope) of finite differences against autograd."""
    model = ExportedModel.load(export, RuntimeOptions(threads=1))
    placeholder, ids, v0, x_t, t, target, z = fidelity._fixed_problem(model, PHOTOS)
    loss = DenoisingLoss(model, placeholder, batched=True)
    losses = loss(ids, np.concatenate([v0[None], v0[None] + fidelity.MU * z]), x_t, t, target)
    finite = (losses[1:] - losses[0]) / fidelity.MU
    exact = fidelity._autograd_directional(source, loss, ids, v0, x_t, t, target, z)
    return float(np.corrcoef(finite, exact)[0, 1]), float(np.dot(finite, exact) / np.dot(exact, exact))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="the diffusers folder the exports were made from")
    parser.add_argument("exports", type=Path, nargs="+")
    args = parser.parse_args(argv)
    print("| export | recipe | fidelity | slope |\n|---|---|---|---|")
    for export in args.exports:
        correlation, slope = measure(args.source, export)
        recipe = ExportedModel.load(export).manifest["recipe"]
        print(f"| {export.name} | {recipe} | {correlation:.4f} | {slope:.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

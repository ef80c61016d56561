"""Finite-difference fidelity of exports: correlation of the SDK's finite differences (mu=1e-3) with
torch autograd on the fp32 source model, over 48 random directions (the check of tests/integration/test_fidelity.py,
for any diffusers folder and its exports).

    python benchmarks/fd_fidelity.py SOURCE_FOLDER EXPORT [EXPORT ...]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from fidelity_helpers import finite_difference_fidelity  # noqa: E402  (the check tests/integration/test_fidelity.py makes)
from zoodip.model import ExportedModel  # noqa: E402

PHOTOS = REPO / "sdk" / "zoodip" / "data" / "example_concept"


def measure(source: Path, export: Path) -> tuple[float, float]:
    """(correlation, least-squares slope) of finite differences against autograd."""
    return finite_difference_fidelity(export, source, PHOTOS)


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

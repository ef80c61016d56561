"""Finite-difference fidelity of exports: correlation of the SDK's finite differences (mu=1e-3) with
torch autograd on the fp32 source model, over random directions (48 by default: the check of tests/integration/test_fidelity.py,
for any diffusers folder and its exports).

    python benchmarks/fd_fidelity.py SOURCE_FOLDER EXPORT [EXPORT ...] [--seed S] [--directions N] [--mu MU ...]

``--mu`` with several values measures how small the perturbation may be before float32 rounding takes over.
"""
from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from zoodip.console import interrupts_said_from_here  # noqa: E402

interrupts_said_from_here(__name__)  # (a Ctrl-C during the imports below, NumPy's among them: one line, not a traceback)

from _fidelity import DIRECTIONS, MU, SEED, finite_difference_fidelity  # noqa: E402  (the check tests/integration/test_fidelity.py makes)
from zoodip.console import OneLineParser, print_error, script_main  # noqa: E402
from zoodip.errors import ZoodipError  # noqa: E402
from zoodip.model import ExportedModel, read_manifest  # noqa: E402
from zoodip.validation import finite_float, positive_int  # noqa: E402

PHOTOS = REPO / "sdk" / "zoodip" / "data" / "example_concept"


def measure(source: Path, export: Path, seed: int = SEED, directions: int = DIRECTIONS,
            mu: float = MU) -> tuple[float, float]:
    """(correlation, least-squares slope) of finite differences against autograd."""
    return finite_difference_fidelity(export, source, PHOTOS, seed, directions, mu)


MAX_DIRECTIONS = (100_000, "each is a UNet forward pair and an autograd product per export")


@script_main("nothing was written")
def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="python benchmarks/fd_fidelity.py", description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="the diffusers folder the exports were made from")
    parser.add_argument("exports", type=Path, nargs="+")
    parser.add_argument("--seed", type=int, default=SEED, help="draws the noise and the directions (default: the tests' sample)")
    parser.add_argument("--directions", type=int, default=DIRECTIONS, help=f"random directions (evaluated {DIRECTIONS} at a time)")
    parser.add_argument("--mu", type=float, nargs="+", default=[MU], help=f"perturbation sizes (default {MU:g}, the paper's)")
    try:
        args = parser.parse_args(argv)
        if args.seed < 0 or args.directions < 2:
            parser.error("--seed must be >= 0 and --directions >= 2 (a correlation needs two points)")
        positive_int("--directions", args.directions, 2, *MAX_DIRECTIONS)
        for mu in args.mu:
            finite_float("--mu", mu, low=0.0, high=1.0)
        if not (args.source / "model_index.json").is_file():
            raise ZoodipError(f"{args.source} is not a diffusers folder (no model_index.json): give the exports' source")
        for export in args.exports:
            read_manifest(export)  # a missing export: one line now, not a traceback halfway through the table
    except ZoodipError as exc:
        return print_error(exc)
    print(f"seed {args.seed}, {args.directions} directions\n\n| export | recipe | mu | fidelity | slope |\n"
          "|---|---|---|---|---|")
    for export in args.exports:
        recipe = ExportedModel.load(export).manifest["recipe"]
        for mu in args.mu:
            correlation, slope = measure(args.source, export, args.seed, args.directions, mu)
            print(f"| {export.name} | {recipe} | {mu:g} | {correlation:.4f} | {slope:.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

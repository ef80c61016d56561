"""How much tiled VAE decoding (what ``generate --memory-budget`` falls back to) changes an image.

    python benchmarks/vae_tiles.py                                    # SD1.5 architecture (memory.py's cached export), 512 px
    python benchmarks/vae_tiles.py --export DIR --resolution 128 --tiles 8,12

Decodes the same latents whole and in tiles of each size (a quarter of a tile's side shared with each
neighbour, as ``zoodip.memory_plan`` plans them) and prints, per tile size, the difference to the whole
decode: mean and largest absolute difference of the decoder's output (about [-1, 1]) and of the 8-bit
image, and the 8-bit image's PSNR. The latents are standard normal draws (seed 0), unit variance as a
finished sample's are; on random weights the images are noise, so the figures say how much the
decoder's non-local parts (group normalizations, mid-block attention) move a tile, not how visible
that is on a photo.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file: make the repository importable

from reference.repo import REPO, relative_args  # noqa: E402

sys.path.insert(0, str(REPO / "sdk"))
from zoodip.console import interrupts_said_from_here  # noqa: E402

interrupts_said_from_here(__name__)  # (a Ctrl-C during the imports below, NumPy's among them: one line, not a traceback)

import numpy as np  # noqa: E402
from benchmarks._quality_report import run_line  # noqa: E402

from zoodip.console import OneLineParser, print_error, script_main  # noqa: E402
from zoodip.errors import ZoodipError  # noqa: E402
from zoodip.generate import decode_latents  # noqa: E402
from zoodip.images import to_pil  # noqa: E402
from zoodip.memory_plan import MIN_TILE, OVERLAP_FRACTION, DecodePlan  # noqa: E402
from zoodip.model import ExportedModel, RuntimeOptions  # noqa: E402
from zoodip.vae_tiles import tile_starts  # noqa: E402
from zoodip.validation import positive_int  # noqa: E402

DEFAULT_EXPORT = REPO / ".cache" / "bench" / "sd15-s0-w8a32-q32"  # benchmarks/memory.py builds it


def compare(whole: np.ndarray, tiled: np.ndarray) -> dict[str, float]:
    """Differences of a tiled decode to the whole one, as decoder output and as 8-bit image."""
    difference = np.abs(tiled - whole)
    eight_bit = [np.asarray(to_pil(x)[0], np.float64) for x in (whole, tiled)]
    squared = float(np.mean((eight_bit[0] - eight_bit[1]) ** 2))
    return {"mean_abs": float(difference.mean()), "max_abs": float(difference.max()),
            "mean_abs_8bit": float(np.abs(eight_bit[0] - eight_bit[1]).mean()),
            "max_abs_8bit": float(np.abs(eight_bit[0] - eight_bit[1]).max()),
            "psnr_db": float("inf") if squared == 0 else 10 * float(np.log10(255.0**2 / squared))}


# Past it a typed number is a slip: the whole decode, the reference, needs memory growing with the side's square.
MAX_RESOLUTION = (4096, "eight times SD1.5's own 512-pixel side; the untiled reference decode grows with its square")


@script_main("nothing was written")
def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="python benchmarks/vae_tiles.py", description=__doc__.splitlines()[0])
    parser.add_argument("--export", type=Path, default=DEFAULT_EXPORT, help="export folder (default: memory.py's SD1.5 one)")
    parser.add_argument("--resolution", type=int, default=512, help="image side in pixels")
    parser.add_argument("--tiles", default="48,32", help="tile sides in latents, comma-separated")
    try:
        args = parser.parse_args(argv)
        positive_int("--resolution", args.resolution, 1, *MAX_RESOLUTION)  # (before the export is loaded)
        tiles = [int(t) for t in args.tiles.split(",") if t.strip().isdigit()]
        if len(tiles) != len(args.tiles.split(",")) or min(tiles) < MIN_TILE:  # (the SDK tiles no finer)
            parser.error(f"--tiles takes comma-separated tile sides of at least {MIN_TILE} latents, got {args.tiles!r}")
        if args.export == DEFAULT_EXPORT and not DEFAULT_EXPORT.is_dir():
            parser.error(f"{relative_args([str(DEFAULT_EXPORT)])[0]} is not built yet: run benchmarks/memory.py once "
                         "(it exports the SD1.5 architecture there), or pass --export DIR")
        model = ExportedModel.load(args.export, RuntimeOptions(memory_budget_mb=1 << 20))  # the budget's sessions
        side, rest = divmod(args.resolution, model.vae_scale_factor)
        if side < 1 or rest:
            parser.error(f"--resolution {args.resolution}: must be a multiple of the VAE's factor {model.vae_scale_factor}")
        if max(tiles) > side:
            parser.error(f"--tiles {max(tiles)} is larger than the image ({side} latents a side): nothing to tile")
    except ZoodipError as exc:
        return print_error(exc)
    latents = np.random.default_rng(0).standard_normal((1, model.latent_channels, side, side)).astype(np.float32)
    started = time.perf_counter()
    whole = decode_latents(model, latents)
    print(f"python benchmarks/vae_tiles.py {' '.join(relative_args(sys.argv[1:] if argv is None else argv))}")
    print(run_line())
    print(f"\n{args.resolution} px, whole decode {time.perf_counter() - started:.0f} s\n")
    print("| tile (latents) | overlap | tiles | decode s | mean / max abs (output) | mean / max abs (8-bit) | PSNR dB |")
    print("|---|---|---|---|---|---|---|")
    for tile in tiles:
        plan = DecodePlan(tile, tile // OVERLAP_FRACTION, 0)
        started = time.perf_counter()
        tiled = decode_latents(model, latents, plan)
        seconds = time.perf_counter() - started
        d = compare(whole, tiled)
        count = len(tile_starts(side, min(tile, side), plan.overlap)) ** 2
        print(f"| {tile} ({tile * model.vae_scale_factor} px) | {plan.overlap} | {count} | {seconds:.0f} | "
              f"{d['mean_abs']:.4f} / {d['max_abs']:.3f} | {d['mean_abs_8bit']:.2f} / {d['max_abs_8bit']:.0f} | "
              f"{d['psnr_db']:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

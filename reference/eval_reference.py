"""Measure the reference model: attribute accuracy of images generated from held-in captions.

Exports ``reference/model`` with the normal INT8 exporter (unless ``--export`` already holds one),
generates one image per random world caption with the SDK (NumPy + onnxruntime, DPM++ 2M, CFG) and
reads them with the evaluator. Writes ``--out``/generation_accuracy.json and a sample grid.

    .venv/bin/python reference/eval_reference.py --n 1000 --seed 1000
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file: make the repository importable

from reference.repo import REPO, relative_args, repo_relative  # noqa: E402

sys.path.insert(0, str(REPO / "sdk"))
from zoodip.console import interrupts_said_from_here  # noqa: E402

interrupts_said_from_here(__name__)  # (a Ctrl-C during the imports below, NumPy's among them: one line, not a traceback)

import numpy as np  # noqa: E402
from reference import world  # noqa: E402
from reference.evaluator import Evaluator, attribute_accuracy  # noqa: E402

from zoodip import validation  # noqa: E402
from zoodip.console import OneLineParser, print_error, script_main  # noqa: E402
from zoodip.errors import ZoodipError  # noqa: E402
from zoodip.export_folder import check_out_dir  # noqa: E402
from zoodip.paths import atomic_write_bytes, check_output_dir  # noqa: E402
from zoodip.manifest import MANIFEST  # noqa: E402

# The images at most (most, what it stands for in the refusal): a slip such as --n 1000000 generated for days, every
# image held for the evaluator.
MAX_IMAGES = (10_000, "each is a generation of its own, all held for the evaluator")


def _exported_from(export: Path) -> Path | None:
    """The source folder ``export`` was exported from, as its manifest records it (None: no readable export)."""
    try:
        source = json.loads((export / MANIFEST).read_text())["source"]["path"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return Path(source).resolve() if source else None


@script_main("--out was not written (an export finished in --export is kept for the next run)")
def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(prog="python reference/eval_reference.py", description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=REPO / "reference" / "model")
    p.add_argument("--export", type=Path, default=REPO / "reference" / ".work" / "export")
    p.add_argument("--out", type=Path, default=REPO / "reference" / ".work" / "eval")
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--seed", type=int, default=123)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--threads", type=int, default=1)
    try:
        args = p.parse_args(argv)
        if min(args.n, args.steps) < 1 or args.threads < 0 or args.seed < 0:
            p.error("--n and --steps must be at least 1, --threads and --seed 0 or more")
        validation.positive_int("--n", args.n, 1, *MAX_IMAGES)  # (before the export)
        if not 0 <= args.guidance < float("inf"):
            p.error(f"--guidance {args.guidance}: give a finite guidance scale >= 0")
        check_output_dir(args.out, "--out")  # before minutes of generating
        check_out_dir(args.export, overwrite=True, source=args.model, flag="--export")  # (re-exported into: named so)
    except ZoodipError as exc:
        return print_error(exc)

    from zoodip.generate import generate
    from zoodip.images import image_grid
    from zoodip.model import ExportedModel, RuntimeOptions

    try:
        if _exported_from(args.export) != args.model.resolve():  # none yet, or another model's: (re-)export
            from zoodip_export.export_model import export_model

            export_model(args.model, args.export, progress=True, overwrite=True)
        model = ExportedModel.load(args.export, RuntimeOptions(threads=args.threads))
    except ZoodipError as exc:  # no reference model to export, or an export that does not load
        return print_error(exc)
    evaluator = Evaluator.load()
    rng = np.random.default_rng(args.seed)
    started = time.monotonic()
    images, targets, captions = [], [], []
    for i in range(args.n):
        attrs = world.sample_attributes(rng)
        text = world.caption(attrs)
        images += generate(model, text, steps=args.steps, guidance_scale=args.guidance, seed=args.seed + i)
        targets.append(attrs.as_dict())
        captions.append(text)
    gen_s = time.monotonic() - started
    acc, all_five = attribute_accuracy(evaluator.predict(images), targets)
    # The same measure on real renders of the same captions: the ceiling the evaluator allows.
    renders = [world.render(world.Attributes(**t), np.random.default_rng(k)) for k, t in enumerate(targets)]
    acc_renders = evaluator.accuracy(renders, targets)
    report = {"command": "reference/eval_reference.py " + " ".join(relative_args(sys.argv[1:] if argv is None else argv)),
              "model": repo_relative(args.model), "n": args.n, "seed": args.seed,
              "steps": args.steps, "guidance": args.guidance, "sampler": "dpmpp_2m",
              "export_recipe": json.loads((args.export / MANIFEST).read_text())["recipe"],
              "accuracy": acc, "all_five": all_five, "accuracy_on_renders": acc_renders,
              "seconds_generating": round(gen_s, 1)}
    args.out.mkdir(parents=True, exist_ok=True)
    _again = "run it again"  # (each file whole: a Ctrl-C or a full disk in the middle left a torn report)
    atomic_write_bytes(args.out / "generation_accuracy.json", json.dumps(report, indent=2) + "\n", then=_again)
    rows = [[im.resize((96, 96)) for im in images[r * 8 : r * 8 + 8]] for r in range(min(6, args.n // 8))]
    if rows:
        grid = image_grid(rows)
        atomic_write_bytes(args.out / "samples.png", lambda handle: grid.save(handle, format="PNG"), then=_again)
        atomic_write_bytes(args.out / "samples.txt", "\n".join(captions[: len(rows) * 8]) + "\n", then=_again)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

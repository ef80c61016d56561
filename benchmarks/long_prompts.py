"""Whether a trained model follows a caption read in A1111's chunks, read by the project's evaluator.

A prompt past the text encoder's 75 tokens loses its tail when read as diffusers reads it; under
``--prompt-weighting a1111`` it is read in 75-token chunks, encoded apart and joined (``zoodip.emphasis``). This
draws ``--captions`` random attribute sets of the reference world, writes each one's canonical caption ("a small red
star with stripes on a blue background") alone, after a filler of 75 attribute-free tokens ("a photo a photo ..."),
before it, and after a 30-token filler with and without ``BREAK`` between them, generates each variant once (seed =
the caption's index, 20 DPM-Solver++ steps, guidance 5) and reads the images: the share of the five attributes drawn
as the caption says, and all five at once. The long filler pushes the whole caption into the second chunk, so the
diffusers reading conditions on the filler alone (a floor), and the chunked one only through the second chunk's states.

    make demo && python benchmarks/long_prompts.py --demo demo_out

Results: ``benchmarks/results/long-prompts/`` (results.json, results.md).
"""
from __future__ import annotations

import datetime
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from reference.repo import REPO  # noqa: E402

sys.path.insert(0, str(REPO / "sdk"))
from zoodip.console import interrupts_said_from_here  # noqa: E402

interrupts_said_from_here(__name__)  # (a Ctrl-C during the imports below, NumPy's among them: one line, not a traceback)

import numpy as np  # noqa: E402

from zoodip.errors import ZoodipError  # noqa: E402
from _demo_runs import demo_benchmark  # noqa: E402
from zoodip.console import script_main  # noqa: E402

FILLER = "a photo " * 37 + "a "  # 75 tokens without an attribute word: a caption after it starts the second chunk
SHORT_FILLER = "a photo " * 15  # 30 such tokens: a caption after it still fits the first chunk


def variants(caption: str) -> dict[str, tuple[str, str]]:
    """{name: (prompt, prompt_weighting)}."""
    return {"caption alone": (caption, "none"),
            "filler + caption, diffusers' reading (cut at 77)": (FILLER + caption, "none"),
            "filler + caption, A1111's chunks": (FILLER + caption, "a1111"),
            "caption + filler, A1111's chunks": (caption + " " + FILLER, "a1111"),
            "short filler + caption, one chunk": (SHORT_FILLER + caption, "a1111"),
            "short filler BREAK caption, A1111's chunks": (SHORT_FILLER + "BREAK " + caption, "a1111")}


def measure(demo: Path, captions: int) -> dict:
    import warnings

    from reference import world
    from reference.evaluator import Evaluator, attribute_accuracy
    from zoodip.emphasis import chunked_token_ids
    from zoodip.generate import generate
    from zoodip.model import ExportedModel

    model = ExportedModel.load(demo / "model")
    if not model.text_length_free:
        raise ZoodipError(f"{demo / 'model'} was exported before long prompts: run make demo again to re-export it")
    evaluator, rng = Evaluator.load(), np.random.default_rng(0)
    attributes = [world.sample_attributes(rng) for _ in range(captions)]
    rows = []
    for name in variants("x"):
        images, targets, chunks = [], [], set()
        for seed, attrs in enumerate(attributes):
            text, weighting = variants(world.caption(attrs))[name]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the diffusers reading warns that the tail is cut: it is the point
                images += generate(model, text, steps=20, guidance_scale=5.0, seed=seed, prompt_weighting=weighting)
            targets.append({a: getattr(attrs, a) for a in world.ATTRIBUTE_NAMES})
            chunks.add(len(chunked_token_ids(model.tokenizer, text)[0]) if weighting == "a1111" else 1)
        accuracy, joint = attribute_accuracy(evaluator.predict(images), targets)
        rows.append({"variant": name, "chunks": sorted(chunks), "attributes": accuracy,
                     "mean": float(np.mean(list(accuracy.values()))), "all_five": joint})
        print(f"{name:52} mean {rows[-1]['mean']:.3f}  all five {joint:.3f}", file=sys.stderr, flush=True)
    return {"captions": captions, "filler_tokens": len(model.tokenizer.encode(FILLER)), "rows": rows}


def report(result: dict, command: str, seconds: float) -> str:
    from reference import world

    names = world.ATTRIBUTE_NAMES
    lines = ["# A caption read in A1111's chunks, on the reference model", "",
             f"`{command}`  ", f"{datetime.date.today()}, {seconds:.0f} s; {result['captions']} random captions, one "
             f"image each, 20 DPM-Solver++ steps, guidance 5; filler {result['filler_tokens']} tokens.", "",
             "| variant | chunks | " + " | ".join(names) + " | mean | all five |",
             "|---|---|" + "---|" * (len(names) + 2)]
    for row in result["rows"]:
        cells = " | ".join(f"{row['attributes'][a]:.3f}" for a in names)
        lines.append(f"| {row['variant']} | {', '.join(map(str, row['chunks']))} | {cells} | {row['mean']:.3f} | "
                     f"{row['all_five']:.3f} |")
    return "\n".join(lines) + "\n"


@script_main("--out was not written (the results of earlier runs are kept)")
def main(argv: list[str] | None = None) -> int:
    return demo_benchmark(argv, "long_prompts.py", __doc__, ("model/manifest.json",),
                          ("--captions", 40, "random captions, one image each per variant"), measure, report)


if __name__ == "__main__":
    sys.exit(main())

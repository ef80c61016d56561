"""What A1111's prompt editing does on a trained model, read by the project's evaluator.

Under ``--prompt-weighting a1111``, ``[from:to:when]`` conditions the steps up to ``when`` on one word and the rest
on another, and ``[a|b]`` alternates them step by step (``zoodip.prompt_schedule``). This draws ``--captions`` random
attribute sets of the reference world, and for each a second colour and a second shape; it writes the canonical
caption with the colour (then the shape) edited, ``[first:second:when]`` for ``when`` from 0.0 (the second word all
through) to 1.0 (the first all through), and alternated, ``[first|second]``; generates each once (seed = the
caption's index, 20 DPM-Solver++ steps, guidance 5) and reads which of the two words the image shows.

    make demo && python benchmarks/prompt_editing.py --demo demo_out

Results: ``benchmarks/results/prompt-editing/`` (results.json, results.md).
"""
from __future__ import annotations

import datetime
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from reference.repo import REPO  # noqa: E402

sys.path.insert(0, str(REPO / "sdk"))
from zoodip.console import interrupts_said_from_here  # noqa: E402

interrupts_said_from_here(__name__)  # (a Ctrl-C during the imports below, NumPy's among them: one line, not a traceback)

import numpy as np  # noqa: E402

from _demo_runs import demo_benchmark  # noqa: E402
from zoodip.console import script_main  # noqa: E402

SWITCHES = ("0.0", "0.2", "0.4", "0.6", "0.8", "1.0")  # "when", as fractions of the steps
STEPS = 20
EDITED = ("color", "shape")


def edited_pairs(captions: int) -> list[tuple[object, dict[str, str]]]:
    """(attributes, {attribute: second word}) per caption: another colour and another shape, each drawable."""
    from reference import world

    rng, pairs = np.random.default_rng(0), []
    while len(pairs) < captions:
        attrs = world.sample_attributes(rng)
        seconds = {}
        for name in EDITED:
            others = [v for v in world.ATTRIBUTES[name] if v != getattr(attrs, name)
                      and world.compatible(replace(attrs, **{name: v}))]
            seconds[name] = others[int(rng.integers(len(others)))]
        pairs.append((attrs, seconds))
    return pairs


def edited_caption(attrs, name: str, second: str, construct: str) -> str:
    """The caption with attribute ``name``'s word written as ``construct`` ("[{a}:{b}:0.5]", "[{a}|{b}]"); for
    "AND", the caption AND the caption with the second word."""
    from reference import world

    def written(word: str) -> str:
        words = {"color": attrs.color, "shape": attrs.shape} | {name: word}
        noun = f" {attrs.color} {attrs.shape}"  # the caption's "... red star ...", which the background never repeats
        return world.caption(attrs).replace(noun, f" {words['color']} {words['shape']}", 1)

    if construct == "AND":
        return f"{written(getattr(attrs, name))} AND {written(second)}"
    return written(construct.format(a=getattr(attrs, name), b=second))


def variants() -> dict[str, tuple[str, str]]:
    return ({f"{name} [first:second:{when}]": (name, "[{a}:{b}:" + when + "]") for name in EDITED for when in SWITCHES}
            | {f"{name} [first|second]": (name, "[{a}|{b}]") for name in EDITED}
            | {f"{name} first AND second": (name, "AND") for name in EDITED})


def measure(demo: Path, captions: int) -> dict:
    from reference.evaluator import Evaluator
    from zoodip.generate import generate
    from zoodip.model import ExportedModel

    model, evaluator, pairs = ExportedModel.load(demo / "model"), Evaluator.load(), edited_pairs(captions)
    rows = []
    for variant, (name, construct) in variants().items():
        images = []
        for seed, (attrs, seconds) in enumerate(pairs):
            text = edited_caption(attrs, name, seconds[name], construct)
            images += generate(model, text, steps=STEPS, guidance_scale=5.0, seed=seed, prompt_weighting="a1111")
        read = evaluator.predict(images)[name]
        first = float(np.mean([r == getattr(a, name) for r, (a, _) in zip(read, pairs)]))
        second = float(np.mean([r == s[name] for r, (_, s) in zip(read, pairs)]))
        rows.append({"variant": variant, "first": first, "second": second, "neither": 1.0 - first - second})
        print(f"{variant:32} first {first:.3f}  second {second:.3f}", file=sys.stderr, flush=True)
    return {"captions": captions, "steps": STEPS, "rows": rows}


def report(result: dict, command: str, seconds: float) -> str:
    lines = ["# Prompt editing on the reference model", "", f"`{command}`  ",
             f"{datetime.date.today()}, {seconds:.0f} s; {result['captions']} random captions, one image each, "
             f"{result['steps']} DPM-Solver++ steps, guidance 5. Share of images the evaluator reads as showing the "
             "first word, the second, or neither.", "",
             "| edit | first | second | neither |", "|---|---|---|---|"]
    lines += [f"| `{row['variant']}` | {row['first']:.3f} | {row['second']:.3f} | {row['neither']:.3f} |"
              for row in result["rows"]]
    return "\n".join(lines) + "\n"


@script_main("--out was not written (the results of earlier runs are kept)")
def main(argv: list[str] | None = None) -> int:
    return demo_benchmark(argv, "prompt_editing.py", __doc__, ("model/manifest.json",),
                          ("--captions", 40, "random captions, one image each per edit"), measure, report)


if __name__ == "__main__":
    sys.exit(main())

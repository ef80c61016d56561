"""What A1111's prompt emphasis does to a learned token's held-out prompts, read by the project's evaluator.

A learned token tends to carry its concept's attributes into every prompt: "a photo of a red <striped-star>" keeps
the star yellow. A1111 users answer with emphasis, ``(red:1.4)``. This takes a run folder of ``make demo`` (its
export and learned embedding), generates each held-out prompt of the demo concept plainly, with its edited word
weighted x1.2 / x1.4 / x1.6, and with the token de-weighted x0.8 (``generate(..., prompt_weighting="a1111")``), on
``--seeds`` seeds each, and reads the images: the requested attribute right, the share of the five attributes as the
prompt asks (``world.prompt_target``: the benchmark's prompt fidelity), all five at once.

    make demo && python benchmarks/emphasis.py --demo demo_out

Results: ``benchmarks/results/emphasis/`` (results.json, results.md).
"""
from __future__ import annotations

import datetime
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from reference.repo import REPO  # noqa: E402

sys.path.insert(0, str(REPO / "sdk"))
from zoodip.console import interrupts_said_from_here  # noqa: E402

interrupts_said_from_here(__name__)  # (a Ctrl-C during the imports below, NumPy's among them: one line, not a traceback)

import numpy as np  # noqa: E402

from _demo_runs import demo_benchmark  # noqa: E402
from zoodip.console import script_main  # noqa: E402

WEIGHTS = (1.2, 1.4, 1.6)
TOKEN_WEIGHT = 0.8


def variants(prompt: str, token: str, edit_word: str) -> dict[str, str]:
    """The prompt plainly, its edit word weighted, and the token de-weighted, in A1111's syntax."""
    out = {"plain": prompt}
    out.update({f"edit x{w}": re.sub(rf"\b{edit_word}\b", f"({edit_word}:{w})", prompt, count=1) for w in WEIGHTS})
    out[f"token x{TOKEN_WEIGHT}"] = prompt.replace(token, f"({token}:{TOKEN_WEIGHT})")
    return out


def measure(demo: Path, seeds: int) -> dict:
    from reference import world
    from reference.evaluator import Evaluator, attribute_accuracy
    from zoodip.embeddings import EMBEDDING_NAME, load_embedding_file
    from zoodip.generate import generate
    from zoodip.model import ExportedModel

    model = ExportedModel.load(demo / "model")
    token, vectors = load_embedding_file(demo / "run" / EMBEDDING_NAME)
    concept, evaluator = world.concept_by_name(token), Evaluator.load()
    rows = []
    for template in concept.held_out_prompts:
        prompt = template.format(token)
        target = world.prompt_target(concept, prompt)
        requested = next(a for a, v in target.items() if v != getattr(concept.attributes, a))
        for name, text in variants(prompt, token, target[requested]).items():
            images = [generate(model, text, added_embeddings={token: vectors}, steps=20, guidance_scale=5.0, seed=seed,
                               prompt_weighting="a1111")[0] for seed in range(seeds)]
            acc, joint = attribute_accuracy(evaluator.predict(images), target)
            rows.append({"prompt": prompt, "variant": name, "text": text, "requested": requested,
                         "requested_acc": acc[requested], "prompt_fidelity": float(np.mean(list(acc.values()))),
                         "all_five": joint})
            print(f"{text!r:58} requested {acc[requested]:.2f}  prompt fidelity {rows[-1]['prompt_fidelity']:.3f}",
                  file=sys.stderr, flush=True)
    return {"token": token, "seeds": seeds, "rows": rows}


def report(result: dict, command: str, seconds: float) -> str:
    names = list(dict.fromkeys(row["variant"] for row in result["rows"]))
    lines = ["# A1111 emphasis on the demo's learned token", "",
             f"`{command}`  ", f"{datetime.date.today()}, {seconds:.0f} s; token `{result['token']}`, {result['seeds']} "
             "seeds per prompt and variant, 20 DPM-Solver++ steps, guidance 5.", "",
             "| variant | requested attribute | prompt fidelity | all five |", "|---|---|---|---|"]
    for name in names:
        rows = [row for row in result["rows"] if row["variant"] == name]
        lines.append(f"| {name} | {np.mean([r['requested_acc'] for r in rows]):.3f} | "
                     f"{np.mean([r['prompt_fidelity'] for r in rows]):.3f} | {np.mean([r['all_five'] for r in rows]):.3f} |")
    lines += ["", "Per prompt:", "", "| prompt | variant | requested | prompt fidelity | all five |", "|---|---|---|---|---|"]
    lines += [f"| {r['prompt']} | {r['variant']} | {r['requested_acc']:.2f} | {r['prompt_fidelity']:.3f} | "
              f"{r['all_five']:.2f} |" for r in result["rows"]]
    return "\n".join(lines) + "\n"


@script_main("--out was not written (the results of earlier runs are kept)")
def main(argv: list[str] | None = None) -> int:
    return demo_benchmark(argv, "emphasis.py", __doc__, ("model/manifest.json", "run/learned_embeds.safetensors"),
                          ("--seeds", 16, "images per prompt and variant"), measure, report)


if __name__ == "__main__":
    sys.exit(main())

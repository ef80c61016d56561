"""At which timesteps the denoising loss sees each attribute of a concept.

For a world concept's photos, the loss ``L(x_0 | c) = |eps - eps_hat(x_t, t, c)|^2`` under the concept's own
caption ``c`` and under captions ``c'`` that change one attribute (every other value of it the world can
draw) differ by

    dL(attribute, t) = mean over c' of [ L(x_0 | c') - L(x_0 | c) ]

with the same photo, noise and timestep for every caption (common random numbers, as a forward-only
estimate's two forwards share them). A learned token has to win exactly these differences, so their
signal-to-noise ratio ``mean(dL)^2 / var(dL)`` over draws, per timestep band, says where a training step can
learn an attribute at all: a band where an attribute's ratio is small spends forwards on it in vain.
Torch fp32 on the diffusers folder; captions are the world's, so no training and no placeholder is involved.

    python benchmarks/attribute_signal.py                       # SD-width model, the 8 concepts
    python benchmarks/attribute_signal.py --model reference-64 --draws 2 --concepts striped-star

Results: ``benchmarks/results/attribute-signal/`` (results.json, results.md).
"""
from __future__ import annotations

import datetime
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from reference.repo import REPO, relative_args, repo_relative  # noqa: E402

sys.path.insert(0, str(REPO / "sdk"))
from zoodip.console import interrupts_said_from_here  # noqa: E402

interrupts_said_from_here(__name__)  # (a Ctrl-C during the imports below, NumPy's among them: one line, not a traceback)

import numpy as np  # noqa: E402

from zoodip.console import OneLineParser, print_error, script_main  # noqa: E402
from zoodip.errors import ZoodipError  # noqa: E402
from zoodip.paths import check_output_dir  # noqa: E402
from zoodip.validation import positive_int  # noqa: E402
from benchmarks._results_guard import check_results_folder  # noqa: E402

DEFAULT_OUT = REPO / "benchmarks" / "results" / "attribute-signal"  # the committed results

if TYPE_CHECKING:
    from zoodip_export.torch_model import TorchModel

BAND = 100  # timesteps per band of [0, T)
PUTS_BANDS = (500, 900)  # the paper's PUTS range, marked in the report


def contrast_captions(attributes) -> dict[str, list[str]]:
    """``{"concept": [its caption], attribute: [captions with that attribute changed], ...}``: every other
    value of each attribute for which the world can render the result."""
    from reference import world

    captions = {"concept": [world.caption(attributes)]}
    for name, values in world.ATTRIBUTES.items():
        changed = [attributes.replace(**{name: value}) for value in values if value != getattr(attributes, name)]
        captions[name] = [world.caption(a) for a in changed if world.compatible(a)]
    return captions


def signal_to_noise(differences: np.ndarray) -> float:
    """``mean^2 / var`` of one attribute's loss differences over draws (0 where they do not vary)."""
    var = float(np.var(differences))
    return float(np.mean(differences)) ** 2 / var if var > 0 else 0.0


def concept_signal(model: TorchModel, concept, draws: int, seed: int, photos_per_draw: int = 5) -> dict[str, dict]:
    """Per attribute: per band of ``BAND`` timesteps, mean and std of ``dL`` over ``draws`` x the photos."""
    import torch

    from reference import world

    unet, vae, schedule = model.unet, model.vae, model.schedule
    captions = contrast_captions(concept.attributes)
    flat = [("a photo of " + text) for group in captions.values() for text in group]
    owner = np.array([name for name, group in captions.items() for _ in group])
    photos = world.concept_images(concept, n=photos_per_draw, seed=seed, resolution=world.RESOLUTION)
    images = np.stack([np.asarray(p, np.float32) / 127.5 - 1.0 for p in photos]).transpose(0, 3, 1, 2)
    with torch.no_grad():
        cond = model.text_encoder(model.embeds(np.stack([model.prompt_ids(text) for text in flat])))
        x0 = (vae.encode(torch.from_numpy(images.copy())).latent_dist.mean * float(vae.config.scaling_factor)).numpy()
    rng = np.random.default_rng([seed, 0xA77])
    result: dict[str, dict] = {name: {} for name in captions if name != "concept"}
    for start in range(0, schedule.num_train_timesteps, BAND):
        diffs: dict[str, list[np.ndarray]] = {name: [] for name in result}
        for _ in range(draws):
            t = rng.integers(start, start + BAND, size=len(x0))
            noise = rng.standard_normal(x0.shape).astype(np.float32)
            x_t = schedule.add_noise(x0, noise, t).astype(np.float32)
            target = schedule.target(x0, noise, t).astype(np.float32)
            n_cap, n_img = len(flat), len(x0)
            with torch.no_grad():
                pred = unet(torch.from_numpy(np.tile(x_t, (n_cap, 1, 1, 1))), torch.from_numpy(np.tile(t, n_cap)),
                            encoder_hidden_states=cond.repeat_interleave(n_img, 0)).sample.numpy()
            loss = ((pred - np.tile(target, (n_cap, 1, 1, 1))) ** 2).reshape(n_cap, n_img, -1).mean(axis=2)
            base = loss[owner == "concept"][0]
            for name in result:
                diffs[name].append(loss[owner == name].mean(axis=0) - base)
        for name, parts in diffs.items():
            d = np.concatenate(parts)
            result[name][f"{start}-{start + BAND}"] = {"mean": float(d.mean()), "std": float(d.std()),
                                                       "snr": signal_to_noise(d)}
    return result


def summary(per_concept: dict[str, dict]) -> dict[str, dict[str, float]]:
    """Mean over concepts of each attribute's signal-to-noise ratio, per band."""
    concepts = list(per_concept.values())
    return {name: {band: float(np.mean([c[name][band]["snr"] for c in concepts])) for band in concepts[0][name]}
            for name in concepts[0]}


def markdown(result: dict) -> str:
    bands = list(next(iter(result["summary"].values())))
    in_puts = [b for b in bands if PUTS_BANDS[0] <= int(b.split("-")[0]) < PUTS_BANDS[1]]
    head = ["attribute"] + [f"**{b}**" if b in in_puts else b for b in bands] + ["PUTS share"]
    lines = ["# At which timesteps the denoising loss sees each attribute", "", f"    {result['command']}", "",
             f"{result['date']}, {result['machine']['cpu']} ({result['machine']['cpu_count']} cores), "
             f"{result['seconds']:.0f} s", "", f"model `{result['model']}`; {result['draws_per_band']} draws x {result['photos']} photos per band and "
             f"concept; concepts: {', '.join(result['concepts'])}. Cells: signal-to-noise ratio mean(dL)^2 / var(dL), "
             "mean over concepts; bold bands are the PUTS range; 'PUTS share' = the PUTS bands' part of the row's sum.",
             "", "| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for name, row in result["summary"].items():
        total = sum(row.values())
        share = sum(row[b] for b in in_puts) / total if total > 0 else 0.0
        lines.append("| " + " | ".join([name] + [f"{row[b]:.2f}" for b in bands] + [f"{share:.2f}"]) + " |")
    return "\n".join(lines) + "\n"


def concept_names(concepts: str | None) -> list[str]:
    """The world concepts a --concepts value names (None: all of them), checked."""
    from reference import world

    known = [c.name.strip("<>") for c in world.CONCEPTS]
    names = [n.strip().strip("<>") for n in concepts.split(",")] if concepts else known
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise ZoodipError(f"--concepts: unknown {unknown or concepts!r}; choose from {', '.join(known)}")
    return names


MAX_DRAWS = (10_000, "noise/timestep draws per band, each a UNet backward pass over the photos")


@script_main("--out was not written (the results of earlier runs are kept)")
def main(argv: list[str] | None = None) -> int:
    from problem_dimension import model_folders
    from reference import world

    p = OneLineParser(prog="python benchmarks/attribute_signal.py", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="sd-width-768", help="reference-64, isometric-768 or sd-width-768")
    p.add_argument("--concepts", default=None, help="comma list of world concept names (default: all 8)")
    p.add_argument("--draws", type=int, default=8, help="noise/timestep draws per band (each over the 5 photos)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", type=Path, default=REPO / ".cache")
    p.add_argument("--out", default=None,
                   help=f"results folder (default: {repo_relative(DEFAULT_OUT)}, the committed results)")
    try:
        args = p.parse_args(argv)
        if args.draws < 2 or args.seed < 0:  # (numpy's generators take no negative seed)
            raise ZoodipError("--draws must be at least 2 (a variance needs two draws), --seed 0 or more")
        positive_int("--draws", args.draws, 2, *MAX_DRAWS)
        folders = model_folders(args.cache)
        if args.model not in folders:
            raise ZoodipError(f"--model {args.model!r}: choose one of {', '.join(sorted(folders))}")
        names = concept_names(args.concepts)
        known = {c.name.strip("<>"): c for c in world.CONCEPTS}
        args.out = check_output_dir(DEFAULT_OUT if args.out is None else args.out, "--out")  # before the work
        # (the concepts as the set they name: each is measured alone, the summary is their mean; all 8 = the default)
        check_results_folder(args.out, p, argv, "attribute_signal.py",
                             lambda parsed: vars(parsed) | {"concepts": sorted(concept_names(parsed.concepts))})
    except ZoodipError as exc:
        return print_error(exc)
    command = " ".join(["python benchmarks/attribute_signal.py", *relative_args(argv if argv is not None else sys.argv[1:])])
    started = time.perf_counter()
    import torch

    from zoodip_export.torch_model import TorchModel

    torch.set_num_threads(2)
    model = TorchModel.load(folders[args.model]())  # loaded once for every concept
    per_concept = {}
    for name in names:
        per_concept[name] = concept_signal(model, known[name], args.draws, args.seed)
        print(f"{name}: {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    from benchmarks._quality_report import machine_info, write_results

    result = {"command": command.strip(), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "machine": machine_info(), "model": args.model, "draws_per_band": args.draws, "photos": 5,
              "concepts": names, "seconds": round(time.perf_counter() - started, 1), "summary": summary(per_concept),
              "per_concept": per_concept}
    write_results(args.out, result, markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

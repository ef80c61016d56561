"""The quality benchmark's jobs: the world task's concepts (rendered photos), or planted targets.

A job is one personalization problem every method trains on (benchmarks/_quality_methods.Job).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import _quality_methods as qm
from reference.repo import REPO
from zoodip import validation
from zoodip.errors import ZoodipError


# quality.py's counts at most (dest -> (most, what it stands for in the refusal)): past them a typed number is a slip
# (--steps 90000 for 9000) that starts exports, training and scoring which can only fail late (memory) or run for days.
COUNT_CAPS = {
    "steps": (100_000, "ZO steps per method, concept and seed, 3 UNet forwards each"),
    "checkpoints": (100, "each snapshot of every run is scored: images generated and read"),
    "seeds": (100, "each repeats every concept's training and scoring"),
    "images_per_prompt": (64, "generated per prompt at every scored snapshot"),
    "gen_steps": (1000, "sampler steps per image: the schedule's 1000 timesteps"),
    "max_heldout": (1000, "held-out prompts per concept, each generated and scored"),
}


def check_counts(args: Any) -> None:
    """quality.py's COUNT_CAPS flags (None: the default), each an integer from 1 to its cap, before any work."""
    for dest, (most, why) in COUNT_CAPS.items():
        if getattr(args, dest) is not None:
            validation.positive_int("--" + dest.replace("_", "-"), getattr(args, dest), 1, most, why)


def select_concepts(items: list[Any], spec: str | None, default: int, key: Any) -> list[Any]:
    """--concepts: the first ``default`` items, the first N, or the named ones (with or without <>)."""
    if spec is None:
        return items[:default]
    if spec.isdigit():
        if int(spec) < 1:
            raise ZoodipError(f"--concepts {spec}: give a count of at least 1, or concept names")
        return items[: int(spec)]
    wanted = [s.strip() for s in spec.split(",") if s.strip()]
    out = []
    for name in wanted:
        match = [c for c in items if key(c) in (name, f"<{name.strip('<>')}>")]
        if not match:
            raise ZoodipError(f"--concepts: unknown concept {name!r}; use names of {', '.join(key(c) for c in items)}, "
                              "or a count")
        out.extend(match)
    if not out:
        raise ZoodipError(f"--concepts {spec!r} names no concept; use names of {', '.join(key(c) for c in items)}")
    return out


def planted_count(spec: str | None, default: int) -> int:
    """--concepts for the planted task: a count of targets (at least 1), or ``default`` when not given."""
    if spec is None:
        return default
    if not (spec.isdigit() and int(spec) >= 1):
        raise ZoodipError(f"--concepts {spec!r}: the planted task takes a count of targets (at least 1)")
    return int(spec)


def seeded_name(name: str, job_seed: int) -> str:
    """A world job's name in a run over several training seeds (a one-seed run's jobs drop the suffix)."""
    return f"{name}-s{job_seed}"


def seeded_names(jobs: Any, task: str, meta: dict[str, Any]) -> dict[str, str]:
    """Each job of a stored run -> its name in a run over several training seeds.

    ``--seed 0`` alone and ``--seeds 3`` both train "striped-star" on seed 0's photos and noise; the first
    calls the job ``striped-star``, the second ``striped-star-s0``. Planted jobs keep their names."""
    if task != "world" or meta.get("seeds", 1) != 1 or "seed" not in meta:
        return {job: job for job in jobs}
    return {job: seeded_name(job, int(meta["seed"])) for job in jobs}


# What concept fidelity compares a job's images with (results.json's meta.concept_refs): its own photos. Runs
# without the field scored every training seed's job of a concept against the photos of the run's first seed.
CONCEPT_REFS = "job-photos"
# The noise a job's scored images are generated from (results.json's meta.generation_seeds): its training
# seed's, so that a job scores alike in a one-seed run and in a run over several seeds. Runs without the field
# generated every job's images from the run's first seed's noise.
GENERATION_SEEDS = "job-seed"


def job_training_seed(meta: dict[str, Any], job: str) -> int:
    """The training seed of a world job of a stored run (its photos and training noise)."""
    if int(meta.get("seeds", 1)) == 1:
        return int(meta.get("seed", 0))
    return int(job.rpartition("-s")[2])


def _scoring_seed(meta: dict[str, Any], job: str, recorded: str, rule: str, current_rule: str) -> int:
    """A per-job scoring seed of a world job: as a merged run recorded it (``meta[recorded]``), else the job's
    training seed, except in multi-seed runs older than ``meta[rule]``, which used the run's first seed."""
    if job in (meta.get(recorded) or {}):
        return int(meta[recorded][job])
    if int(meta.get("seeds", 1)) == 1 or meta.get(rule) == current_rule:
        return job_training_seed(meta, job)
    return int(meta["seed"])


def concept_reference_seed(meta: dict[str, Any], job: str) -> int:
    """The training seed whose photos a world job's concept fidelity was scored against (``concept_refs``)."""
    return _scoring_seed(meta, job, "concept_ref_seeds", "concept_refs", CONCEPT_REFS)


def generation_seed(meta: dict[str, Any], job: str) -> int:
    """The seed of the noise a world job's scored images were generated from (``generation_seeds``)."""
    return _scoring_seed(meta, job, "job_generation_seeds", "generation_seeds", GENERATION_SEEDS)


def world_jobs(world: Any, concepts: list[Any], work: Path, resolution: int, seed: int,
               seeds: int = 1) -> list[qm.Job]:
    """One job per concept, or per (concept, seed) with ``seeds`` > 1: other photos, other training noise."""
    jobs = []
    for job_seed in range(seed, seed + seeds):
        for concept in concepts:
            base = concept.name.strip("<>")
            name = seeded_name(base, job_seed) if seeds > 1 else base
            folder = work / "photos" / name
            folder.mkdir(parents=True, exist_ok=True)
            for k, image in enumerate(world.concept_images(concept, n=5, seed=job_seed, resolution=resolution)):
                image.save(folder / f"{k}.png")
            jobs.append(qm.Job(name, str(folder), concept.name, concept.initializer,
                               attributes=concept.attributes.as_dict(), seed=job_seed if seeds > 1 else None))
    return jobs


def planted_jobs(export_dir: Path, count: int, seed: int, photos: list[tuple[str, Path, str]]) -> list[qm.Job]:
    """``count`` planted targets: v* = a random vocabulary row + noise of 0.5x its RMS."""
    from zoodip.model import ExportedModel

    model = ExportedModel.load(export_dir)
    table = model.token_embeddings
    jobs = []
    for k in range(count):
        rng = np.random.default_rng([seed, 0x9A47, k])
        name, folder, initializer = photos[k % len(photos)]
        row = np.asarray(table[int(rng.integers(1000, table.shape[0] - 2))], np.float64)
        rms = float(np.sqrt(np.mean(row**2)))
        v_star = row + 0.5 * rms * rng.standard_normal(row.shape)
        jobs.append(qm.Job(f"planted-{k}-{name}", str(folder), f"<planted-{k}>", initializer,
                           planted=[float(x) for x in v_star.astype(np.float32)]))
    return jobs


def make_jobs(task: str, args: Any, export_dir: Path, work: Path, resolution: int, world: Any) -> list[qm.Job]:
    """The world task's concept jobs, or the planted check's jobs (on world photos where the model can use them)."""
    if task == "world":
        concepts = select_concepts(list(world.CONCEPTS), args.concepts, 2 if args.quick else len(world.CONCEPTS),
                           key=lambda c: c.name)
        return world_jobs(world, concepts, work, resolution, args.seed, args.seeds)
    count = planted_count(args.concepts, 1 if args.smoke or args.quick else 3)
    if world is not None and resolution >= 32 and not args.smoke:
        concepts = list(world.CONCEPTS)[:count]
        photo_jobs = world_jobs(world, concepts, work, resolution, args.seed)
        photos = [(j.name, Path(j.photos), j.initializer) for j in photo_jobs]
    else:
        photos = [("example", REPO / "sdk" / "zoodip" / "data" / "example_concept", "object")]
    return planted_jobs(export_dir, count, args.seed, photos)


def run_length(args: Any) -> tuple[int, int]:
    """(ZO steps, scored checkpoints) of a quality.py run: --steps and --checkpoints, else the defaults of a
    --smoke, --quick or full run (the run and the results guard both read them here)."""
    steps = args.steps or (20 if args.smoke else 150 if args.quick else 300)
    checkpoints = args.checkpoints or (2 if args.smoke else 3 if args.quick else 5)
    return steps, checkpoints

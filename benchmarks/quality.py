"""Quality benchmark: how good is forward-only (ZOODiP) textual inversion, per forward pass?

    python benchmarks/quality.py                       # full: SD-width reference model, all methods, 8 concepts
    python benchmarks/quality.py --model reference/model --quick   # the 64-wide reference model (fast)
    python benchmarks/quality.py --quick               # 2 concepts, short budget
    python benchmarks/quality.py --smoke               # seconds: tiny random model, planted check only
    python benchmarks/quality.py --task planted --model sd15-int8   # optimization-only check, any model
    python benchmarks/quality.py --sweep 300-700,500-900,200-1000   # PUTS range sweep (zoodip variants)
    python benchmarks/quality.py --merge A B:ti-backprop --out C    # one table from stored runs

Every method (``--methods``; see benchmarks/_quality_methods.py) gets the same model, concepts, seed
and budget of UNet forward passes (``--steps`` ZO steps x 3 forwards; ES generations of ``pop``
forwards; backprop steps of 1 forward + its backward). The learned embedding is snapshotted at
``--checkpoints`` evenly spaced points of the budget and scored afterwards, so each method gives a
quality-vs-forwards curve. Each method trains every job in a fresh subprocess, whose peak RSS
(VmHWM) is its memory figure (the largest over jobs). Scores:

* ``--task world`` (the reference world, needs a reference model and reference/evaluator.py): images
  generated with the learned token (INT8 export, DPM++ 2M, fixed seeds) read by the reference
  evaluator: concept fidelity, attribute accuracy, prompt fidelity (see _quality_eval.py).
* ``--task planted`` (any model, no evaluator): a planted target embedding v*; the targets are the
  UNet's predictions under v*; score = fraction of the loss gap closed from the initializer.

Outputs in ``--out``: results.json, results.md, curves.png (Pillow-drawn) and, for the world task,
samples.png (final generations per method).
"""
from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.metadata
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if str(Path(__file__).resolve().parents[1]) not in sys.path:  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zoodip.console import interrupts_said_from_here  # noqa: E402
interrupts_said_from_here(__name__)  # (a Ctrl-C during the imports below, NumPy's among them: one line, not a traceback)
import numpy as np  # noqa: E402

from benchmarks import _quality_methods as qm  # noqa: E402
from benchmarks._models import DEFAULT_CACHE, cache_lock, checked_export, source_folder  # noqa: E402
from benchmarks._quality_backprop import TORCH_SEED_LIMIT  # noqa: E402
from benchmarks._quality_jobs import (CONCEPT_REFS, GENERATION_SEEDS, check_counts, make_jobs, planted_count,  # noqa: E402
                                      run_length, select_concepts)
from benchmarks._child_runs import run_child  # noqa: E402
from benchmarks._scratch import scratch_folder  # noqa: E402
from benchmarks._quality_merge import export_weights_identity, merge_main, merge_settings, split_methods  # noqa: E402,F401 (quality.split_methods: tests)
from benchmarks._quality_report import run_context, write_reports, write_samples  # noqa: E402
from benchmarks._results_guard import check_results_folder  # noqa: E402
from benchmarks._quality_summary import (  # noqa: E402,F401 (quality.summarize & co.: tests, --merge)
    forwards_to_reach, metric_names, ratio_of_means_ci, summarize)
from reference.repo import REPO, relative_args, repo_relative  # noqa: E402
from zoodip.console import OneLineParser, print_error, script_main  # noqa: E402
from zoodip.errors import ZoodipError  # noqa: E402
from zoodip.manifest import MANIFEST  # noqa: E402
from zoodip.paths import check_output_dir  # noqa: E402

DEFAULT_OUT = REPO / "benchmarks" / "results" / "quality"
REFERENCE_MODEL = REPO / "reference" / "model-768"  # the SD-width world (packed; materialized on first use)
# The recipe a diffusers --model is exported with: the benchmark compares methods on a fixed export, and its
# stored runs are W8A32 (not the exporter's default, W4A32, which learns as well: benchmarks/README.md, "4-bit
# weights"); `--model EXPORT_FOLDER` runs any other.
EXPORT_RECIPE = "w8a32"
ZO_METHODS = ("zo-naive", "zo-sg", "zo-puts", "zoodip")


def log(message: str) -> None:
    print(f"[quality {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Model and world
# --------------------------------------------------------------------------------------------


def prepare_model(model: str | None, smoke: bool, cache: Path) -> tuple[Path, Path | None]:
    """(INT8 export folder, diffusers folder for the torch baseline or None), built once in ``cache``."""
    with cache_lock(cache):
        return _prepare_model(model, smoke, cache)


def _prepare_model(model: str | None, smoke: bool, cache: Path) -> tuple[Path, Path | None]:
    if smoke and model is None:
        model = str(source_folder(cache, tiny=True))
    if model is None and (REFERENCE_MODEL / "model_index.json").is_file():
        from reference.sd_width import materialize

        model = str(materialize(REFERENCE_MODEL, cache / "reference-768"))
    path = Path(model) if model else REFERENCE_MODEL
    if (path / MANIFEST).is_file():
        try:
            return checked_export(path, "--model"), qm.torch_source(path)
        except FileNotFoundError:
            return path, None
    if not (path / "model_index.json").is_file():
        raise ZoodipError(f"--model {path}: neither an export folder (manifest.json) nor a diffusers folder "
                          "(model_index.json)")
    # A diffusers folder: export it once with the project's exporter, recipe EXPORT_RECIPE.
    stamp = hashlib.sha256()
    for file in sorted(path.rglob("*")):
        if file.is_file():
            stat = file.stat()
            stamp.update(f"{file.relative_to(path)}:{stat.st_size}:{int(stat.st_mtime)}".encode())
    dest = cache / f"quality-{path.name.removeprefix('quality-')}-{stamp.hexdigest()[:10]}-{EXPORT_RECIPE}"
    if not (dest / MANIFEST).is_file():
        from zoodip_export.export_model import export_model

        log(f"exporting {path} -> {dest} ({EXPORT_RECIPE})")
        started = time.perf_counter()
        export_model(path, dest, recipe=EXPORT_RECIPE, parity=True, progress=False, overwrite=True)
        log(f"exported in {time.perf_counter() - started:.0f}s")
    return dest, path


def load_world(required: bool) -> Any:
    try:
        return importlib.import_module("reference.world")
    except ImportError:
        if required:
            raise ZoodipError("reference/world.py is not available: the world task needs it (use --task planted)")
        return None


def load_evaluator() -> Any:
    module = importlib.import_module("reference.evaluator")
    return module.Evaluator.load()


def world_ready() -> str | None:
    """None if the world task can run, else the reason it cannot."""
    if not (REPO / "reference" / "world.py").is_file():
        return "reference/world.py is missing"
    if not (REPO / "reference" / "evaluator.py").is_file():
        return "reference/evaluator.py is missing"
    if not (REFERENCE_MODEL / "model_index.json").is_file():
        return "reference/model-768 is not built"
    return None


# --------------------------------------------------------------------------------------------
# Jobs
# --------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------
# Running the methods
# --------------------------------------------------------------------------------------------


def _worker(args_path: Path) -> int:
    """Subprocess entry: train one method on every job, write the result JSON."""
    spec_in = json.loads(Path(args_path).read_text())
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    spec = qm.parse_method(spec_in["method"], tuple(spec_in["puts"]))
    jobs = [qm.Job.from_json(j) for j in spec_in["jobs"]]
    torch_model = Path(spec_in["torch_model"]) if spec_in.get("torch_model") else None
    result = qm.train_all(spec, jobs, Path(spec_in["export_dir"]), Path(spec_in["work"]), spec_in["budget"],
                          spec_in["checkpoints"], spec_in["seed"], torch_model, log=log)
    Path(spec_in["result"]).write_text(json.dumps(result))
    return 0


def run_method(method: str, jobs: list[qm.Job], export_dir: Path, torch_model: Path | None, work: Path,
               budget: int, checkpoints: int, seed: int, puts: tuple[int, int], in_process: bool) -> dict[str, Any]:
    spec = qm.parse_method(method, puts)
    if in_process:
        return qm.train_all(spec, jobs, export_dir, work, budget, checkpoints, seed, torch_model, log=log)
    # One fresh process per (method, job): its VmHWM is that run's peak memory; the method's figure
    # is the largest over its jobs.
    work.mkdir(parents=True, exist_ok=True)
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in method)
    # The caller's PYTHONPATH stays after the repository's root: a worker imports the zoodip its parent did.
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=path)
    started = time.perf_counter()
    merged: dict[str, Any] = {"method": method, "runs": {}, "wall_s": 0.0, "memory": {}, "memory_per_job": {}}
    for job in jobs:
        args_path, result_path = work / f"{safe}.{job.name}.args.json", work / f"{safe}.{job.name}.result.json"
        result_path.unlink(missing_ok=True)
        args_path.write_text(json.dumps({
            "method": method, "puts": list(puts), "jobs": [job.to_json()], "export_dir": str(export_dir),
            "work": str(work), "budget": budget, "checkpoints": checkpoints, "seed": seed,
            "torch_model": str(torch_model) if torch_model else None, "result": str(result_path),
        }))
        run_child([sys.executable, str(Path(__file__).resolve()), "--worker", str(args_path)], f"{method} on {job.name}", env=env)
        if not result_path.is_file():  # (a failed worker is its own error's one line, an interrupted one the parent's)
            raise ZoodipError(f"{method} on {job.name} failed: its worker wrote no {result_path}")
        result = json.loads(result_path.read_text())
        merged["spec"] = result["spec"]
        merged["runs"].update(result["runs"])
        merged["wall_s"] += result["wall_s"]
        merged["memory_per_job"][job.name] = result["memory"]
        for key, value in result["memory"].items():
            merged["memory"][key] = max(value, merged["memory"].get(key, 0.0))
    merged["process_wall_s"] = time.perf_counter() - started
    return merged


# --------------------------------------------------------------------------------------------
# Scoring, summaries
# --------------------------------------------------------------------------------------------


def score_all(task: str, trained: dict[str, dict[str, Any]], jobs: list[qm.Job], export_dir: Path, args: Any,
              world: Any) -> tuple[dict[str, dict[str, list[dict[str, Any]]]], dict[str, Any]]:
    """metrics[method][job] = list of checkpoint records (step, forwards, wall_s, metric values)."""
    extras: dict[str, Any] = {}
    scores: dict[str, dict[str, list[dict[str, Any]]]] = {m: {} for m in trained}
    started = time.perf_counter()
    if task == "planted":
        _score_planted(trained, jobs, export_dir, args, scores)
    else:
        _score_world(trained, jobs, export_dir, args, world, scores, extras)
    extras["scoring_wall_s"] = time.perf_counter() - started
    return scores, extras


def _score_planted(trained: dict[str, dict[str, Any]], jobs: list[qm.Job], export_dir: Path, args: Any,
                   scores: dict[str, dict[str, list[dict[str, Any]]]]) -> None:
    """The planted check's scores: the loss gap closed and the distance to v*, at each snapshot."""
    from benchmarks import _quality_eval as qe
    from zoodip.model import ExportedModel

    model = ExportedModel.load(export_dir)
    for job in jobs:
        init_id = model.tokenizer.token_ids_for_word(job.initializer)[0]
        v0 = np.asarray(model.token_embeddings[init_id], np.float32)
        scorer = qe.PlantedScorer(export_dir, Path(job.photos), job.placeholder, np.asarray(job.planted), seed=args.seed)
        for method, result in trained.items():
            records = []
            for snap in result["runs"][job.name]:
                metrics = scorer.score(np.asarray(snap["v"], np.float32), v0)
                records.append({k: snap[k] for k in ("step", "forwards", "wall_s")} | metrics)
            scores[method][job.name] = records


def _score_world(trained: dict[str, dict[str, Any]], jobs: list[qm.Job], export_dir: Path, args: Any, world: Any,
                 scores: dict[str, dict[str, list[dict[str, Any]]]], extras: dict[str, Any]) -> None:
    """The world task's scores (generated images read by the evaluator), the oracle's and the sample images."""
    from PIL import Image

    from benchmarks import _quality_eval as qe

    evaluator = load_evaluator()
    scorer = qe.WorldScorer(export_dir, evaluator, world, images_per_prompt=args.images_per_prompt,
                            sampler_steps=args.gen_steps, guidance=args.guidance, seed=args.seed,
                            max_heldout=args.max_heldout)
    concepts = {c.name.strip("<>"): c for c in world.CONCEPTS}
    samples: dict[str, dict[str, Any]] = {}
    cache: dict[tuple[str, bytes, bool], dict[str, Any]] = {}
    for job in jobs:
        concept = concepts[job.placeholder.strip("<>")]
        refs = [Image.open(p).convert("RGB") for p in sorted(Path(job.photos).glob("*.png"))]
        samples.setdefault("reference", {})[job.name] = refs[:4]
        seed = job.training_seed(args.seed)  # GENERATION_SEEDS: the generation noise is the job's
        oracle = scorer.score(concept, concept.name, None, refs, seed=seed)
        oracle.pop("_images", None)
        extras.setdefault("oracle", {})[job.name] = oracle
        for method, result in trained.items():
            records = []
            snaps = result["runs"][job.name]
            for k, snap in enumerate(snaps):
                v = np.asarray(snap["v"], np.float32)
                # Held-out prompts cost 5x the fidelity prompt: scored at the start and the end of
                # each run (all checkpoints with --curve-prompts all).
                heldout = args.curve_prompts == "all" or k in (0, len(snaps) - 1)
                key = (job.name, v.tobytes(), heldout)
                full_key = (job.name, v.tobytes(), True)
                if full_key in cache:  # e.g. the initializer: every run's first snapshot
                    key = full_key
                if key not in cache:
                    cache[key] = scorer.score(concept, concept.name, v, refs, keep_images=True, heldout=heldout,
                                               seed=seed)
                metrics = dict(cache[key])
                images = metrics.pop("_images", None)
                if images is not None and k == len(snaps) - 1:
                    samples.setdefault(method, {})[job.name] = images
                records.append({k2: snap[k2] for k2 in ("step", "forwards", "wall_s")} | metrics)
            scores[method][job.name] = records
            log(f"scored {method} / {job.name}: final " + ", ".join(
                f"{k}={v:.3f}" for k, v in records[-1].items() if k not in ("step", "forwards", "wall_s") and v is not None))
    extras["samples"] = samples


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python benchmarks/quality.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 concepts, 150 ZO steps, 3 checkpoints")
    parser.add_argument("--smoke", action="store_true", help="tiny random model, planted check, 1 job, few steps")
    parser.add_argument("--task", choices=("auto", "world", "planted"), default="auto",
                        help="auto: world if reference/model and reference/evaluator.py exist, else planted")
    parser.add_argument("--out", default=None, help=f"output folder (default {DEFAULT_OUT.relative_to(REPO)})")
    parser.add_argument("--concepts", default=None, help="concept names (comma list) or a count (planted: number of targets)")
    parser.add_argument("--methods", default=None, help=f"comma list of {', '.join(qm.METHODS)}; variants name[key=value]")
    parser.add_argument("--sweep", default=None, help="PUTS ranges to sweep, e.g. 300-700,500-900: runs zoodip[t=...] variants")
    parser.add_argument("--puts", default=None, help="PUTS range of zo-puts and zoodip (default 500-900, the paper's)")
    parser.add_argument("--model", default=None, help="export folder or diffusers folder (default reference/model-768, the SD-width world; reference/model is the 64-wide one)")
    parser.add_argument("--torch-model", type=Path, default=None, help="diffusers folder for ti-backprop (default: the export's source)")
    parser.add_argument("--steps", type=int, default=None, help="ZO steps; the budget is steps x 3 UNet forwards")
    parser.add_argument("--checkpoints", type=int, default=None, help="scored snapshots per run (default 5)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, default=1,
                        help="world task: repeat every concept with this many training seeds (seed, seed+1, ...): "
                             "other photos and other training noise; means and stds are over all of them")
    parser.add_argument("--images-per-prompt", type=int, default=4)
    parser.add_argument("--gen-steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--curve-prompts", choices=("fidelity", "all"), default="fidelity",
                        help="prompts scored at intermediate checkpoints: the fidelity prompt only (default; "
                             "held-out prompts at the first and last) or all")
    parser.add_argument("--max-heldout", type=int, default=None, help="held-out prompts per concept (default all)")
    parser.add_argument("--in-process", action="store_true", help="train in this process (no per-method memory figure)")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary folder)")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where model exports are cached")
    parser.add_argument("--merge", nargs="+", default=None, metavar="DIR[:METHODS][@SEEDS]",
                        help="combine the stored runs of these --out folders (same scoring; e.g. methods run in "
                             "parallel, one method run on disjoint --concepts, a long ZO run against a stored backprop "
                             "run, or a longer run of the same jobs that repeats a stored run's checkpoints, whose "
                             "curves it extends) into --out; trains nothing. DIR:METHODS takes only the listed methods from DIR, "
                             "DIR@1,2 only the jobs of training seeds 1 and 2")
    parser.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    return parser


@script_main("--out was not written (a model exported into --cache is kept for the next run)")
def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()
    try:
        args = (parser := build_parser()).parse_args(argv)
        checked = None if args.worker is not None or args.merge else _checked(args)
        if args.worker is None and (args.out is not None or not args.smoke):  # (a worker: its spec; --smoke alone: a temp folder)
            check_results_folder(Path(args.out or DEFAULT_OUT), parser, argv, "quality.py", merge_settings)
    except ZoodipError as exc:
        return print_error(exc)
    if args.worker is not None:
        return _worker(args.worker)
    command = "python benchmarks/quality.py " + shlex.join(relative_args(argv if argv is not None else sys.argv[1:]))
    if args.merge:
        return merge_main(args.merge, args.out, command)

    task, puts, methods = checked
    steps, checkpoints = run_length(args)
    try:  # before anything is written: a folder the exporter refuses is the contract's one line
        export_dir, torch_model = prepare_model(args.model, args.smoke, args.cache)
    except ZoodipError as exc:
        return print_error(exc)
    out = Path(args.out) if args.out is not None else None if args.smoke else DEFAULT_OUT  # (--smoke's: made at the end)

    torch_model = args.torch_model or torch_model
    if torch_model is None:
        methods = _without_backprop(methods, puts)

    tmp = scratch_folder("zoodip-quality-") if args.work is None else None
    work = Path(tmp.name) if tmp else args.work
    work.mkdir(parents=True, exist_ok=True)
    from zoodip.model import ExportedModel

    resolution = ExportedModel.load(export_dir).default_resolution
    world = load_world(required=(task == "world"))
    jobs = make_jobs(task, args, export_dir, work, resolution, world)
    budget = steps * 3
    log(f"task {task}: {len(jobs)} job(s) x {len(methods)} method(s), budget {budget} forwards, "
        f"{checkpoints} checkpoints, model {export_dir}")

    trained = {method: _logged(method, run_method(method, jobs, export_dir, torch_model, work / "runs", budget,
                                                  checkpoints, args.seed, puts, args.in_process)) for method in methods}
    scores, extras = score_all(task, trained, jobs, export_dir, args, world)
    summary = summarize(task, scores, trained)
    if extras.get("oracle"):
        summary["oracle"] = {m: (float(np.mean(vals)) if vals else None) for m in metric_names(task)
                             for vals in [[o[m] for o in extras["oracle"].values() if o.get(m) is not None]]}

    results = _results(task, command, args, export_dir, torch_model, steps, budget, checkpoints, puts, extras,
                       started, jobs, trained, scores, summary)
    out = out or Path(tempfile.mkdtemp(prefix="zoodip-quality-smoke-"))  # (only now: an interrupted or failed
    out.mkdir(parents=True, exist_ok=True)  # training leaves no empty --out, nor an empty temporary one for --smoke)
    write_reports(out, results)
    if extras.get("samples"):
        write_samples(out / "samples.png", extras["samples"])
    if tmp is not None:
        tmp.cleanup()
    log(f"done in {time.perf_counter() - started:.0f}s: {out}/results.md")
    print((out / "results.md").read_text())
    return 0


def _checked(args: Any) -> tuple[str, tuple[int, int], list[str]]:
    """(task, PUTS range, methods) of a training run, every flag checked before anything is written."""
    if not args.model and not args.smoke and not (REFERENCE_MODEL / "model_index.json").is_file():
        raise ZoodipError(f"the built-in model {repo_relative(REFERENCE_MODEL)} is missing from this checkout: restore "
                          f"it (git checkout -- {repo_relative(REFERENCE_MODEL)}) or give --model FOLDER")
    task = _task(args)
    if args.seeds < 1 or (args.seeds > 1 and task != "world"):
        raise ZoodipError(f"--seeds {args.seeds}: training seeds repeat the world task's concepts (a positive number, "
                          f"and only with --task world; this run's task is {task})")
    if args.model and not any((Path(args.model) / name).is_file() for name in (MANIFEST, "model_index.json")):
        raise ZoodipError(f"--model {args.model}: neither an export folder (manifest.json) nor a diffusers folder "
                          "(model_index.json)")
    if task == "world":
        world = load_world(required=True)
        select_concepts(list(world.CONCEPTS), args.concepts, 1, key=lambda c: c.name)  # a bad name: refused now
    else:
        planted_count(args.concepts, 1)  # a bad count: refused now
    check_counts(args)  # each from 1 to its cap (a slip such as --steps 90000 ran for days)
    if not 0 <= args.seed <= TORCH_SEED_LIMIT - args.seeds:  # (numpy seeds no negative; torch none past its range)
        raise ZoodipError(f"--seed {args.seed}: give 0 to {TORCH_SEED_LIMIT - args.seeds} (training seeds --seed to "
                          "--seed + --seeds - 1 seed torch's generator too)")
    if not np.isfinite(args.guidance) or args.guidance < 0:
        raise ZoodipError(f"--guidance {args.guidance}: give a finite guidance scale >= 0")
    for flag, folder in (("--out", args.out), ("--work", args.work), ("--cache", args.cache)):
        if folder is not None:
            check_output_dir(folder, flag)
    try:
        puts = qm.timestep_range(args.puts, "--puts") if args.puts else qm.REFERENCE_PUTS
        return task, puts, _methods(args, puts)
    except ValueError as exc:  # a method name or variant that does not parse
        raise ZoodipError(str(exc)) from None


def _task(args: Any) -> str:
    """The task to run: --task, or for "auto" the world task where the reference world is ready."""
    task = args.task
    if task == "auto":
        task = "planted" if args.smoke else ("world" if world_ready() is None else "planted")
        if task == "planted" and not args.smoke:
            log(f"world task unavailable ({world_ready()}): running the planted check")
    if task == "world" and world_ready() is not None and args.model is None:
        raise ZoodipError(f"the world task needs the reference world: {world_ready()}")
    return task


def _methods(args: Any, puts: tuple[int, int]) -> list[str]:
    """--methods, or the --sweep's PUTS ranges, or every method; each parsed now, so a typo fails early."""
    if args.methods is not None:
        methods = [m.strip() for m in split_methods(args.methods)]
    elif args.sweep is not None:
        methods = ["init"] + [f"zoodip[t={r.strip()}]" for r in args.sweep.split(",") if r.strip()]
    else:
        methods = list(qm.METHODS)
    if not methods:
        raise ValueError(f"--methods {args.methods!r} / --sweep {args.sweep!r} names no method")
    for method in methods:
        qm.checked_method(method, puts)
    return methods


def _logged(method: str, record: dict[str, Any]) -> dict[str, Any]:
    """A method's training record, its time and peak memory logged."""
    mem = record["memory"]
    log(f"{method}: trained in {record['wall_s']:.1f}s, peak RSS {mem.get('vmhwm_mb', mem['ru_maxrss_mb']):.0f} MiB")
    return record


def _without_backprop(methods: list[str], puts: tuple[int, int]) -> list[str]:
    """The methods but the backprop baseline, which needs a diffusers folder (said once in the log)."""
    kept = [m for m in methods if qm.parse_method(m, puts).kind != "backprop"]
    if len(kept) < len(methods):
        log("no diffusers folder for ti-backprop (pass --torch-model): skipping it")
    return kept


def _results(task: str, command: str, args: Any, export_dir: Path, torch_model: Path | None, steps: int, budget: int,
             checkpoints: int, puts: tuple[int, int], extras: dict, started: float, jobs: list, trained: dict,
             scores: dict, summary: dict) -> dict[str, Any]:
    """results.json: the run's settings and machine, each method's training record and scores, the summary."""
    return {
        "task": task,
        "meta": {
            **run_context(command), "model": repo_relative(export_dir), "model_weights": export_weights_identity(export_dir),
            "torch_model": repo_relative(torch_model) if torch_model else None,
            "seed": args.seed, "seeds": args.seeds, "steps": steps, "budget_forwards": budget, "checkpoints": checkpoints,
            "puts": list(puts), "gen_steps": args.gen_steps, "guidance": args.guidance,
            "images_per_prompt": args.images_per_prompt, "in_process": args.in_process,
            "curve_prompts": args.curve_prompts, "max_heldout": args.max_heldout, "concept_refs": CONCEPT_REFS,
            "generation_seeds": GENERATION_SEEDS,
            "scoring_wall_s": extras["scoring_wall_s"], "total_wall_s": time.perf_counter() - started,
        },
        "jobs": [j.name for j in jobs],
        "methods": {m: {"spec": t["spec"], "train_wall_s": t["wall_s"], "process_wall_s": t.get("process_wall_s"),
                        "memory": t["memory"], "memory_per_job": t.get("memory_per_job"), "runs": scores[m]}
                    for m, t in trained.items()},
        "summary": summary,
    }


if __name__ == "__main__":
    sys.exit(main())

"""Quality benchmark: how good is forward-only (ZOODiP) textual inversion, per forward pass?

    python benchmarks/quality.py                       # full: SD-width reference model, all methods, 8 concepts
    python benchmarks/quality.py --model reference/model --quick   # the 64-wide reference model (fast)
    python benchmarks/quality.py --quick               # < 5 min: 2 concepts, short budget
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
import datetime as _dt
import hashlib
import importlib
import importlib.metadata
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if str(Path(__file__).resolve().parents[1]) not in sys.path:  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from benchmarks import _quality_methods as qm  # noqa: E402
from benchmarks._models import DEFAULT_CACHE  # noqa: E402
from reference.repo import REPO, relative_args, repo_relative  # noqa: E402

DEFAULT_OUT = REPO / "benchmarks" / "results" / "quality"
REFERENCE_MODEL = REPO / "reference" / "model-768"  # the SD-width world (packed; materialized on first use)
ZO_METHODS = ("zo-naive", "zo-sg", "zo-puts", "zoodip")


def log(message: str) -> None:
    print(f"[quality {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Model and world
# --------------------------------------------------------------------------------------------


def prepare_model(model: str | None, smoke: bool, cache: Path) -> tuple[Path, Path | None]:
    """(INT8 export folder, diffusers folder for the torch baseline or None)."""
    if smoke and model is None:
        model = str(tiny_source(cache))
    if model is None and (REFERENCE_MODEL / "model_index.json").is_file():
        from reference.sd_width import materialize

        model = str(materialize(REFERENCE_MODEL, cache / "reference-768"))
    path = Path(model) if model else REFERENCE_MODEL
    if (path / "manifest.json").is_file():
        try:
            return path, qm.torch_source(path)
        except FileNotFoundError:
            return path, None
    if not (path / "model_index.json").is_file():
        raise SystemExit(f"--model {path}: neither an export folder (manifest.json) nor a diffusers folder "
                         "(model_index.json)" + ("; the reference model is not built yet" if model is None else ""))
    # A diffusers folder: export it once with the project's exporter (INT8, default recipe).
    stamp = hashlib.sha256()
    for file in sorted(path.rglob("*")):
        if file.is_file():
            stat = file.stat()
            stamp.update(f"{file.relative_to(path)}:{stat.st_size}:{int(stat.st_mtime)}".encode())
    dest = cache / f"quality-{path.name.removeprefix('quality-')}-{stamp.hexdigest()[:10]}-w8a32"
    if not (dest / "manifest.json").is_file():
        from zoodip_export.export_model import export_model

        log(f"exporting {path} -> {dest} (INT8, w8a32)")
        started = time.perf_counter()
        export_model(path, dest, parity=True, progress=False, overwrite=True)
        log(f"exported in {time.perf_counter() - started:.0f}s")
    return dest, path


def tiny_source(cache: Path) -> Path:
    """The tiny seeded random SD-shaped diffusers folder (built once into the cache)."""
    from zoodip_export.tiny import SOURCE_MARKER, build_tiny_sd_folder

    dest = cache / "quality-tiny-random-s0"
    if not (dest / SOURCE_MARKER).is_file():
        partial = cache / f"quality-tiny-random-s0.partial-{os.getpid()}"
        build_tiny_sd_folder(partial, seed=0)
        if dest.exists():
            import shutil

            shutil.rmtree(dest)
        partial.rename(dest)
    return dest


def load_world(required: bool) -> Any:
    try:
        return importlib.import_module("reference.world")
    except ImportError:
        if required:
            raise SystemExit("reference/world.py is not available: the world task needs it (use --task planted)")
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


def _select(items: list[Any], spec: str | None, default: int, key: Any) -> list[Any]:
    if spec is None:
        return items[:default]
    if spec.isdigit():
        return items[: int(spec)]
    wanted = [s.strip() for s in spec.split(",") if s.strip()]
    out = []
    for name in wanted:
        match = [c for c in items if key(c) in (name, f"<{name.strip('<>')}>")]
        if not match:
            raise SystemExit(f"unknown concept {name!r}: one of {[key(c) for c in items]}")
        out.extend(match)
    return out


def world_jobs(world: Any, concepts: list[Any], work: Path, resolution: int, seed: int,
               seeds: int = 1) -> list[qm.Job]:
    """One job per concept, or per (concept, seed) with ``seeds`` > 1: other photos, other training noise."""
    jobs = []
    for job_seed in range(seed, seed + seeds):
        for concept in concepts:
            name = concept.name.strip("<>") + (f"-s{job_seed}" if seeds > 1 else "")
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
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(REPO))
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
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", str(args_path)], env=env)
        if proc.returncode != 0 or not result_path.is_file():
            raise SystemExit(f"method {method} failed on {job.name} (exit status {proc.returncode})")
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
    from PIL import Image

    from benchmarks import _quality_eval as qe
    from zoodip.model import ExportedModel

    model = ExportedModel.load(export_dir)
    extras: dict[str, Any] = {}
    scores: dict[str, dict[str, list[dict[str, Any]]]] = {m: {} for m in trained}
    started = time.perf_counter()
    if task == "planted":
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
    else:
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
            oracle = scorer.score(concept, concept.name, None, refs)
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
                        cache[key] = scorer.score(concept, concept.name, v, refs, keep_images=True, heldout=heldout)
                    metrics = dict(cache[key])
                    images = metrics.pop("_images", None)
                    if images is not None and k == len(snaps) - 1:
                        samples.setdefault(method, {})[job.name] = images
                    records.append({k2: snap[k2] for k2 in ("step", "forwards", "wall_s")} | metrics)
                scores[method][job.name] = records
                log(f"scored {method} / {job.name}: final " + ", ".join(
                    f"{k}={v:.3f}" for k, v in records[-1].items() if k not in ("step", "forwards", "wall_s") and v is not None))
        extras["samples"] = samples
    extras["scoring_wall_s"] = time.perf_counter() - started
    return scores, extras


def metric_names(task: str) -> list[str]:
    if task == "planted":
        return ["gap_closed", "rel_distance", "loss"]
    return ["concept_fidelity", "attribute_acc", "prompt_fidelity", "prompt_requested_acc", "prompt_joint_acc"]


def mean_curve(records_by_job: dict[str, list[dict[str, Any]]], metric: str) -> list[tuple[float, float]]:
    """Mean over jobs at each checkpoint index: (forwards, metric)."""
    runs = list(records_by_job.values())
    length = min(len(r) for r in runs)
    return [(float(np.mean([r[k]["forwards"] for r in runs])), float(np.mean([r[k][metric] for r in runs])))
            for k in range(length) if all(r[k].get(metric) is not None for r in runs)]


def forwards_to_reach(curve: list[tuple[float, float]], level: float) -> float | None:
    """First forward count at which the (linearly interpolated) curve reaches ``level``."""
    for k, (x, y) in enumerate(curve):
        if y >= level:
            if k == 0:
                return x
            x0, y0 = curve[k - 1]
            return x0 + (level - y0) / (y - y0) * (x - x0) if y != y0 else x
    return None


def initializer_level(curve: list[tuple[float, float]]) -> float | None:
    """The score at 0 forwards (every run's first snapshot is the initializer embedding), if scored."""
    return curve[0][1] if curve and curve[0][0] == 0 else None


def ratio_of_means_ci(ours: Any, reference: Any, resamples: int = 5000, seed: int = 0) -> tuple[float, float]:
    """95% interval of ``mean(ours) / mean(reference)`` by a paired bootstrap over jobs: both arrays are
    indexed by the same jobs, which are resampled together (a hard concept is hard for every method)."""
    a, b = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
    if a.shape != b.shape or a.ndim != 1 or not len(a):
        raise ValueError(f"need two equally long, non-empty per-job arrays; got shapes {a.shape} and {b.shape}")
    idx = np.random.default_rng(seed).integers(0, len(a), size=(resamples, len(a)))
    ratios = a[idx].mean(axis=1) / b[idx].mean(axis=1)
    lo, hi = np.percentile(ratios, [2.5, 97.5])
    return float(lo), float(hi)


def target_metrics(task: str) -> list[str]:
    """The metrics the >= 95%-of-backprop target is about."""
    return ["gap_closed"] if task == "planted" else ["concept_fidelity", "prompt_fidelity"]


def summarize(task: str, scores: dict[str, Any], trained: dict[str, Any]) -> dict[str, Any]:
    headline = "gap_closed" if task == "planted" else "concept_fidelity"
    summary: dict[str, Any] = {"headline_metric": headline, "methods": {}}
    for method, by_job in scores.items():
        entry: dict[str, Any] = {"final": {}, "final_std": {}, "curve": {}}
        for metric in metric_names(task):
            finals = [r[-1][metric] for r in by_job.values() if r[-1].get(metric) is not None]
            entry["final"][metric] = float(np.mean(finals)) if finals else None
            entry["final_std"][metric] = float(np.std(finals)) if finals else None
            entry["curve"][metric] = mean_curve(by_job, metric)
        entry["forwards"] = float(np.mean([r[-1]["forwards"] for r in by_job.values()]))
        entry["steps"] = float(np.mean([r[-1]["step"] for r in by_job.values()]))
        entry["train_wall_s"] = float(np.mean([r[-1]["wall_s"] for r in by_job.values()]))
        entry["memory"] = trained[method].get("memory", {})
        entry["spec"] = trained[method].get("spec", {})
        summary["methods"][method] = entry
    methods = summary["methods"]
    if "ti-backprop" in methods:
        bp = methods["ti-backprop"]["final"][headline]
        init = (methods["init"]["final"][headline] if "init" in methods
                else initializer_level(methods["ti-backprop"]["curve"][headline]))
        summary["backprop_final"] = bp
        for method, entry in methods.items():
            entry["vs_backprop"] = entry["final"][headline] / bp if bp else None
            if init is not None and bp != init:
                entry["gain_vs_backprop"] = (entry["final"][headline] - init) / (bp - init)
            # Forwards to reach X% of backprop's *gain* over the initializer (init + X (bp - init)):
            # raw similarity scores have a high floor, so X% of the raw value can hold at step 0.
            base = init if init is not None else 0.0
            for pct in (0.5, 0.9):
                entry[f"forwards_to_{int(pct * 100)}pct_backprop_gain"] = forwards_to_reach(
                    entry["curve"][headline], base + pct * (bp - base))
            # Each target metric's ratio, with a paired bootstrap interval over the jobs both ran.
            entry["vs_backprop_by_metric"], entry["vs_backprop_ci95"] = {}, {}
            ours, ref = scores[method], scores["ti-backprop"]
            for metric in target_metrics(task):
                jobs = [j for j in ours if j in ref and ours[j][-1].get(metric) is not None
                        and ref[j][-1].get(metric) is not None]
                if not jobs:
                    continue
                a = [ours[j][-1][metric] for j in jobs]
                b = [ref[j][-1][metric] for j in jobs]
                if np.mean(b) == 0:
                    continue
                entry["vs_backprop_by_metric"][metric] = float(np.mean(a) / np.mean(b))
                entry["vs_backprop_ci95"][metric] = list(ratio_of_means_ci(a, b))
    summary["naive_vs"] = {}
    for name in [m for m in methods if m.startswith("zoodip")] if "zo-naive" in methods else []:
        naive, ours = methods["zo-naive"], methods[name]
        level = min(naive["final"][headline], ours["final"][headline])
        f_naive = forwards_to_reach(naive["curve"][headline], level)
        f_ours = forwards_to_reach(ours["curve"][headline], level)
        # Also the level ZOODiP reaches at the end: naive ZO may not reach it within the budget.
        level_ours = ours["final"][headline]
        f_naive_ours = forwards_to_reach(naive["curve"][headline], level_ours)
        f_ours_ours = forwards_to_reach(ours["curve"][headline], level_ours)
        summary["naive_vs"][name] = {
            "level": level, "forwards_naive": f_naive, "forwards_zoodip": f_ours,
            "ratio": (f_naive / f_ours) if f_naive and f_ours else None,
            "zoodip_final_level": level_ours, "naive_forwards_to_zoodip_final": f_naive_ours,
            "zoodip_forwards_to_own_final": f_ours_ours,
        }
    return summary


# --------------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for package in ("zoodip", "numpy", "onnxruntime", "torch", "diffusers", "transformers", "pillow"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {"platform": platform.platform(), "python": platform.python_version(), "cpu": cpu,
            "cpu_count": os.cpu_count(), "load_avg_at_end": load, "versions": versions}


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if value != 0 and abs(value) < 0.01 and digits > 0:
            return f"{value:.2e}"
        return f"{value:.{digits}f}"
    return str(value)


def write_markdown(path: Path, results: dict[str, Any]) -> None:
    summary, meta, task = results["summary"], results["meta"], results["task"]
    methods = summary["methods"]
    headline = summary["headline_metric"]
    lines = [f"# Quality benchmark ({task})", "",
             f"`{meta['command']}`  ", f"{meta['date']}, {meta['machine']['cpu']} ({meta['machine']['cpu_count']} cores), "
             f"total {meta['total_wall_s']:.0f} s  ",
             f"model: `{meta['model']}`; jobs: {', '.join(results['jobs'])}; seed {meta['seed']}{' + ' + str(meta.get('seeds', 1) - 1) + ' more training seeds' if meta.get('seeds', 1) > 1 else ''}; "
             + (f"budget {meta['budget_forwards']} UNet forwards per method and job (ZO: {meta['steps']} steps x 3)"
                if meta.get("budget_forwards") is not None else "budgets per method: the forwards column"), ""]
    for source in meta.get("merged_from", []):
        lines.insert(-1, f"Merged from `{source['path']}`: {', '.join(f'`{m}`' for m in source['methods'])}, "
                         f"`{source['command']}`, {source['date']}, {source['total_wall_s']:.0f} s  ")
    if task == "world":
        lines.append(f"Generation: DPM++ 2M, {meta['gen_steps']} steps, guidance {meta['guidance']}, "
                     f"{meta['images_per_prompt']} images per prompt, fixed seeds (the same for every method). "
                     "Concept fidelity = mean evaluator-feature cosine between images of 'a photo of <tok>' and the concept's "
                     "photos; attribute acc = fraction of the concept's 5 attributes the evaluator reads on them; prompt "
                     "fidelity = attribute accuracy of held-out-prompt images against prompt_target (the requested "
                     "attribute changed, the concept's other attributes kept); requested = the requested attribute only; "
                     "joint = all five right at once. "
                     + {"all": "", "mixed": "Held-out prompts are scored at every checkpoint in the runs made with "
                                            "--curve-prompts all, at the start and end only in the others."}.get(
                         meta.get("curve_prompts"),
                         "Held-out prompts are scored at the start and end of each run only (--curve-prompts fidelity)."))
    else:
        lines.append("Planted check: v* = random vocabulary row + noise; targets = the INT8 UNet's predictions under v*; "
                     "gap closed = (L(v0) - L(v)) / (L(v0) - L(v*)) on fixed (photo, noise, t, prompt) items, t "
                     "stratified over [0, T); rel. distance = |v - v*| / |v0 - v*|.")
    lines.append("")
    metrics = metric_names(task)
    header = ["method"] + metrics + ["vs backprop", "gain vs backprop", "fwd to 50% bp gain", "fwd to 90% bp gain",
                                     "forwards", "steps", "train s", "peak RSS MiB"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method, entry in methods.items():
        row = [f"`{method}`"] + [(f"{_fmt(entry['final'][m])} ± {_fmt(entry['final_std'][m], 2)}"
                                  if entry["final"][m] is not None else "—") for m in metrics]
        row += [_fmt(entry.get("vs_backprop")), _fmt(entry.get("gain_vs_backprop")),
                _fmt(entry.get("forwards_to_50pct_backprop_gain"), 0), _fmt(entry.get("forwards_to_90pct_backprop_gain"), 0),
                _fmt(entry["forwards"], 0), _fmt(entry["steps"], 0), _fmt(entry["train_wall_s"], 1),
                _fmt(entry["memory"].get("vmhwm_mb", entry["memory"].get("ru_maxrss_mb")), 0)]
        lines.append("| " + " | ".join(row) + " |")
    if summary.get("oracle"):
        row = ["*world renders (oracle)*"] + [_fmt(summary["oracle"][m]) for m in metrics] + [""] * (len(header) - 1 - len(metrics))
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", f"Headline metric: `{headline}` (mean ± std over jobs, at the end of the budget). "
              "'vs backprop' = method / ti-backprop; 'gain vs backprop' = (method − init) / (ti-backprop − init); "
              "The oracle row scores the world's own renders of the concept (fresh seeds) and of each held-out prompt's "
              "target attributes: the evaluator's ceiling. 'fwd to X% bp gain' = forwards at which the mean curve first reaches init + X% of (ti-backprop − init) "
              "(linear interpolation between checkpoints; — = not within the budget). Peak RSS = VmHWM of the "
              "method's own training process (a fresh process per method and job, the largest over jobs; the torch baseline includes torch itself).", ""]
    for name in [m for m in methods if m not in ("ti-backprop", "init")] if "ti-backprop" in methods else []:
        lines.append(target_line(name, methods[name], target_metrics(task)))
    for name, nv in summary.get("naive_vs", {}).items():
        ratio_text = _fmt(nv["ratio"], 2) if nv["ratio"] else "—"
        lines.append(f"**Naive ZO vs `{name}` forwards for the same {headline} ({_fmt(nv['level'])}): "
                     f"{_fmt(nv['forwards_naive'], 0)} vs {_fmt(nv['forwards_zoodip'], 0)}, ratio {ratio_text}x** "
                     f"(> 1: `{name}` needs fewer). Naive ZO reaches `{name}`'s final level "
                     f"({_fmt(nv['zoodip_final_level'])}) after {_fmt(nv['naive_forwards_to_zoodip_final'], 0)} "
                     "forwards (— = not within the budget).  ")
    lines.append("")
    lines.append("Method settings: ")
    for method, entry in methods.items():
        lines.append(f"- `{method}`: " + ", ".join(f"{k}={v}" for k, v in entry["spec"].items()))
    path.write_text("\n".join(lines) + "\n")


def target_line(name: str, entry: dict[str, Any], metrics: list[str]) -> str:
    """One Markdown line: the method's ratio to backprop on each target metric, and whether all reach 0.95."""
    by_metric = entry.get("vs_backprop_by_metric") or {}
    ci = entry.get("vs_backprop_ci95") or {}
    parts = []
    for metric in metrics:
        ratio = by_metric.get(metric)
        interval = f" (95% CI {_fmt(ci[metric][0])}-{_fmt(ci[metric][1])})" if metric in ci else ""
        parts.append(f"{metric} {_fmt(ratio)}{interval}")
    met = all(by_metric.get(m) is not None and by_metric[m] >= 0.95 for m in metrics)
    return (f"**`{name}` / backprop: {', '.join(parts)}** (target >= 0.95 on "
            f"{'each' if len(metrics) > 1 else 'it'}: {'met' if met else 'not met'}); gain-normalized "
            f"{metrics[0]}: {_fmt(entry.get('gain_vs_backprop'))}.  ")


def write_curves(path: Path, results: dict[str, Any]) -> None:
    from benchmarks._quality_plot import line_panel, tile

    summary = results["summary"]
    panels = []
    for metric in metric_names(results["task"]):
        series = {m: e["curve"][metric] for m, e in summary["methods"].items() if e["curve"][metric]}
        if not series:
            continue
        # "init" is a single point: draw it as a flat line across the budget.
        if "init" in series and len(series["init"]) == 1:
            x_max = max(x for s in series.values() for x, _ in s)
            series["init"] = [(0.0, series["init"][0][1]), (x_max, series["init"][0][1])]
        panels.append(line_panel(f"{metric} (mean over {len(results['jobs'])} jobs) vs UNet forwards", series))
    tile(panels, columns=2).save(path)


def write_reports(out: Path, results: dict[str, Any]) -> None:
    """results.json, results.md and curves.png in ``out`` (samples.png needs the images: main only)."""
    (out / "results.json").write_text(json.dumps(results, indent=1, default=float))
    write_markdown(out / "results.md", results)
    write_curves(out / "curves.png", results)


def write_samples(path: Path, samples: dict[str, dict[str, list]]) -> None:
    from PIL import Image, ImageDraw

    rows = list(samples)
    jobs = list(samples.get("reference", {}))
    if not rows or not jobs:
        return
    size, label_w, per = 32, 86, 4
    first = next(iter(samples["reference"].values()))[0]
    size = first.size[0]
    width = label_w + len(jobs) * (per * size + 6)
    sheet = Image.new("RGB", (width, 14 + len(rows) * (size + 4)), "white")
    draw = ImageDraw.Draw(sheet)
    for c, job in enumerate(jobs):
        draw.text((label_w + c * (per * size + 6), 1), job[:22], fill="black")
    for r, method in enumerate(rows):
        y = 14 + r * (size + 4)
        draw.text((2, y + size // 2 - 6), method[:14], fill="black")
        for c, job in enumerate(jobs):
            for k, image in enumerate(samples[method].get(job, [])[:per]):
                sheet.paste(image.resize((size, size), Image.Resampling.NEAREST), (label_w + c * (per * size + 6) + k * size, y))
    sheet.quantize(256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)  # a small PNG


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="< 5 min: 2 concepts, 150 ZO steps, 3 checkpoints")
    parser.add_argument("--smoke", action="store_true", help="tiny random model, planted check, 1 job, few steps")
    parser.add_argument("--task", choices=("auto", "world", "planted"), default="auto",
                        help="auto: world if reference/model and reference/evaluator.py exist, else planted")
    parser.add_argument("--out", type=Path, default=None, help=f"output folder (default {DEFAULT_OUT.relative_to(REPO)})")
    parser.add_argument("--concepts", default=None, help="concept names (comma list) or a count (planted: number of targets)")
    parser.add_argument("--methods", default=None, help=f"comma list of {', '.join(qm.METHODS)}; variants name[key=value]")
    parser.add_argument("--sweep", default=None, help="PUTS ranges to sweep, e.g. 300-700,500-900: runs zoodip[t=...] variants")
    parser.add_argument("--puts", default=None, help="PUTS range of zo-puts and zoodip (default 500-900, the paper's)")
    parser.add_argument("--model", default=None, help="export folder or diffusers folder (default reference/model)")
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
    parser.add_argument("--merge", nargs="+", default=None, metavar="DIR[:METHODS]",
                        help="combine the stored runs of these --out folders (same jobs and scoring; e.g. methods run "
                             "in parallel, or a long ZO run against a stored backprop run) into --out; trains nothing. "
                             "DIR:METHODS takes only the listed methods from DIR")
    parser.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker is not None:
        return _worker(args.worker)
    started = time.perf_counter()
    command = "python benchmarks/quality.py " + " ".join(
        shlex.quote(a) for a in relative_args(argv if argv is not None else sys.argv[1:]))
    if args.merge:
        return merge_main(args.merge, args.out, command)

    task = args.task
    if task == "auto":
        task = "planted" if args.smoke else ("world" if world_ready() is None else "planted")
        if task == "planted" and not args.smoke:
            log(f"world task unavailable ({world_ready()}): running the planted check")
    if task == "world" and world_ready() is not None and args.model is None:
        raise SystemExit(f"the world task needs the reference world: {world_ready()}")
    if args.seeds < 1 or (args.seeds > 1 and task != "world"):
        print(f"quality.py: error: --seeds {args.seeds}: training seeds repeat the world task's concepts "
              f"(a positive number, and only with --task world; this run's task is {task})", file=sys.stderr)
        return 2
    puts = tuple(int(x) for x in args.puts.split("-")) if args.puts else qm.REFERENCE_PUTS
    steps = args.steps or (20 if args.smoke else 150 if args.quick else 300)
    checkpoints = args.checkpoints or (2 if args.smoke else 3 if args.quick else 5)
    if args.methods:
        methods = [m.strip() for m in split_methods(args.methods)]
    elif args.sweep:
        methods = ["init"] + [f"zoodip[t={r.strip()}]" for r in args.sweep.split(",") if r.strip()]
    else:
        methods = list(qm.METHODS)
    for method in methods:
        qm.parse_method(method, puts)  # fail early on a typo
    out = args.out or (DEFAULT_OUT if not args.smoke else Path(tempfile.mkdtemp(prefix="zoodip-quality-smoke-")))
    out.mkdir(parents=True, exist_ok=True)

    export_dir, torch_model = prepare_model(args.model, args.smoke, args.cache)
    torch_model = args.torch_model or torch_model
    if torch_model is None and any(qm.parse_method(m, puts).kind == "backprop" for m in methods):
        log("no diffusers folder for ti-backprop (pass --torch-model): skipping it")
        methods = [m for m in methods if qm.parse_method(m, puts).kind != "backprop"]

    tmp = tempfile.TemporaryDirectory(prefix="zoodip-quality-") if args.work is None else None
    work = Path(tmp.name) if tmp else args.work
    work.mkdir(parents=True, exist_ok=True)
    from zoodip.model import ExportedModel

    resolution = ExportedModel.load(export_dir).default_resolution
    world = load_world(required=(task == "world"))
    if task == "world":
        concepts = _select(list(world.CONCEPTS), args.concepts, 2 if args.quick else len(world.CONCEPTS),
                           key=lambda c: c.name)
        jobs = world_jobs(world, concepts, work, resolution, args.seed, args.seeds)
    else:
        count = int(args.concepts) if args.concepts and args.concepts.isdigit() else (1 if args.smoke or args.quick else 3)
        if world is not None and resolution >= 32 and not args.smoke:
            concepts = list(world.CONCEPTS)[:count]
            photo_jobs = world_jobs(world, concepts, work, resolution, args.seed)
            photos = [(j.name, Path(j.photos), j.initializer) for j in photo_jobs]
        else:
            photos = [("example", REPO / "sdk" / "zoodip" / "data" / "example_concept", "object")]
        jobs = planted_jobs(export_dir, count, args.seed, photos)
    budget = steps * 3
    log(f"task {task}: {len(jobs)} job(s) x {len(methods)} method(s), budget {budget} forwards, "
        f"{checkpoints} checkpoints, model {export_dir}")

    trained: dict[str, dict[str, Any]] = {}
    for method in methods:
        trained[method] = run_method(method, jobs, export_dir, torch_model, work / "runs", budget, checkpoints,
                                     args.seed, puts, args.in_process)
        mem = trained[method]["memory"]
        log(f"{method}: trained in {trained[method]['wall_s']:.1f}s, peak RSS {mem.get('vmhwm_mb', mem['ru_maxrss_mb']):.0f} MiB")
    scores, extras = score_all(task, trained, jobs, export_dir, args, world)
    summary = summarize(task, scores, trained)
    if extras.get("oracle"):
        summary["oracle"] = {m: (float(np.mean(vals)) if vals else None) for m in metric_names(task)
                             for vals in [[o[m] for o in extras["oracle"].values() if o.get(m) is not None]]}

    results = {
        "task": task,
        "meta": {
            "command": command, "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine_info(), "model": repo_relative(export_dir),
            "torch_model": repo_relative(torch_model) if torch_model else None,
            "seed": args.seed, "seeds": args.seeds, "steps": steps, "budget_forwards": budget, "checkpoints": checkpoints,
            "puts": list(puts), "gen_steps": args.gen_steps, "guidance": args.guidance,
            "images_per_prompt": args.images_per_prompt, "in_process": args.in_process,
            "curve_prompts": args.curve_prompts, "max_heldout": args.max_heldout,
            "scoring_wall_s": extras["scoring_wall_s"], "total_wall_s": time.perf_counter() - started,
        },
        "jobs": [j.name for j in jobs],
        "methods": {m: {"spec": t["spec"], "train_wall_s": t["wall_s"], "process_wall_s": t.get("process_wall_s"),
                        "memory": t["memory"], "memory_per_job": t.get("memory_per_job"), "runs": scores[m]}
                    for m, t in trained.items()},
        "summary": summary,
    }
    write_reports(out, results)
    if extras.get("samples"):
        write_samples(out / "samples.png", extras["samples"])
    if tmp is not None:
        tmp.cleanup()
    log(f"done in {time.perf_counter() - started:.0f}s: {out}/results.md")
    print((out / "results.md").read_text())
    return 0


# Settings that must agree for runs from different result folders to be compared (same scoring).
MERGE_KEYS = ("seed", "seeds", "gen_steps", "guidance", "images_per_prompt", "max_heldout")


def parse_merge_source(text: str) -> tuple[Path, list[str] | None]:
    """``DIR`` (all its methods) or ``DIR:METHODS`` (a comma list of the methods to take from it)."""
    folder, sep, names = text.partition(":")
    if sep and Path(folder).is_dir():
        return Path(folder), split_methods(names)
    return Path(text), None


def merge_results(sources: list[str], command: str) -> dict[str, Any]:
    """Combine the stored runs of several ``--out`` folders into one result, summary recomputed.

    For methods trained in parallel processes, or compared against a baseline stored by an earlier
    run (e.g. a long ZO budget against backprop's). The folders must hold the same task, jobs and
    scoring settings (MERGE_KEYS and the model export), and no method twice (``DIR:METHODS`` takes
    only some of a folder's methods).
    """
    loaded = []
    for source in sources:
        folder, wanted = parse_merge_source(source)
        path = folder / "results.json"
        try:
            results = json.loads(path.read_text())
        except FileNotFoundError:
            raise ValueError(f"{path} does not exist; pass folders written by quality.py --out") from None
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"cannot read {path} ({exc}); pass folders written by quality.py --out") from None
        if wanted is not None:
            missing = [m for m in wanted if m not in results["methods"]]
            if missing:
                raise ValueError(f"{folder} has no method {missing[0]}; it has {', '.join(results['methods'])}")
            results["methods"] = {m: results["methods"][m] for m in wanted}
        loaded.append((folder, results))
    first_folder, first = loaded[0]
    methods: dict[str, Any] = {}
    origin: dict[str, Path] = {}
    for folder, results in loaded:
        meta = results["meta"]
        if results["task"] != first["task"]:
            raise ValueError(f"{folder} is a {results['task']} run, {first_folder} a {first['task']} run; merge runs of one task")
        if sorted(results["jobs"]) != sorted(first["jobs"]):
            differ = sorted(set(results["jobs"]) ^ set(first["jobs"]))
            raise ValueError(f"{folder} and {first_folder} ran different jobs ({', '.join(differ[:4])}); "
                             "merge runs of the same --concepts, --seed and --seeds")
        for key in MERGE_KEYS + ("model",):
            mine, theirs = meta.get(key), first["meta"].get(key)
            if key == "model":  # the export's cache name (content hash + recipe), not where it lay
                mine, theirs = Path(str(mine)).name, Path(str(theirs)).name
            if mine != theirs:
                raise ValueError(f"{folder} was scored with {key}={mine}, {first_folder} with {key}={theirs}; "
                                 "merge runs scored the same way")
        for name, entry in results["methods"].items():
            if name in methods:
                raise ValueError(f"method {name} is in both {origin[name]} and {folder}; merge runs of different methods")
            methods[name], origin[name] = entry, folder
    task = first["task"]
    scores = {name: entry["runs"] for name, entry in methods.items()}
    trained = {name: {"memory": entry.get("memory", {}), "spec": entry.get("spec", {})} for name, entry in methods.items()}
    summary = summarize(task, scores, trained)
    if first["summary"].get("oracle"):
        summary["oracle"] = first["summary"]["oracle"]
    meta = {key: first["meta"].get(key) for key in MERGE_KEYS + ("model", "torch_model", "puts")}
    curve_prompts = {r["meta"].get("curve_prompts") for _, r in loaded}
    meta.update({
        "command": command, "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": loaded[0][1]["meta"]["machine"], "steps": None, "budget_forwards": None,
        "checkpoints": None, "curve_prompts": curve_prompts.pop() if len(curve_prompts) == 1 else "mixed",
        "total_wall_s": float(sum(r["meta"].get("total_wall_s", 0.0) for _, r in loaded)),
        "merged_from": [{"path": repo_relative(folder), "methods": list(r["methods"]), "command": r["meta"]["command"],
                         "date": r["meta"]["date"], "machine": r["meta"]["machine"],
                         "total_wall_s": r["meta"].get("total_wall_s", 0.0)} for folder, r in loaded],
    })
    return {"task": task, "meta": meta, "jobs": first["jobs"], "methods": methods, "summary": summary}


def merge_main(sources: list[str], out: Path | None, command: str) -> int:
    if out is None:
        print("quality.py: error: --merge needs --out DIR (where to write the merged results)", file=sys.stderr)
        return 2
    try:
        results = merge_results(sources, command)
    except ValueError as exc:
        print(f"quality.py: error: --merge: {exc}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    write_reports(out, results)
    print((out / "results.md").read_text())
    return 0


def split_methods(text: str) -> list[str]:
    """Split a comma list, keeping commas inside [...] (e.g. 'zoodip[t=300-700,tau=64],es')."""
    out, depth, current = [], 0, ""
    for ch in text:
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            out.append(current)
            current = ""
        else:
            current += ch
    if current.strip():
        out.append(current)
    return [m for m in out if m.strip()]


if __name__ == "__main__":
    sys.exit(main())

"""``quality.py --merge``: one table from stored runs."""
from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Any

from benchmarks._quality_jobs import (concept_reference_seed, generation_seed, job_training_seed, run_length,
                                      seeded_name, seeded_names)
from benchmarks._quality_report import write_reports
from benchmarks._quality_summary import metric_names, summarize
from reference.repo import REPO, repo_relative
from zoodip.console import print_error
from zoodip.curvature import CURVATURE_FILE
from zoodip.errors import ZoodipError
from zoodip.manifest import MANIFEST
from zoodip.paths import check_output_dir, lies_within


MERGE_KEYS = ("gen_steps", "guidance", "images_per_prompt", "max_heldout")
# Runs of other training seeds merge too (world task): their jobs are then named by seed ("striped-star-s1").
SEED_KEYS = ("seed", "seeds")


def parse_merge_source(text: str) -> tuple[Path, list[str] | None, set[int] | None]:
    """``DIR`` (all its methods) or ``DIR:METHODS`` (a comma list of the methods to take from it; ``old=new``
    takes ``old`` under the name ``new``, e.g. ``zoodip=paper``), either followed by ``@SEEDS`` (a comma list
    of training seeds: only those seeds' jobs, e.g. ``DIR@1`` to replace another seed's jobs by a newer run)."""
    rest, at, seeds = text.rpartition("@")
    wanted_seeds = None
    if at and seeds and all(part.strip().isdigit() for part in seeds.split(",")):
        text, wanted_seeds = rest, {int(part) for part in seeds.split(",")}
    elif at and not Path(text).is_dir() and "@" in text.partition(":")[2 if ":" in text else 0]:
        raise ValueError(f"{text}: @SEEDS must be a comma list of training seeds (e.g. DIR@0,1), got {seeds!r}")
    folder, sep, names = text.partition(":")
    if sep and Path(folder).is_dir():
        return Path(folder), split_methods(names), wanted_seeds
    return Path(text), None, wanted_seeds


def merge_settings(parsed: Any) -> dict[str, Any]:
    """quality.py's parsed arguments as the results guard compares them: a run's length with its defaults filled
    in (``--steps 300`` is a full run's default), its --methods as the methods it names (their order only orders
    the tables); a --merge DIR as the folder it names ("DIR/" and "./DIR" are DIR), and the training flags a
    merge ignores left out."""
    if not parsed.merge:
        steps, checkpoints = run_length(parsed)
        methods = None if parsed.methods is None else sorted(name.strip() for name in split_methods(parsed.methods))
        return vars(parsed) | {"steps": steps, "checkpoints": checkpoints, "methods": methods}
    try:
        sources = [(str(folder), names, sorted(seeds) if seeds else None)
                   for folder, names, seeds in map(parse_merge_source, parsed.merge)]
    except ValueError:  # (merge_main says what is wrong with it)
        sources = list(parsed.merge)
    return {"merge": sources}


def export_weights_identity(model: Any) -> dict[str, str] | str:
    """The sha256 of every file of an export but its curvature subspace (the weights the runs used), by file;
    the export's cache name where its folder is no longer on this machine."""
    folder = Path(str(model))
    folder = folder if folder.is_absolute() else REPO / folder
    try:
        files = json.loads((folder / MANIFEST).read_text())["files"]
    except (OSError, ValueError, KeyError):
        return Path(str(model)).name
    return {name: info.get("sha256") for name, info in sorted(files.items()) if name != CURVATURE_FILE}


def weights_of(meta: dict[str, Any]) -> dict[str, str] | str:
    """A run's export weights: as the run recorded them, or (older runs) from its export folder if still here.
    Runs before 2026-12-03 recorded the same mapping as a JSON string."""
    recorded = meta.get("model_weights")
    if isinstance(recorded, str):
        try:
            recorded = json.loads(recorded)
        except ValueError:
            pass  # a cache name
    return recorded or export_weights_identity(meta.get("model"))


def _load_source(source: str) -> tuple[Path, dict[str, Any]]:
    """One ``DIR[:METHODS][@SEEDS]`` source: its results.json, only (and renamed to) the methods asked for,
    only the jobs of the training seeds asked for."""
    folder, wanted, seeds = parse_merge_source(source)
    path = folder / "results.json"
    try:
        results = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path} does not exist; pass folders written by quality.py --out") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read {path} ({exc}); pass folders written by quality.py --out") from None
    if wanted is not None:
        renames = [rename_pair(m) for m in wanted]
        missing = [old for old, _ in renames if old not in results["methods"]]
        if missing:
            raise ValueError(f"{folder} has no method {missing[0]}; it has {', '.join(results['methods'])}")
        results["methods"] = {new: results["methods"][old] for old, new in renames}
    if seeds is not None:
        _keep_seeds(folder, results, seeds)
    if results["task"] == "world":  # under the job names of this run (renamed with them by _training_seeds)
        results["reference_seeds"] = {job: concept_reference_seed(results["meta"], job) for job in results["jobs"]}
        if "merged_from" in results["meta"] and "job_generation_seeds" not in results["meta"]:
            results["meta"]["job_generation_seeds"] = _recorded_generation_seeds(folder, results)
        results["generation_seeds"] = {job: generation_seed(results["meta"], job) for job in results["jobs"]}
    return folder, results


def _recorded_generation_seeds(folder: Path, merged: dict[str, Any]) -> dict[str, int]:
    """Each job's generation seed in a merged run older than ``meta.job_generation_seeds``, read from the runs
    it was merged from (the legacy rule, the merged run's first seed for every job, is wrong for those);
    refused if one of them is no longer here."""
    seeds: dict[str, int] = {}
    for source in merged["meta"]["merged_from"]:
        path = REPO / source["path"] / "results.json"
        try:
            run = json.loads(path.read_text())
        except (OSError, ValueError):
            raise ValueError(f"{folder} is a merged run older than its jobs' generation seeds record, and {path}, "
                             "one of the runs it was merged from, cannot be read: merge those runs instead") from None
        if "merged_from" in run["meta"] and "job_generation_seeds" not in run["meta"]:
            run["meta"]["job_generation_seeds"] = _recorded_generation_seeds(REPO / source["path"], run)
        names = seeded_names(run["jobs"], run["task"], run["meta"])
        for job in run["jobs"]:
            seeds.setdefault(names[job], generation_seed(run["meta"], job))
    meta = merged["meta"]
    names = {job: seeded_name(job, int(meta["seed"])) if int(meta.get("seeds", 1)) == 1 else job for job in merged["jobs"]}
    return {job: seeds[name] for job, name in names.items() if name in seeds}


def _keep_seeds(folder: Path, results: dict[str, Any], seeds: set[int]) -> None:
    """Drop (in place) the jobs of a world run whose training seed is not in ``seeds``."""
    if results["task"] != "world":
        raise ValueError(f"{folder} is a {results['task']} run; @SEEDS selects jobs of world runs")
    kept = [job for job in results["jobs"] if job_training_seed(results["meta"], job) in seeds]
    if not kept:
        raise ValueError(f"{folder} has no job of training seed {', '.join(map(str, sorted(seeds)))}")
    results["jobs"] = kept
    for entry in results["methods"].values():
        entry["runs"] = {job: runs for job, runs in entry["runs"].items() if job in kept}
        if entry.get("memory_per_job"):
            entry["memory_per_job"] = {job: m for job, m in entry["memory_per_job"].items() if job in kept}


def merge_results(sources: list[str], command: str) -> dict[str, Any]:
    """Combine the stored runs of several ``--out`` folders into one result, summary recomputed.

    For methods trained in parallel processes, or compared against a baseline stored by an earlier
    run (e.g. a long ZO budget against backprop's). The folders must hold the same task and scoring
    settings (MERGE_KEYS and the model export). A method may come from several folders when they ran
    it on disjoint jobs (one process per group of ``--concepts``), or when one folder's run of the same
    jobs extends another's budget (``_extended``); in the end every method must have run every job
    (``DIR:METHODS`` takes only some of a folder's methods).
    """
    loaded = [_load_source(source) for source in sources]
    first_folder, first = loaded[0]
    for folder, results in loaded:
        if results["task"] != first["task"]:
            raise ValueError(f"{folder} is a {results['task']} run, {first_folder} a {first['task']} run; merge runs of one task")
    seeding = _training_seeds(loaded)
    metrics = metric_names(first["task"])  # the scores a longer run must repeat (_extended)
    methods: dict[str, Any] = {}
    origin: dict[str, dict[str, Path]] = {}  # method -> job -> the folder its run came from
    jobs: list[str] = []
    references: dict[str, tuple[int, Path]] = {}
    noises: dict[str, tuple[int, Path]] = {}
    for folder, results in loaded:
        jobs += [job for job in results["jobs"] if job not in jobs]
        _check_scored_alike(folder, results, first_folder, first, references, noises)
        for name, entry in results["methods"].items():
            methods[name] = _joined(name, methods[name], origin[name], entry, folder, metrics) if name in methods else entry
            origin.setdefault(name, {}).update(dict.fromkeys(entry["runs"], folder))
    for name, entry in methods.items():
        missing = [job for job in jobs if job not in entry["runs"]]
        if missing:
            raise ValueError(f"method {name} has no run of {', '.join(missing[:4])}; merge runs that cover the same "
                             "jobs (the same --concepts, --seed and --seeds, or disjoint groups of them)")
        _check_one_grid(name, entry["runs"])
    task = first["task"]
    scores = {name: entry["runs"] for name, entry in methods.items()}
    trained = {name: {"memory": entry.get("memory", {}), "spec": entry.get("spec", {})} for name, entry in methods.items()}
    summary = summarize(task, scores, trained)
    if first["summary"].get("oracle"):
        summary["oracle"] = first["summary"]["oracle"]
    meta = {key: first["meta"].get(key) for key in MERGE_KEYS + ("model", "torch_model", "puts")}
    meta["model_weights"] = weights_of(first["meta"])
    meta.update(seeding)
    if task == "world":  # the sources' rules for it differ (concept_reference_seed): record it per job
        meta["concept_ref_seeds"] = {job: seed for job, (seed, _) in references.items()}
        meta["job_generation_seeds"] = {job: seed for job, (seed, _) in noises.items()}
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
    return {"task": task, "meta": meta, "jobs": jobs, "methods": methods, "summary": summary}


def _check_one_grid(name: str, runs: dict[str, list[dict[str, Any]]]) -> None:
    """Refuse a method whose jobs were scored at other checkpoints (runs of other --steps or --checkpoints joined):
    its mean curve averages the jobs' k-th checkpoints."""
    grids = {job: [record["forwards"] for record in curve] for job, curve in runs.items()}
    first_job, first = next(iter(grids.items()))
    for job, grid in grids.items():
        if grid != first:
            raise ValueError(f"method {name} scored {job} at {_forwards_list(grid)} forwards and {first_job} at "
                             f"{_forwards_list(first)}; merge runs of one --steps and --checkpoints (or runs that "
                             "extend them all alike)")


def _forwards_list(grid: list[float]) -> str:
    return ", ".join(f"{forwards:g}" for forwards in grid)


def _check_scored_alike(folder: Path, results: dict[str, Any], first_folder: Path, first: dict[str, Any],
                        references: dict[str, tuple[int, Path]], noises: dict[str, tuple[int, Path]]) -> None:
    """Refuse a run scored otherwise than the first: other weights, generation settings, or (for a job already
    seen) other reference photos or generation noise; ``references`` and ``noises`` collect each job's photos
    seed and generation seed and where each was first seen."""
    meta = results["meta"]
    for job, seed in results.get("reference_seeds", {}).items():
        if references.setdefault(job, (seed, folder))[0] != seed:
            raise ValueError(f"{job}'s concept fidelity was scored against seed {references[job][0]}'s photos in "
                             f"{references[job][1]} and seed {seed}'s in {folder} (runs before 2026-12-03 scored "
                             "every seed against the run's first seed's photos); merge runs scored alike")
    for job, seed in results.get("generation_seeds", {}).items():
        if noises.setdefault(job, (seed, folder))[0] != seed:
            raise ValueError(f"{job}'s images were generated from seed {noises[job][0]}'s noise in {noises[job][1]} "
                             f"and seed {seed}'s in {folder} (multi-seed runs before 2026-12-03 used the run's first "
                             "seed for every job); merge runs scored alike, e.g. DIR@SEEDS to leave those jobs out")
    if not _same_weights(results, first):  # the weights, not where the export lay
        raise ValueError(f"{folder} was made on another export ({meta.get('model')}) than {first_folder} "
                         f"({first['meta'].get('model')}), or one no longer on this machine and no job scored "
                         "alike at the initializer in both; merge runs on the same weights")
    for key in MERGE_KEYS:  # SEED_KEYS: _training_seeds
        mine, theirs = meta.get(key), first["meta"].get(key)
        if mine != theirs:
            raise ValueError(f"{folder} was scored with {key}={mine}, {first_folder} with {key}={theirs}; "
                             "merge runs scored the same way")


def _same_weights(results: dict[str, Any], first: dict[str, Any]) -> bool:
    """Whether two runs used the same export weights: the same recorded (or still readable) weights; or, where
    neither run's weights can be read (runs before 2026-12-03 recorded none, and their exports are gone), the
    same initializer scores, within REPEAT_TOLERANCE, on every job both scored. Their exports' cache names
    prove nothing either way: a name's stamp is the times of the files it was exported from, which change
    whenever the same source is materialized again."""
    mine, theirs = weights_of(results["meta"]), weights_of(first["meta"])
    if mine == theirs or not (isinstance(mine, str) and isinstance(theirs, str)):
        return mine == theirs
    metrics = metric_names(first["task"])
    ours, others = _initializer_scores(results, metrics), _initializer_scores(first, metrics)
    pairs = [(ours[job][key], others[job][key]) for job in set(ours) & set(others)
             for key in set(ours[job]) & set(others[job])]
    return bool(pairs) and all(abs(a - b) <= REPEAT_TOLERANCE for a, b in pairs)


def _initializer_scores(results: dict[str, Any], metrics: list[str]) -> dict[str, dict[str, float]]:
    """Each job's scores at 0 forwards (the initializer, the same for every method): a function of the
    weights the run generated its images with."""
    scores: dict[str, dict[str, float]] = {}
    for entry in results["methods"].values():
        for job, curve in entry["runs"].items():
            if curve and curve[0].get("forwards") == 0 and job not in scores:
                scores[job] = {key: curve[0][key] for key in metrics if curve[0].get(key) is not None}
    return scores


def _training_seeds(loaded: list[tuple[Path, dict[str, Any]]]) -> dict[str, Any]:
    """The merged run's seed fields; where the runs trained other seeds (or kept only some, ``@SEEDS``), every
    run's jobs renamed (in place) to their names in a run over several seeds, so that the same job has one name
    in all of them."""
    seedings = {(results["meta"].get("seed"), results["meta"].get("seeds", 1)) for _, results in loaded}
    if loaded[0][1]["task"] != "world":
        if len(seedings) == 1:
            return {key: loaded[0][1]["meta"].get(key) for key in SEED_KEYS}
        raise ValueError("the runs used other --seed values; merge planted runs of one seed")
    seeds = {job_training_seed(results["meta"], job) for _, results in loaded for job in results["jobs"]}
    seed, count = next(iter(seedings))
    if len(seedings) == 1 and seeds == set(range(int(seed), int(seed) + int(count or 1))):
        return {key: loaded[0][1]["meta"].get(key) for key in SEED_KEYS}
    for _, results in loaded:
        meta = results["meta"]
        if len(seeds) == 1:  # one seed's jobs kept from runs over several: the names of a one-seed run
            names = {job: job.rpartition("-s")[0] if int(meta.get("seeds", 1)) > 1 else job for job in results["jobs"]}
        else:
            names = seeded_names(results["jobs"], results["task"], meta)
        results["jobs"] = [names[job] for job in results["jobs"]]
        for key in ("reference_seeds", "generation_seeds"):
            results[key] = {names[job]: seed for job, seed in results[key].items()}
        for entry in results["methods"].values():
            entry["runs"] = {names.get(job, job): runs for job, runs in entry["runs"].items()}
            if entry.get("memory_per_job"):
                entry["memory_per_job"] = {names.get(job, job): m for job, m in entry["memory_per_job"].items()}
    return {"seed": min(seeds), "seeds": len(seeds), "training_seeds": sorted(seeds)}


def _joined(name: str, entry: dict[str, Any], where: dict[str, Path], other: dict[str, Any], folder: Path,
            metrics: list[str]) -> dict[str, Any]:
    """One method's runs from two folders with the same settings: on disjoint jobs (parallel processes), or on
    the same jobs where one run extends the other's budget (each shared job's curves joined, ``_extended``).
    ``where``: the folder each of ``entry``'s jobs came from; ``metrics``: the task's scores."""
    if entry.get("spec") != other.get("spec"):
        raise ValueError(f"method {name} has other settings in {folder} than in {where[next(iter(entry['runs']))]}; "
                         "merge runs of one method")
    runs = {**entry["runs"], **other["runs"]}
    for job in sorted(set(entry["runs"]) & set(other["runs"])):
        runs[job] = _extended(name, job, entry["runs"][job], where[job], other["runs"][job], folder, metrics)
    memory = {key: max(entry["memory"].get(key, 0.0), other["memory"].get(key, 0.0))
              for key in {**entry.get("memory", {}), **other.get("memory", {})}}
    per_job = {**(entry.get("memory_per_job") or {})}
    for job, peak in (other.get("memory_per_job") or {}).items():
        per_job[job] = {key: max(per_job.get(job, {}).get(key, 0.0), value) for key, value in peak.items()}
    return {**entry, "runs": runs, "memory": memory, "memory_per_job": per_job,
            "train_wall_s": (entry.get("train_wall_s") or 0.0) + (other.get("train_wall_s") or 0.0),
            "process_wall_s": (entry.get("process_wall_s") or 0.0) + (other.get("process_wall_s") or 0.0)}


# How far one trajectory's scores may differ when it is trained and scored again in another process or on
# another machine: float rounding in generation moves a score by far less (measured in benchmarks/README.md,
# "The paper's configuration to 27,000 forwards"), another training trajectory by far more.
REPEAT_TOLERANCE = 1e-3


def _extended(name: str, job: str, curve: list[dict[str, Any]], where: Path, more: list[dict[str, Any]],
              folder: Path, metrics: list[str]) -> list[dict[str, Any]]:
    """One job's checkpoint curve from two runs of it, one a longer run of the other.

    Training is deterministic, so a longer run repeats every checkpoint the two share; that is the test that
    they are one trajectory: at least one shared checkpoint after step 0 (the initializer is the same for any
    run), and the same scores, within REPEAT_TOLERANCE, on every shared checkpoint. There the longer run's
    record is kept, a score it left unscored (e.g. held-out prompts at intermediate checkpoints) taken from
    the other."""
    mine = {record["forwards"]: record for record in curve}
    theirs = {record["forwards"]: record for record in more}
    shared = sorted(set(mine) & set(theirs))
    if not any(forwards > 0 for forwards in shared):
        raise ValueError(f"method {name} ran {job} in both {where} and {folder}, with no trained checkpoint in "
                         "common; merge runs of disjoint jobs, or a longer run that repeats a checkpoint of the other")
    longer, shorter = (theirs, mine) if max(theirs) >= max(mine) else (mine, theirs)
    joined = {**mine, **theirs}
    for forwards in shared:
        a, b = mine[forwards], theirs[forwards]
        for key in metrics:
            if a.get(key) is not None and b.get(key) is not None and abs(a[key] - b[key]) > REPEAT_TOLERANCE:
                raise ValueError(f"method {name}'s {job} at {forwards:g} forwards has {key} {a[key]:.6f} in {where} "
                                 f"and {b[key]:.6f} in {folder}: not one trajectory (other training or scoring); "
                                 "merge a longer run only with runs it repeats")
        kept = longer[forwards]
        joined[forwards] = {**kept, **{key: shorter[forwards][key] for key in metrics
                                       if kept.get(key) is None and shorter[forwards].get(key) is not None}}
    return [joined[forwards] for forwards in sorted(joined)]


def merge_main(sources: list[str], out: str | Path | None, command: str) -> int:
    if out is None:
        return print_error("--merge needs --out DIR (where to write the merged results)")
    try:
        out = check_output_dir(out, "--out")
        for source in sources:
            folder, names, _ = parse_merge_source(source)
            if lies_within(out, folder):  # its run would be rewritten as a merge of itself, its own record lost
                raise ValueError(f"--out {out} is the run {source} or lies inside it: write the merge elsewhere")
            if names == []:
                raise ValueError(f"{source}: no methods after ':' (DIR takes all of them, DIR:A,B those)")
        results = merge_results(sources, command)
    except (ValueError, ZoodipError) as exc:
        return print_error(f"--merge: {exc}")
    out.mkdir(parents=True, exist_ok=True)
    write_reports(out, results)
    print((out / "results.md").read_text())
    return 0


def _outside_brackets(text: str, sep: str) -> list[int]:
    """Positions of ``sep`` outside [...]: a variant's own settings (``zoodip[t=300-700,tau=64]``) hold
    commas and ``=`` that do not separate methods or rename them."""
    positions, depth = [], 0
    for i, ch in enumerate(text):
        depth += (ch == "[") - (ch == "]")
        if ch == sep and depth == 0:
            positions.append(i)
    return positions


def rename_pair(text: str) -> tuple[str, str]:
    """``old=new`` -> (old, new); a plain name -> (name, name) (``paper[adam16=1]`` is one name)."""
    cut = _outside_brackets(text, "=")
    if not cut:
        return text, text
    return text[:cut[0]], text[cut[0] + 1:] or text[:cut[0]]


def split_methods(text: str) -> list[str]:
    """Split a comma list, keeping commas inside [...] (e.g. 'zoodip[t=300-700,tau=64],es')."""
    bounds = [-1, *_outside_brackets(text, ","), len(text)]
    return [part for a, b in zip(bounds, bounds[1:]) if (part := text[a + 1:b]).strip()]

"""Compare one method between two quality runs made on different exports of the same model (say W4A32
against W8A32): the same jobs, each run scored with its own weights, so ``quality.py --merge`` refuses them.

    python benchmarks/compare_runs.py RUN_A/results.json RUN_B/results.json [--method zoodip]
    python benchmarks/compare_runs.py RUN_A/results.json RUN_B/results.json --method 'default[n=8]' --method-b default
    python benchmarks/compare_runs.py RUN/results.json RUN/results.json --method A --method-b B --at 4500
    python benchmarks/compare_runs.py RUN_A/results.json RUN_B/results.json --method default --by-concept

Prints, per metric the benchmark scores, at the end of the budget (or, with ``--at F``, at each run's last checkpoint
within F forwards), both means and the paired difference A - B with a 95% bootstrap interval over the jobs both ran
(jobs resampled together: a hard concept is hard in both runs). ``--by-concept`` adds each concept's means
(over its jobs, one per training seed): a mean difference can hide one concept that a change costs and the
others it helps.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
if str(Path(__file__).resolve().parents[1]) not in sys.path:  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zoodip.console import interrupts_said_from_here  # noqa: E402

interrupts_said_from_here(__name__)  # (a Ctrl-C during the imports below, NumPy's among them: one line, not a traceback)

import numpy as np  # noqa: E402

from _quality_jobs import concept_reference_seed, generation_seed, seeded_names  # noqa: E402
from _quality_summary import metric_names  # noqa: E402

from zoodip.console import OneLineParser, print_error, script_main  # noqa: E402
from zoodip.errors import ZoodipError  # noqa: E402


def paired_difference_ci(a: np.ndarray, b: np.ndarray, resamples: int = 5000, seed: int = 0) -> tuple[float, float]:
    """95% interval of ``mean(a - b)`` by resampling the paired jobs."""
    idx = np.random.default_rng(seed).integers(0, len(a), size=(resamples, len(a)))
    lo, hi = np.percentile((a - b)[idx].mean(axis=1), [2.5, 97.5])
    return float(lo), float(hi)


def seeded_runs(run: dict, method: str) -> dict[str, list]:
    """The method's runs by job, a one-seed world run's jobs named as in a run over several seeds."""
    runs = run["methods"][method]["runs"]
    names = seeded_names(runs, run["task"], run.get("meta", {}))
    return {names[job]: records for job, records in runs.items()}


def record_at(records: list[dict], at: int | None, side: str, job: str) -> dict:
    """A job's record at the end of its run, or (``at``) its last checkpoint within ``at`` forwards."""
    if at is None:
        return records[-1]
    within = [record for record in records if record["forwards"] <= at]
    if not within:
        raise ZoodipError(f"run {side} has no checkpoint of {job} within {at} forwards (its first is at "
                          f"{records[0]['forwards']}): give a larger --at")
    return within[-1]


def concept_of(job: str) -> str:
    """A world job's concept: its name without the training seed (``purple-diamond-s2`` -> ``purple-diamond``)."""
    return re.sub(r"-s\d+$", "", job)


def by_concept(a: dict[str, dict], b: dict[str, dict], jobs: list[str], metrics: list[str]) -> list[str]:
    """One Markdown row per concept: for each metric, mean A / mean B (A - B) over the concept's jobs."""
    rows = ["| concept | jobs | " + " | ".join(f"{metric}: A / B (A - B)" for metric in metrics) + " |",
            "|---|---|" + "---|" * len(metrics)]
    for concept in dict.fromkeys(concept_of(job) for job in jobs):  # in the jobs' order, once each
        mine = [job for job in jobs if concept_of(job) == concept]
        cells = []
        for metric in metrics:
            x = np.mean([a[job][metric] for job in mine])
            y = np.mean([b[job][metric] for job in mine])
            cells.append(f"{x:.3f} / {y:.3f} ({x - y:+.3f})")
        rows.append(f"| {concept} | {len(mine)} | " + " | ".join(cells) + " |")
    return rows


def compare(run_a: dict, run_b: dict, method: str, method_b: str | None = None, at: int | None = None,
            concepts: bool = False) -> list[str]:
    """One Markdown row per metric: mean A, mean B, A - B [95% interval], jobs (those both runs scored).

    ``method`` in A against ``method_b`` (default: the same method) in B: a variant against the method it varies.
    ``at``: compare each run's last checkpoint within that many forwards instead of the end of the run.
    ``concepts``: then a table of each concept's means (:func:`by_concept`) for the metrics compared."""
    if run_a["task"] != run_b["task"]:
        raise ZoodipError(f"the runs are of different tasks ({run_a['task']} and {run_b['task']}): compare like with like")
    method_b = method_b or method
    # (asked, not a KeyError caught: one inside a damaged run's records said "not in run A: pick one of" itself)
    if method not in run_a["methods"]:
        raise ZoodipError(f"method {method!r} is not in run A: pick one of {', '.join(run_a['methods'])} with --method")
    if method_b not in run_b["methods"]:
        raise ZoodipError(f"method {method_b!r} is not in run B: pick one of {', '.join(run_b['methods'])} "
                          "with --method-b")
    a, b = seeded_runs(run_a, method), seeded_runs(run_b, method_b)
    jobs = sorted(set(a) & set(b))
    if not jobs:
        raise ZoodipError("the runs share no job: compare runs of the same jobs")
    a = {job: record_at(a[job], at, "A", job) for job in jobs}
    b = {job: record_at(b[job], at, "B", job) for job in jobs}
    rows = ["| metric | A | B | A - B [95% paired interval] | jobs |", "|---|---|---|---|---|"]
    def differing(seed_of) -> list[str]:  # the world jobs the two runs scored with other seeds' photos or noise
        return [job for job in jobs if run_a["task"] == "world"
                and seed_of(run_a.get("meta", {}), job) != seed_of(run_b.get("meta", {}), job)]

    other_photos, other_noise = differing(concept_reference_seed), differing(generation_seed)
    compared = []
    for metric in metric_names(run_a["task"]):
        if metric == "concept_fidelity" and other_photos:
            continue  # a mean over photos that differ between the runs: not a paired difference
        values = [(a[job].get(metric), b[job].get(metric)) for job in jobs]
        if any(v is None for pair in values for v in pair):
            continue  # not scored at that checkpoint of every job (e.g. held-out prompts in an older run)
        x, y = (np.array(side, np.float64) for side in zip(*values))
        lo, hi = paired_difference_ci(x, y)
        compared.append(metric)
        rows.append(f"| {metric} | {x.mean():.3f} | {y.mean():.3f} | {x.mean() - y.mean():+.3f} [{lo:+.3f}, {hi:+.3f}] | {len(jobs)} |")
    if at is not None:
        spans = [sorted({record["forwards"] for record in side.values()}) for side in (a, b)]
        rows.append("\ncompared at " + "; ".join(f"{name}: {span[0]}{'' if len(span) == 1 else f'-{span[-1]}'} forwards"
                                                 for name, span in zip("AB", spans)))
    if other_photos:
        rows.append(f"\nconcept_fidelity left out: the runs scored {', '.join(other_photos[:3])}"
                    f"{' ...' if len(other_photos) > 3 else ''} against other training seeds' photos")
    if other_noise:  # still a paired bootstrap over jobs, but the generation noise adds to its width
        rows.append(f"\n{len(other_noise)} of {len(jobs)} jobs' images were generated from other noise in the two "
                    f"runs ({', '.join(other_noise[:3])}{' ...' if len(other_noise) > 3 else ''}): their differences "
                    "include the generation noise")
    if concepts:
        rows += [""] + by_concept(a, b, jobs, compared)
    return rows


def read_run(path: Path) -> dict:
    """A quality run's results.json, or one line saying why it is not one."""
    try:
        run = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ZoodipError(f"{path}: cannot read it ({exc.strerror}): give the results.json of a quality.py run") from None
    except (UnicodeDecodeError, ValueError):
        raise ZoodipError(f"{path}: not JSON: give the results.json of a quality.py run") from None
    if not isinstance(run, dict) or not isinstance(run.get("methods"), dict) or "task" not in run:
        raise ZoodipError(f"{path}: not a quality.py results.json (no 'task' and 'methods'): give the results.json of a quality.py run")
    return run


@script_main("nothing was written")
def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="python benchmarks/compare_runs.py", description=__doc__.splitlines()[0])
    parser.add_argument("run_a", type=Path)
    parser.add_argument("run_b", type=Path)
    parser.add_argument("--method", default="zoodip", help="the method compared (in run A)")
    parser.add_argument("--method-b", default=None, help="run B's method, if it has another name (default: --method)")
    parser.add_argument("--at", type=int, default=None, metavar="FORWARDS",
                        help="compare each run's last checkpoint within FORWARDS forwards (default: the end of each run)")
    parser.add_argument("--by-concept", action="store_true", help="also each concept's means over its jobs")
    try:
        args = parser.parse_args(argv)
        if args.at is not None and args.at < 0:
            raise ZoodipError(f"--at must be a number of forwards >= 0, got {args.at}")
        runs = [read_run(path) for path in (args.run_a, args.run_b)]
        print("\n".join(compare(*runs, args.method, args.method_b, args.at, args.by_concept)))
    except ZoodipError as error:
        return print_error(error)
    except (KeyError, TypeError, IndexError, ValueError) as error:  # a results.json damaged inside
        print(f"error: the runs do not have the records quality.py writes ({type(error).__name__}: {error}): "
              "compare two results.json files as quality.py wrote them", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The demo over several training seeds: does ``make demo`` show the product working, and how often?

Runs the demo (``python -m reference.demo``: the built-in SD-width reference model, ``<striped-star>``, the demo's own budget)
once per training seed into one output folder (the export is reused) and collects, per seed, the mean
attribute accuracy of the "after" images, the share of them with all five attributes, and the wall time.

    python benchmarks/demo_seeds.py                      # seeds 0-4
    python benchmarks/demo_seeds.py --seeds 0-1 --steps 800

Results: ``benchmarks/results/demo/`` (results.json, results.md).
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from reference.repo import REPO, relative_args  # noqa: E402

sys.path.insert(0, str(REPO / "sdk"))
from zoodip.errors import ZoodipError  # noqa: E402
from zoodip.lr_schedule import LR_SCHEDULERS  # noqa: E402
from zoodip.validation import finite_float  # noqa: E402


def run(seeds: list[int], steps: int | None, out: Path, work: Path, method_flags: list[str]) -> dict:
    rows = []
    for seed in seeds:
        command = [sys.executable, "-m", "reference.demo", "--out", str(work), "--seed", str(seed),
                   "--no-progress"] + (["--steps", str(steps)] if steps else []) + method_flags
        started = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, cwd=REPO)
        wall = time.perf_counter() - started
        summary = json.loads((work / "summary.json").read_text())
        after = summary["concept_accuracy_after"]
        before = summary["concept_accuracy_before"]
        rows.append({"seed": seed, "steps": summary["steps"], "wall_s": round(wall, 1),
                     "mean_accuracy_before": round(sum(before.values()) / len(before), 3),
                     "mean_accuracy_after": round(sum(after.values()) / len(after), 3),
                     "all_five_after": summary["concept_all_five_after"],
                     "accuracy_after": after,
                     "eval_loss": [summary["eval_loss_initializer"], summary["eval_loss_final"]]})
        print(json.dumps(rows[-1]), flush=True)
    return {"command": " ".join(["python benchmarks/demo_seeds.py", *relative_args(sys.argv[1:])]),
            "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, "
                       f"{len(__import__('os').sched_getaffinity(0))} cores",
            "date": time.strftime("%Y-%m-%d"), "rows": rows}


def markdown(result: dict) -> str:
    lines = ["# The demo over training seeds", "", f"    {result['command']}", "",
             "| seed | steps | mean attribute accuracy before → after | all five after | wall s |", "|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['seed']} | {r['steps']} | {r['mean_accuracy_before']:.2f} → {r['mean_accuracy_after']:.2f} | "
                     f"{r['all_five_after']:.2f} | {r['wall_s']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0-4", help="a range A-B or a comma list")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the demo's)")
    p.add_argument("--learning_rate", type=float, default=None, help="passed to the demo (default: the SDK's)")
    p.add_argument("--lr_scheduler", choices=LR_SCHEDULERS, default=None, help="passed to the demo (default: the SDK's)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "demo")
    p.add_argument("--work", type=Path, default=REPO / ".cache" / "demo-seeds")
    args = p.parse_args(argv)
    if "-" in args.seeds:
        a, b = args.seeds.split("-")
        seeds = list(range(int(a), int(b) + 1))
    else:
        seeds = [int(s) for s in args.seeds.split(",")]
    if args.learning_rate is not None:  # the demo's own check, made before any run
        try:
            finite_float("--learning_rate", args.learning_rate, low=0.0)
        except ZoodipError as exc:
            p.error(str(exc))
    method_flags = [arg for flag in ("learning_rate", "lr_scheduler") if getattr(args, flag) is not None
                    for arg in (f"--{flag}", str(getattr(args, flag)))]
    result = run(seeds, args.steps, args.out, args.work, method_flags)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "results.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

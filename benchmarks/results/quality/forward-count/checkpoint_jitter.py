"""How much of the `default`-vs-backprop prompt-fidelity interval is the evaluator's sampling noise (2026-12-05).

    python benchmarks/results/quality/forward-count/checkpoint_jitter.py

Two neighbouring checkpoints of one run (900 forwards apart, late in the run, where the embedding hardly moves) are
scored on the same generation seeds; their difference bounds what re-scoring alone moves a job's figure. Against
it stands the job-to-job spread of (default - backprop), which sets the paired interval's width.
"""
import json
from pathlib import Path

import numpy as np

run = json.loads((Path(__file__).parent / "results.json").read_text())


def at(method: str, forwards: int) -> np.ndarray:
    return np.array([next(p["prompt_fidelity"] for p in run["methods"][method]["runs"][job] if p["forwards"] == forwards)
                     for job in run["jobs"]])


backprop = at("ti-backprop", 900)
budgets = (3600, 4500, 5400, 6300, 7200, 8100, 9000)
curve = {f: at("default", f) for f in budgets}
for f in budgets:
    print(f"{f} forwards: default/backprop {curve[f].mean() / backprop.mean():.3f}, "
          f"sd over the {len(backprop)} jobs of (default - backprop) {np.std(curve[f] - backprop, ddof=1):.3f}")
for f, g in zip(budgets, budgets[1:]):
    print(f"{f} -> {g} forwards: sd over the jobs of the change between neighbouring checkpoints {np.std(curve[g] - curve[f], ddof=1):.3f}")

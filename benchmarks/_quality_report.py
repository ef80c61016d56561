"""The quality benchmark's reports: results.md, curves.png, samples.png."""
from __future__ import annotations

import datetime
import importlib
import importlib.metadata
import json
import math
import os
import platform
from pathlib import Path
from typing import Any

from benchmarks._results_files import png, write_file
from benchmarks._quality_summary import TARGET_RATIO, metric_names, target_metrics


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


def run_line() -> str:
    """When and where a benchmark that prints its results ran, in one line for its Markdown."""
    machine = run_context("")
    return (f"{machine['date']}, {machine['machine']['cpu']} ({machine['machine']['cpu_count']} cores), "
            f"{machine['machine']['platform']}, onnxruntime {machine['machine']['versions']['onnxruntime']}")


def run_context(command: str) -> dict[str, Any]:
    """What a benchmark's record says about its run: the command, the date (UTC) and the machine."""
    return {"command": command, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine_info()}


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


def _preamble(results: dict[str, Any]) -> list[str]:
    """The title, the command, machine and model, and what the task's metrics mean."""
    meta, task = results["meta"], results["task"]
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
    return lines


def _table(summary: dict[str, Any], task: str) -> list[str]:
    """One row per method: each metric's final mean ± std, its comparison with backprop, its cost."""
    methods = summary["methods"]
    metrics = metric_names(task)
    header = ["method"] + metrics + ["vs backprop", "gain vs backprop", "fwd to 50% bp gain", "fwd to 90% bp gain",
                                     "forwards", "steps", "train s", "peak RSS MiB"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
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
    return lines


def write_markdown(path: Path, results: dict[str, Any]) -> None:
    summary, task = results["summary"], results["task"]
    methods = summary["methods"]
    headline = summary["headline_metric"]
    lines = _preamble(results) + _table(summary, task)
    lines += ["", f"Headline metric: `{headline}` (mean ± std over jobs, at the end of the budget). "
              "'vs backprop' = method / ti-backprop; 'gain vs backprop' = (method − init) / (ti-backprop − init); "
              "The oracle row scores the world's own renders of the concept (fresh seeds) and of each held-out prompt's "
              "target attributes: the evaluator's ceiling. 'fwd to X% bp gain' = forwards at which the mean curve first reaches init + X% of (ti-backprop − init) "
              "(linear interpolation between checkpoints; — = not within the budget). Peak RSS = VmHWM of the "
              "method's own training process (a fresh process per method and job, the largest over jobs; the torch baseline includes torch itself).", ""]
    for name in [m for m in methods if m not in ("ti-backprop", "init")] if "ti-backprop" in methods else []:
        lines.append(target_line(name, methods[name], target_metrics(task)))
    if summary.get("forwards_to_target"):
        reached = ", ".join(f"`{name}` {_fmt(f, 0) if f is not None else 'not within the scored checkpoints'}"
                            for name, f in summary["forwards_to_target"].items())
        lines.append(f"**Forwards to {TARGET_RATIO} of backprop's {' and '.join(target_metrics(task))}** (first "
                     f"scored checkpoint where every mean is there): {reached}.  ")
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
    write_file(path, "\n".join(lines) + "\n")


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
    write_file(path, png(tile(panels, columns=2)))


def write_results(out: Path, result: dict[str, Any], report: str) -> None:
    """A benchmark script's record: ``out``/results.json (the data) and results.md (``report``), which is also printed."""
    write_file(out / "results.json", json.dumps(result, indent=1) + "\n")
    write_file(out / "results.md", report)
    print(report)


def write_reports(out: Path, results: dict[str, Any]) -> None:
    """results.json, results.md and curves.png in ``out`` (samples.png needs the images: main only)."""
    write_file(out / "results.json", json.dumps(results, indent=1, default=float))
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
    write_file(path, png(sheet.quantize(256, method=Image.Quantize.MEDIANCUT), optimize=True))  # a small PNG

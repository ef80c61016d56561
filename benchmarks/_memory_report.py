"""benchmarks/memory.py's report: a row per contender (statistics over runs, ours' memory breakdown), the
headline ratios against the targets, the Markdown table and the bar chart.
"""
from __future__ import annotations

import statistics
from pathlib import Path

from _results_files import png, write_file

GB = 1e9
MB = 1 << 20
TARGET_PEAK_GB = 1.3
TARGET_RATIO = 5.0
# Issue 17's targets for the 4-bit recipe's row (ours-w4a32).
W4_TARGETS = {"peak_gb": 1.0, "ratio": 8.2, "speed": 1.15, "fidelity": 0.99, "files_gb": 0.6}


def _stats(values: list[float]) -> dict:
    if not values:
        return {"min": None, "median": None, "max": None, "n": 0}
    return {"min": min(values), "median": statistics.median(values), "max": max(values), "n": len(values)}


def summarize(name: str, description: str, spec: dict, runs: list[dict], manifest: dict | None) -> dict:
    ok = [r for r in runs if "error" not in r]
    row = {"name": name, "description": description, "kind": spec["kind"], "lever": bool(spec.get("lever")),
           "spec": {k: v for k, v in spec.items() if k not in ("photos", "workdir")}, "runs": runs,
           "errors": [r["error"] for r in runs if "error" in r]}
    if not ok:
        return row
    # Skip the first step of each run: it includes onnxruntime's/torch's first-call setup.
    steps = [t for r in ok for t in (r["step_times"][1:] if len(r["step_times"]) > 1 else r["step_times"])]
    forwards = ok[0].get("forwards_per_step", 1)
    row.update({
        "peak_rss": _stats([float(r["peak_rss"]) for r in ok]),
        "ru_maxrss": _stats([float(r["ru_maxrss"]) for r in ok]),
        "step_s": _stats(steps),
        "forwards_per_step": forwards,
        "s_per_forward": statistics.median(steps) / forwards if steps else None,
        "loadavg_1min_max": max(max(r.get("loadavg_1min", [0.0])) for r in ok),
        "phases": {phase: {k: statistics.median(r["phases"][phase][k] for r in ok) for k in ok[0]["phases"][phase]}
                   for phase in ok[0]["phases"]},
    })
    row["peak_split"] = peak_split(row["phases"])
    if spec["kind"] == "zoodip_generate":
        row["generate_s"] = _stats([float(r["generate_s"]) for r in ok])
        row["decode_s"] = _stats([float(r["decode_s"]) for r in ok if r.get("decode_s") is not None])
        row["decode_tile"] = ok[0].get("decode_tile")
    if manifest is not None:
        parity = manifest.get("parity") or {}
        row["parity_unet_rel"] = (parity.get("unet") or {}).get("int8_vs_fp32_rel")
        row["parity_text_encoder_rel"] = (parity.get("text_encoder") or {}).get("int8_vs_fp32_rel")
        row["recipe"] = manifest.get("recipe")
    if spec["kind"] == "zoodip":
        row["breakdown"] = breakdown(row["phases"], ok[0]["weight_file_bytes"])
    return row


def peak_split(phases: dict) -> dict:
    """The process peak's phase, its kernel peak, and its file-backed / anonymous split at that phase's highest
    sample (benchmarks/_contenders.py's Phases; runs from before the sampler have no split)."""
    name = max(phases, key=lambda phase: phases[phase]["peak"])
    phase = phases[name]
    return {"phase": name, "peak": phase["peak"], "file": phase.get("peak_file"), "anon": phase.get("peak_anon")}


def breakdown(phases: dict, weight_files: dict) -> dict:
    """Where ours' memory goes. Weights in external data files are memory-mapped by onnxruntime:
    they become resident (file-backed, clean pages) as the first forward touches them, so they are
    read from RssFile at the end of training rather than from the RSS right after loading."""
    weights_resident = phases["train"]["file_end"] - phases["imports"]["file_end"]
    return {
        "runtime_overhead_rss": phases["imports"]["end"],
        "weights_file_bytes": weight_files["text_encoder"] + weight_files["unet"],
        "weights_rss_after_load": phases["load"]["end"] - phases["setup"]["end"],
        "weights_resident_file_backed": weights_resident,
        "load_peak": phases["load"]["peak"],
        "anon_after_train": phases["train"]["anon_end"] - phases["imports"]["anon_end"],
        "activations_workspace": phases["train"]["peak"] - phases["imports"]["end"]
        - max(weights_resident, phases["load"]["end"] - phases["setup"]["end"]),
        "setup_vae_encode_peak": phases["setup"]["peak"],
        "train_peak": phases["train"]["peak"],
    }


# --- output ------------------------------------------------------------------------------------------


def _gb(value: float | None) -> str:
    return "-" if value is None else f"{value / GB:.2f}"


def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value / MB:.0f}"


def _sec(value: float | None) -> str:
    return "-" if value is None else (f"{value:.2f}" if value < 10 else f"{value:.1f}")


def _row_name(row: dict) -> str:
    return f"{row['name']} (= {row['same_as']}, measured once)" if row.get("same_as") else row["name"]


def markdown(report: dict) -> str:
    rows = report["rows"]
    ours = next((r for r in rows if r["name"] == "ours-int8" and "peak_rss" in r), None)
    lines = [f"Resolution {report['resolution']} px, {report['steps']} steps x {report['repeats']} repetitions per "
             f"contender, each in a fresh process; {report['machine']['cpu']}, {report['machine']['cores']} cores. "
             "Peak RSS = the kernel's high-water mark (VmHWM) of the whole process; step time excludes each run's "
             "first step. File / anon: the peak's file-backed (RssFile: memory-mapped weights, clean pages the OS can "
             "drop and re-read) and anonymous (RssAnon: heap, tensors) parts, read at the highest of samples taken "
             "every 10 ms in the peak's phase. Last column: the 1-minute load average during each row's runs; above "
             "the core count, other jobs shared the machine and stretched the times.", "",
             "| contender | peak RSS GB (min / max) | file / anon GB | x ours | step s (min / median / max) | "
             "s / forward | fidelity | UNet parity (rel) | load avg |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        if "peak_rss" not in row:
            lines.append(f"| {row['name']} | failed: {'; '.join(row['errors'])[:120]} | | | | | | | |")
            continue
        peak = row["peak_rss"]
        ratio = f"{peak['max'] / ours['peak_rss']['max']:.2f}" if ours else "-"
        step = row["step_s"]
        fidelity = row.get("fidelity")
        fid = "-" if fidelity is None else f"{fidelity:.3f}"
        parity = row.get("parity_unet_rel")
        lines.append(
            f"| {_row_name(row)} | {_gb(peak['min'])} / {_gb(peak['max'])} | {_split(row)} | {ratio} | "
            f"{_sec(step['min'])} / {_sec(step['median'])} / {_sec(step['max'])} | {_sec(row.get('s_per_forward'))} | "
            f"{fid} | {'-' if parity is None else f'{parity:.4f}'} | {row['loadavg_1min_max']:.1f} |")
    if not report.get("fidelity"):
        lines += ["", "Fidelity: not measured in this run (--no-fidelity); see a --quick run."]
    else:
        lines += ["", "Fidelity: correlation of the SDK's finite-difference directional derivatives (mu=1e-3, text encoder "
                  f"+ UNet) with torch autograd on the fp32 model, {report.get('fidelity', {}).get('directions', '-')} "
                  f"random directions at {report.get('fidelity', {}).get('resolution', '-')} px."]
    lines += ["", "torch backprop TI: one step = VAE encode + forward + backward; zoodip / torch ZO: one step = "
              "n+1 = 3 forwards (text encoder + UNet each)."]
    lines += generation_table(rows)
    if ours and "breakdown" in ours:
        b = ours["breakdown"]
        lines += ["", "Memory breakdown of ours-int8 (median over repetitions):", "",
                  "| part | MiB |", "|---|---|",
                  f"| runtime overhead (python + numpy + onnxruntime + zoodip imported) | {_mb(b['runtime_overhead_rss'])} |",
                  f"| weights: text encoder + UNet files | {_mb(b['weights_file_bytes'])} |",
                  f"| weights: RSS added by opening their sessions (memory-mapped: not yet touched) | {_mb(b['weights_rss_after_load'])} |",
                  f"| weights: resident after training (file-backed, mapped) | {_mb(b['weights_resident_file_backed'])} |",
                  f"| process peak while opening the sessions | {_mb(b['load_peak'])} |",
                  f"| activations / workspace / heap at the peak (training peak - runtime - resident weights) | {_mb(b['activations_workspace'])} |",
                  f"| anonymous memory kept after training (heap not returned) | {_mb(b['anon_after_train'])} |",
                  f"| setup peak (photos VAE-encoded, encoder then released) | {_mb(b['setup_vae_encode_peak'])} |",
                  f"| training peak | {_mb(b['train_peak'])} |"]
    if report.get("ratios"):
        lines += ratio_lines(report)
    if report.get("scaling"):
        lines += ["", "Scaling (peak RSS GB / median step s):", "", "| contender | " +
                  " | ".join(f"{r} px" for r in report["scaling"]["resolutions"]) + " |",
                  "|---|" + "---|" * len(report["scaling"]["resolutions"])]
        for name, cells in report["scaling"]["rows"].items():
            lines.append(f"| {name} | " + " | ".join(
                "-" if c is None else f"{c['peak_gb']:.2f} GB / {c['step_s']:.1f} s" for c in cells) + " |")
    lines += ["", f"Command: `{report['command']}`"]
    return "\n".join(lines) + "\n"


def ratio_lines(report: dict) -> list[str]:
    heading = "Ratios and targets:" if has_targets(report) else "Ratios (the tiny model: SD1.5's targets do not apply):"
    return ["", heading, ""] + [f"- {k}: {v}" for k, v in report["ratios"].items()]


def _split(row: dict) -> str:
    split = row.get("peak_split") or {}
    return "-" if split.get("file") is None else f"{_gb(split['file'])} / {_gb(split['anon'])}"


def generation_table(rows: list[dict]) -> list[str]:
    """The generation rows phase by phase: kernel peak of each phase, the peak's split, the times."""
    generation = [r for r in rows if r["kind"] == "zoodip_generate" and "peak_rss" in r]
    if not generation:
        return []
    lines = ["", "Generation (one image, 25 DPM-Solver++ steps, guidance 7.5; image-to-image: the last 20, strength "
             "0.8; inpainting: all 25, strength 1.0; one run each): peak RSS of each phase, the process peak's file-backed / anonymous split, s per "
             "denoising step (two UNet passes; three for a prompt of two AND parts), the decode's and the whole call's "
             "wall time.", "",
             "| contender | text encoder GB | VAE encode GB | UNet loop GB | VAE decode GB | peak GB (file / anon) | "
             "s / step | decode s | generate s | VAE tiles |", "|---|---|---|---|---|---|---|---|---|---|"]
    for row in generation:
        phases = row["phases"]
        tile = row.get("decode_tile")
        lines.append(
            f"| {row['name']} | " + " | ".join(_gb(phases.get(p, {}).get("peak")) for p in ("text", "encode", "unet", "decode"))
            + f" | {_gb(row['peak_rss']['max'])} ({_split(row)}) | {_sec(row['step_s']['median'])} | "
            f"{_sec(row['decode_s']['median'])} | {_sec(row['generate_s']['median'])} | "
            f"{'none (whole image)' if tile is None else f'{tile} latents'} |")
    return lines


def ratios(rows: list[dict], targets: bool = True) -> dict[str, str]:
    """The headline ratios; ``targets``: each with its SD1.5 target and verdict (not on the tiny model)."""
    by = {r["name"]: r for r in rows if "peak_rss" in r}
    out: dict[str, str] = {}
    ours = by.get("ours-int8")
    if not ours:
        return out
    peak = ours["peak_rss"]["max"]
    out["ours peak RSS (max over repetitions)"] = (
        _against(f"{peak / GB:.2f} GB", f"<= {TARGET_PEAK_GB} GB", peak / GB <= TARGET_PEAK_GB, targets))
    if "torch-backprop-ti" in by:
        ratio = by["torch-backprop-ti"]["peak_rss"]["min"] / peak
        out["torch backprop TI peak / ours peak"] = (
            _against(f"{ratio:.2f}x", f">= {TARGET_RATIO}x", ratio >= TARGET_RATIO, targets))
        out["torch backprop TI step time / ours step time"] = (
            f"{by['torch-backprop-ti']['step_s']['median'] / ours['step_s']['median']:.2f}x")
    for other in ("onnx-fp32", "torch-zo-fp32"):
        if other in by:
            out[f"{other} peak / ours peak"] = f"{by[other]['peak_rss']['min'] / peak:.2f}x"
    fp32 = [by[n] for n in ("onnx-fp32", "onnx-fp32-ortdefaults") if n in by and by[n].get("s_per_forward")]
    if fp32 and ours.get("s_per_forward"):
        fastest = min(fp32, key=lambda r: r["s_per_forward"])  # compare against fp32 at its best
        speed = fastest["s_per_forward"] / ours["s_per_forward"]
        out["INT8 forward speed vs the fastest fp32 ONNX forward (fp32 s / int8 s; >= 1 means int8 is no slower)"] = (
            f"{speed:.2f} against {fastest['name']}" + (f" ({_verdict(speed >= 1.0)})" if targets else ""))
    # Generation within a budget on the same export as ours.
    budgeted = next((r for name, r in by.items() if name.startswith("generate-") and r["spec"].get("memory_budget_mb")
                     and r["spec"].get("export") == ours["spec"].get("export")), None)
    if budgeted:
        generation = budgeted["peak_rss"]["max"]
        out["generation with --memory-budget, peak / ours personalization peak"] = (
            _against(f"{generation / GB:.2f} / {peak / GB:.2f} GB", "at most the personalization peak", generation <= peak,
                     targets))
    if ours.get("fidelity") is not None:
        out["ours fidelity"] = _against(f"{ours['fidelity']:.3f}", ">= 0.9", ours["fidelity"] >= 0.9, targets)
    out.update(w4a32_ratios(by, targets))
    return out


def _verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def _against(value: str, target: str, ok: bool, targets: bool) -> str:
    """``value`` with its target and verdict, or alone where the targets (SD1.5's) do not apply (the tiny model)."""
    return f"{value} (target {target}: {_verdict(ok)})" if targets else value


def w4a32_ratios(by: dict[str, dict], targets: bool = True) -> dict[str, str]:
    """The 4-bit row (``ours-w4a32``, else ``ours-int8`` when the default recipe is W4A32) against
    :data:`W4_TARGETS` (those of the rows this run has)."""
    default = by.get("ours-int8")
    if default and default["spec"].get("export", [None])[0] != "w4a32":
        default = None
    w4, ours, out = by.get("ours-w4a32") or default, by.get("ours-w8a32"), {}
    if not w4:
        return out
    peak, t = w4["peak_rss"]["max"], W4_TARGETS
    out["ours-w4a32 peak RSS"] = _against(f"{peak / GB:.3f} GB", f"<= {t['peak_gb']} GB", peak / GB <= t["peak_gb"], targets)
    if "torch-backprop-ti" in by:
        ratio = by["torch-backprop-ti"]["peak_rss"]["min"] / peak
        out["torch backprop TI peak / ours-w4a32 peak"] = _against(f"{ratio:.2f}x", f">= {t['ratio']}x", ratio >= t["ratio"], targets)
    if ours and ours.get("s_per_forward") and w4.get("s_per_forward"):
        slower = w4["s_per_forward"] / ours["s_per_forward"]
        out["ours-w4a32 s / forward vs ours-w8a32"] = _against(f"{slower:.2f}x", f"<= {t['speed']}x", slower <= t["speed"], targets)
    if w4.get("fidelity") is not None:
        out["ours-w4a32 fidelity"] = _against(f"{w4['fidelity']:.3f}", f">= {t['fidelity']}", w4["fidelity"] >= t["fidelity"], targets)
    files = [r.get("weight_file_bytes", {}) for r in w4.get("runs", [])]
    if files and "unet" in files[0]:
        size = (files[0]["text_encoder"] + files[0]["unet"]) / GB
        out["ours-w4a32 text encoder + UNet files"] = _against(f"{size:.3f} GB", f"<= {t['files_gb']} GB", size <= t["files_gb"], targets)
    generation = by.get("generate-w4a32-budget")
    if generation:
        gen = generation["peak_rss"]["max"]
        out["generate-w4a32-budget peak / ours-w4a32 personalization peak"] = (
            _against(f"{gen / GB:.3f} / {peak / GB:.3f} GB", "at most the personalization peak", gen <= peak, targets))
    return out


def has_targets(report: dict) -> bool:
    """Whether a run is held to the SD1.5 targets: not a --tiny one (older memory.json files say so in their command)."""
    return not report.get("tiny", "--tiny" in report.get("command", "").split())


def bar_chart(rows: list[dict], path: Path, title: str, targets: bool = True) -> None:
    """Horizontal bars of peak RSS, drawn with Pillow (no plotting dependency); the SD1.5 peak target's line where
    ``targets``."""
    from PIL import Image, ImageDraw, ImageFont

    rows = [r for r in rows if "peak_rss" in r]
    if not rows:
        return
    font = ImageFont.load_default()
    label_w, bar_w, row_h, top = 300, 420, 22, 34
    width, height = label_w + bar_w + 90, top + row_h * len(rows) + 30
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((8, 8), title, fill="black", font=font)
    top_value = max(r["peak_rss"]["max"] for r in rows) / GB
    scale = bar_w / (max(top_value, TARGET_PEAK_GB) if targets else top_value)
    for i, row in enumerate(rows):
        y = top + i * row_h
        value = row["peak_rss"]["max"] / GB
        color = (46, 139, 87) if row["name"] == "ours-int8" else ((120, 120, 200) if row["lever"] else (200, 90, 60))
        draw.text((8, y + 4), row["name"][:48], fill="black", font=font)
        draw.rectangle([label_w, y + 3, label_w + int(value * scale), y + row_h - 3], fill=color)
        draw.text((label_w + int(value * scale) + 6, y + 4), f"{value:.2f} GB", fill="black", font=font)
    if not targets:
        write_file(path, png(image, optimize=True))
        return
    x = label_w + int(TARGET_PEAK_GB * scale)
    draw.line([x, top - 4, x, top + row_h * len(rows)], fill=(220, 0, 0), width=1)
    draw.text((x + 3, top + row_h * len(rows) + 4), f"target {TARGET_PEAK_GB} GB", fill=(220, 0, 0), font=font)
    write_file(path, png(image, optimize=True))


# --- main ----------------------------------------------------------------------------------------------

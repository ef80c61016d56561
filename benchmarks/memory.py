"""Peak memory and speed of forward-only personalization at SD1.5 scale, against torch baselines.

    python benchmarks/memory.py --quick                 # 256 px, 1 repetition (~10 min on 2 cores)
    python benchmarks/memory.py                         # 512 px, 2 repetitions
    python benchmarks/memory.py --scaling               # + ours and torch backprop TI at 256/384/512
    python benchmarks/memory.py --tiny --out /tmp/m     # the tiny model, seconds (used by the tests)

The SD1.5 architecture is built with seeded random weights from its configs in
export/sd15_configs.py (memory and speed do not depend on weight values) and exported through the
project's own pipeline (export/export_model.py); both are cached under --cache and reused. Every contender runs in its
own fresh process (benchmarks/_contenders.py) and reports the kernel's peak resident set
(VmHWM per phase, ru_maxrss for the whole process). Writes memory.json, memory.md and memory.png
into --out and prints the table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file: make the repository importable

from reference.repo import REPO, relative_args  # noqa: E402

sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "sdk"))

from _models import DEFAULT_CACHE, export_name  # noqa: E402

from zoodip.errors import ZoodipError  # noqa: E402

CONTENDERS_PY = REPO / "benchmarks" / "_contenders.py"
PHOTOS = REPO / "sdk" / "zoodip" / "data" / "example_concept"
GB = 1e9
MB = 1 << 20
TARGET_PEAK_GB = 1.3
TARGET_RATIO = 5.0
DEFAULT_CHUNKS = 32  # the exporter's default query chunks (export/onnx_export.py ATTENTION_QUERY_CHUNKS)

# name -> (description, spec). "export": (recipe, attention query chunks). Lever rows study one knob each.
CONTENDERS: dict[str, tuple[str, dict]] = {
    "ours-int8": ("zoodip SDK, INT8 W8A32, --memory-budget (sequential, low-memory sessions), chunked attention",
                  {"kind": "zoodip", "export": ("w8a32", DEFAULT_CHUNKS), "memory_budget_mb": 1300}),
    "ours-w4a32": ("zoodip SDK, W4A32 (4-bit MatMulNBits where measured to hold, int8 elsewhere), --memory-budget, "
                   "chunked attention",
                   {"kind": "zoodip", "export": ("w4a32", DEFAULT_CHUNKS), "memory_budget_mb": 1300}),
    "onnx-fp32": ("zoodip SDK, fp32 ONNX, sequential, low-memory sessions, chunked attention",
                  {"kind": "zoodip", "export": ("fp32", DEFAULT_CHUNKS), "batched": False}),
    "onnx-fp32-ortdefaults": ("zoodip SDK, fp32 ONNX, sequential, onnxruntime's default session settings (its fastest)",
                              {"kind": "zoodip", "export": ("fp32", DEFAULT_CHUNKS), "batched": False,
                               "low_memory": False}),
    "torch-backprop-ti": ("torch fp32 backprop textual inversion (diffusers script), batch 1",
                          {"kind": "torch_ti"}),
    "torch-zo-fp32": ("torch fp32 forward-only ZO step (same loss, n=2), sequential, latents cached",
                      {"kind": "torch_zo", "batched": False, "once": True}),
    # levers
    "L0-int8-batched-fullattn": ("before: SDK default (n+1 batched), full attention scores",
                                   {"kind": "zoodip", "export": ("w8a32", 0), "batched": True, "lever": True}),
    "L1-int8-seq-fullattn": ("lever 1: n+1 evaluations one by one",
                                      {"kind": "zoodip", "export": ("w8a32", 0), "batched": False, "lever": True}),
    "L2-int8-seq-fullattn-arena": ("lever 2 contrast: onnxruntime CPU arena and memory patterns on",
                                      {"kind": "zoodip", "export": ("w8a32", 0), "batched": False, "low_memory": False,
                                       "lever": True}),
    "L2-int8-seq-fullattn-arena-devalloc": (
        "lever 2: arena on, session.use_device_allocator_for_initializers=1",
        {"kind": "zoodip", "export": ("w8a32", 0), "batched": False, "low_memory": False, "lever": True,
         "extra_config": {"session.use_device_allocator_for_initializers": "1"}}),
    "L2-ours-1thread": ("lever 2: intra-op threads 1 (instead of all cores)",
                                   {"kind": "zoodip", "export": ("w8a32", DEFAULT_CHUNKS), "memory_budget_mb": 1300,
                                    "threads": 1, "lever": True}),
    "L3-int8-batched-chunked": ("lever 3 alone: query-chunked attention, n+1 batched",
                                      {"kind": "zoodip", "export": ("w8a32", DEFAULT_CHUNKS), "batched": True,
                                       "lever": True}),
    "L4-ours-buffer-reuse-on": ("lever 4 contrast: ours with onnxruntime's buffer reuse on (one fp32 weight copy "
                                "per weight shape stays alive)",
                                {"kind": "zoodip", "export": ("w8a32", DEFAULT_CHUNKS), "memory_budget_mb": 1300,
                                 "lever": True, "session_attributes": {"enable_mem_reuse": True}}),
    "L5-ours-arena-off": ("lever 5 contrast: ours with the CPU arena off (every buffer faulted in afresh)",
                          {"kind": "zoodip", "export": ("w8a32", DEFAULT_CHUNKS), "memory_budget_mb": 1300,
                           "lever": True, "session_attributes": {"enable_cpu_mem_arena": False}}),
    "L6-ours-vocabulary-subspace": ("option: ours with --vocabulary-subspace 0.95 (the token table's PCA fitted at "
                                    "start-up)",
                                    {"kind": "zoodip", "export": ("w8a32", DEFAULT_CHUNKS), "memory_budget_mb": 1300,
                                     "lever": True, "vocabulary_variance": 0.95}),
}
MAIN = ["ours-int8", "onnx-fp32", "onnx-fp32-ortdefaults", "torch-backprop-ti", "torch-zo-fp32"]
QUICK_LEVERS = ["L4-ours-buffer-reuse-on", "L5-ours-arena-off"]


def _log(message: str) -> None:
    print(f"[memory {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- machine ----------------------------------------------------------------------------------------


def _meminfo() -> dict[str, int]:
    values = {}
    with open("/proc/meminfo", encoding="ascii") as handle:
        for line in handle:
            key, _, rest = line.partition(":")
            values[key] = int(rest.split()[0]) * 1024
    return values


def machine() -> dict:
    cpu = platform.processor()
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {"python": platform.python_version()}
    for module in ("numpy", "onnxruntime", "onnx", "torch", "diffusers", "transformers", "zoodip"):
        try:
            versions[module] = __import__(module).__version__
        except Exception:  # noqa: BLE001 - a missing baseline library is reported, not fatal
            versions[module] = None
    return {"cpu": cpu, "cores": os.cpu_count(), "affinity_cores": len(os.sched_getaffinity(0)),
            "ram_bytes": _meminfo().get("MemTotal"), "kernel": platform.release(), "versions": versions}


# --- running -----------------------------------------------------------------------------------------


def prepare_export(cache: Path, tiny: bool, recipe: str, chunks: int) -> Path:
    """Build/export (in a subprocess, so this process stays small) or reuse the cached folder."""
    folder = cache / export_name(tiny, recipe, chunks)
    if not (folder / "manifest.json").is_file():
        _log(f"preparing {folder.name} (first run: build + export, cached afterwards)")
        command = [sys.executable, str(REPO / "benchmarks" / "_models.py"), str(cache), "tiny" if tiny else "sd15",
                   recipe, str(chunks)]
        done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if done.returncode != 0 or not (folder / "manifest.json").is_file():
            tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise ZoodipError(f"exporting {folder.name} failed: {tail}")
    return folder


def run_child(spec: dict, timeout: float) -> dict:
    """One contender in a fresh process; returns its RESULT (or an error record)."""
    available = _meminfo().get("MemAvailable", 0)
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, str(CONTENDERS_PY), json.dumps(spec)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f}s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        tail = [line for line in done.stderr.strip().splitlines() if line.strip()][-3:]
        return {"error": f"exit {done.returncode}: " + " | ".join(tail)}
    result = json.loads(lines[-1][len("RESULT "):])
    result["wall_s"] = time.perf_counter() - started
    result["mem_available_before"] = available
    # The 1-minute load average around the run: other processes on a shared machine slow the steps
    # (never the peak RSS, which is per process).
    result["loadavg_1min"] = [load_before, os.getloadavg()[0]]
    return result


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
    if manifest is not None:
        parity = manifest.get("parity") or {}
        row["parity_unet_rel"] = (parity.get("unet") or {}).get("int8_vs_fp32_rel")
        row["parity_text_encoder_rel"] = (parity.get("text_encoder") or {}).get("int8_vs_fp32_rel")
        row["recipe"] = manifest.get("recipe")
    if spec["kind"] == "zoodip":
        row["breakdown"] = breakdown(row["phases"], ok[0]["weight_file_bytes"])
    return row


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


def markdown(report: dict) -> str:
    rows = report["rows"]
    ours = next((r for r in rows if r["name"] == "ours-int8" and "peak_rss" in r), None)
    lines = [f"Resolution {report['resolution']} px, {report['steps']} steps x {report['repeats']} repetitions per "
             f"contender, each in a fresh process; {report['machine']['cpu']}, {report['machine']['cores']} cores. "
             "Peak RSS = the kernel's high-water mark (VmHWM) of the whole process; step time excludes each run's "
             "first step. Last column: the 1-minute load average during each row's runs; above the core count, "
             "other jobs shared the machine and stretched the times.", "",
             "| contender | peak RSS GB (min / max) | x ours | step s (min / median / max) | s / forward | "
             "fidelity | UNet parity (rel) | load avg |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        if "peak_rss" not in row:
            lines.append(f"| {row['name']} | failed: {'; '.join(row['errors'])[:120]} | | | | | | |")
            continue
        peak = row["peak_rss"]
        ratio = f"{peak['max'] / ours['peak_rss']['max']:.2f}" if ours else "-"
        step = row["step_s"]
        fidelity = row.get("fidelity")
        fid = "-" if fidelity is None else f"{fidelity:.3f}"
        parity = row.get("parity_unet_rel")
        lines.append(
            f"| {row['name']} | {_gb(peak['min'])} / {_gb(peak['max'])} | {ratio} | "
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
        lines += ["", "Ratios and targets:", ""] + [f"- {k}: {v}" for k, v in report["ratios"].items()]
    if report.get("scaling"):
        lines += ["", "Scaling (peak RSS GB / median step s):", "", "| contender | " +
                  " | ".join(f"{r} px" for r in report["scaling"]["resolutions"]) + " |",
                  "|---|" + "---|" * len(report["scaling"]["resolutions"])]
        for name, cells in report["scaling"]["rows"].items():
            lines.append(f"| {name} | " + " | ".join(
                "-" if c is None else f"{c['peak_gb']:.2f} GB / {c['step_s']:.1f} s" for c in cells) + " |")
    lines += ["", f"Command: `{report['command']}`"]
    return "\n".join(lines) + "\n"


def ratios(rows: list[dict]) -> dict[str, str]:
    by = {r["name"]: r for r in rows if "peak_rss" in r}
    out: dict[str, str] = {}
    ours = by.get("ours-int8")
    if not ours:
        return out
    peak = ours["peak_rss"]["max"]
    out["ours peak RSS (max over repetitions)"] = (
        f"{peak / GB:.2f} GB (target <= {TARGET_PEAK_GB} GB: {'met' if peak / GB <= TARGET_PEAK_GB else 'NOT met'})")
    if "torch-backprop-ti" in by:
        ratio = by["torch-backprop-ti"]["peak_rss"]["min"] / peak
        out["torch backprop TI peak / ours peak"] = (
            f"{ratio:.2f}x (target >= {TARGET_RATIO}x: {'met' if ratio >= TARGET_RATIO else 'NOT met'})")
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
            f"{speed:.2f} against {fastest['name']} ({'met' if speed >= 1.0 else 'NOT met'})")
    if ours.get("fidelity") is not None:
        out["ours fidelity"] = f"{ours['fidelity']:.3f} (target >= 0.9: {'met' if ours['fidelity'] >= 0.9 else 'NOT met'})"
    return out


def bar_chart(rows: list[dict], path: Path, title: str) -> None:
    """Horizontal bars of peak RSS, drawn with Pillow (no plotting dependency)."""
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
    scale = bar_w / max(top_value, TARGET_PEAK_GB)
    for i, row in enumerate(rows):
        y = top + i * row_h
        value = row["peak_rss"]["max"] / GB
        color = (46, 139, 87) if row["name"] == "ours-int8" else ((120, 120, 200) if row["lever"] else (200, 90, 60))
        draw.text((8, y + 4), row["name"][:48], fill="black", font=font)
        draw.rectangle([label_w, y + 3, label_w + int(value * scale), y + row_h - 3], fill=color)
        draw.text((label_w + int(value * scale) + 6, y + 4), f"{value:.2f} GB", fill="black", font=font)
    x = label_w + int(TARGET_PEAK_GB * scale)
    draw.line([x, top - 4, x, top + row_h * len(rows)], fill=(220, 0, 0), width=1)
    draw.text((x + 3, top + row_h * len(rows) + 4), f"target {TARGET_PEAK_GB} GB", fill=(220, 0, 0), font=font)
    image.save(path, optimize=True)


# --- main ----------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--resolution", type=int, default=None, help="training resolution (default 512; --quick 256)")
    parser.add_argument("--steps", type=int, default=None, help="personalization steps per run (default 3; --quick 2)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="fresh-process runs per main contender (default 2; --quick 1); lever rows run once")
    parser.add_argument("--quick", action="store_true", help="256 px, 1 repetition, the main contenders + 2 levers")
    parser.add_argument("--tiny", action="store_true", help="the tiny built-in model (seconds; for tests)")
    parser.add_argument("--scaling", action="store_true", help="also ours and torch backprop TI at 256/384/512 px")
    parser.add_argument("--contenders", default=None,
                        help="comma-separated names (default: all; --quick: main + 2 levers); 'main' = the 5 main ones")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "memory"), help="output folder")
    parser.add_argument("--cache", default=str(DEFAULT_CACHE), help="model/export cache folder")
    parser.add_argument("--photos", type=int, default=3, help="photos in the personalization set (bundled ones)")
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0: all cores)")
    parser.add_argument("--no-fidelity", dest="fidelity", action="store_false", help="skip the fidelity measurement")
    parser.add_argument("--fidelity-resolution", type=int, default=256, help="resolution of the fidelity check")
    parser.add_argument("--directions", type=int, default=16, help="random directions of the fidelity check")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per contender process")
    parser.add_argument("--render", action="store_true", help="only re-render memory.md/png from --out's memory.json")
    return parser


def select(names_arg: str | None, quick: bool) -> list[str]:
    if names_arg is None:
        return MAIN + QUICK_LEVERS if quick else list(CONTENDERS)
    names = []
    for part in [p.strip() for p in names_arg.split(",") if p.strip()]:
        if part == "main":
            names += MAIN
        elif part == "levers":
            names += [n for n in CONTENDERS if n not in MAIN]
        elif part in CONTENDERS:
            names.append(part)
        else:
            raise ZoodipError(f"unknown contender {part!r}: use 'main', 'levers' or one of {', '.join(CONTENDERS)}")
    return list(dict.fromkeys(names))


def run(args: argparse.Namespace) -> dict:
    resolution = args.resolution or (128 if args.tiny else 256 if args.quick else 512)
    steps = args.steps or (2 if (args.quick or args.tiny) else 3)
    repeats = args.repeats or (1 if (args.quick or args.tiny) else 2)
    if resolution <= 0 or resolution % 8:
        raise ZoodipError(f"--resolution must be a positive multiple of 8, got {resolution}")
    if steps < 1 or repeats < 1 or args.photos < 1:
        raise ZoodipError("--steps, --repeats and --photos must be >= 1")
    names = select(args.contenders, args.quick)
    cache, out = Path(args.cache).absolute(), Path(args.out).absolute()
    cache.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    source = cache / ("tiny-random-s0" if args.tiny else "sd15-random-s0")
    work = Path(tempfile.mkdtemp(prefix="zoodip-memory-"))
    photos = work / "photos"
    photos.mkdir()
    available = sorted(PHOTOS.glob("*.png"))
    for i in range(args.photos):
        shutil.copy(available[i % len(available)], photos / f"photo_{i}.png")

    exports: dict[tuple[str, int], Path] = {}
    needed = {tuple(CONTENDERS[n][1].get("export", ("w8a32", DEFAULT_CHUNKS))) for n in names}
    needed.add(("w8a32", DEFAULT_CHUNKS))  # tokenizer/table for the torch contenders and fidelity
    for recipe, chunks in sorted(needed):
        exports[(recipe, chunks)] = prepare_export(cache, args.tiny, recipe, chunks)

    def spec_for(name: str, res: int, run_index: int) -> dict:
        spec = dict(CONTENDERS[name][1])
        export = exports[tuple(spec.pop("export", ("w8a32", DEFAULT_CHUNKS)))]
        spec.update({"export_dir": str(export), "source": str(source), "photos": str(photos), "resolution": res,
                     "steps": steps, "workdir": str(work / f"{len(os.listdir(work))}-{run_index}")})
        if args.threads and "threads" not in spec:
            spec["threads"] = args.threads
        if args.tiny and spec.get("memory_budget_mb"):
            spec["memory_budget_mb"] = 200
        return spec

    def measure(name: str, res: int) -> dict:
        description, base = CONTENDERS[name]
        runs = []
        # Lever rows and torch ZO: one repetition (they are not in the headline ratios).
        for index in range(1 if (base.get("lever") or base.get("once")) else repeats):
            _log(f"{name} @ {res}px, run {index + 1}/{repeats}")
            result = run_child(spec_for(name, res, index), args.timeout)
            if "error" in result:
                _log(f"  failed: {result['error']}")
            else:
                _log(f"  peak {result['peak_rss'] / GB:.2f} GB, steps {[round(t, 2) for t in result['step_times']]}")
            runs.append(result)
        manifest = None
        if "export" in base:
            manifest = json.loads((exports[tuple(base["export"])] / "manifest.json").read_text())
        return summarize(name, description, base, runs, manifest)

    started = time.perf_counter()
    command = "python benchmarks/memory.py " + " ".join(relative_args(sys.argv[1:]))
    report: dict = {"machine": machine(), "resolution": resolution, "steps": steps, "repeats": repeats,
                    "photos": args.photos, "command": command.strip(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    rows = [measure(name, resolution) for name in names]

    if args.fidelity:
        fid_res = min(args.fidelity_resolution, resolution) if args.tiny else args.fidelity_resolution
        exact_path = work / "exact.npy"
        base = {"source": str(source), "resolution": fid_res, "directions": args.directions,
                "export_dir": str(exports[("w8a32", DEFAULT_CHUNKS)]), "threads": args.threads}
        _log(f"fidelity: torch autograd reference at {fid_res}px, {args.directions} directions")
        exact = run_child({**base, "kind": "fd_exact", "output": str(exact_path)}, args.timeout)
        fidelity: dict = {"resolution": fid_res, "directions": args.directions, "exact": exact, "recipes": {}}
        if "error" not in exact:
            for key, folder in sorted(exports.items()):
                _log(f"fidelity: SDK finite differences through {folder.name}")
                fidelity["recipes"][folder.name] = run_child({**base, "kind": "fd_sdk", "export_dir": str(folder),
                                                             "exact": str(exact_path)}, args.timeout)
        else:
            _log(f"  failed: {exact['error']}")
        for row in rows:
            if "export" in CONTENDERS[row["name"]][1]:
                folder = exports[tuple(CONTENDERS[row["name"]][1]["export"])]
                row["fidelity"] = fidelity["recipes"].get(folder.name, {}).get("fidelity")
        report["fidelity"] = fidelity

    if args.scaling and not args.tiny:
        resolutions = [256, 384, 512]
        scaling_rows: dict[str, list] = {}
        for name in ("ours-int8", "torch-backprop-ti"):
            cells = []
            for res in resolutions:
                row = next((r for r in rows if r["name"] == name), None) if res == resolution else measure(name, res)
                ok = row is not None and "peak_rss" in row
                cells.append({"peak_gb": row["peak_rss"]["max"] / GB, "step_s": row["step_s"]["median"]} if ok else None)
            scaling_rows[name] = cells
        report["scaling"] = {"resolutions": resolutions, "rows": scaling_rows}

    report["rows"] = rows
    report["ratios"] = ratios(rows)
    report["elapsed_s"] = time.perf_counter() - started
    shutil.rmtree(work, ignore_errors=True)
    (out / "memory.json").write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    text = markdown(report)
    (out / "memory.md").write_text(text, encoding="utf-8")
    bar_chart(rows, out / "memory.png", f"Peak RSS at {resolution}px ({report['machine']['cores']} cores)")
    return report


def render(out: Path) -> dict:
    """Re-derive the breakdown and ratios from a memory.json and rewrite memory.md/png (no measuring)."""
    path = out / "memory.json"
    if not path.is_file():
        raise ZoodipError(f"{path} does not exist: run the benchmark first")
    report = json.loads(path.read_text(encoding="utf-8"))
    for row in report["rows"]:
        ok = [r for r in row["runs"] if "error" not in r]
        if row["kind"] == "zoodip" and ok and "phases" in row:
            row["breakdown"] = breakdown(row["phases"], ok[0]["weight_file_bytes"])
    report["ratios"] = ratios(report["rows"])
    path.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    (out / "memory.md").write_text(markdown(report), encoding="utf-8")
    bar_chart(report["rows"], out / "memory.png", f"Peak RSS at {report['resolution']}px ({report['machine']['cores']} cores)")
    return report


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        report = render(Path(args.out)) if args.render else run(args)
    except ZoodipError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())

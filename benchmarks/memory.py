"""Peak memory and speed of forward-only personalization at SD1.5 scale, against torch baselines.

    python benchmarks/memory.py --quick                 # 256 px, 1 repetition
    python benchmarks/memory.py                         # 512 px, 2 repetitions
    python benchmarks/memory.py --scaling               # + ours and torch backprop TI at 256/384/512
    python benchmarks/memory.py --tiny --out "$(mktemp -d)"  # the tiny model, seconds (used by the tests)

The SD1.5 architecture is built with seeded random weights from its configs in
export/sd15_configs.py (memory and speed do not depend on weight values) and exported through the
project's own pipeline (export/export_model.py); both are cached under --cache and reused. Every contender runs in its
own fresh process (benchmarks/_contenders.py) and reports the kernel's peak resident set
(VmHWM per phase, ru_maxrss for the whole process). Writes memory.json, memory.md and memory.png
into --out and prints the table. The contenders are listed in benchmarks/_memory_contenders.py, the
report (rows, ratios, Markdown, chart) is written by benchmarks/_memory_report.py.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file: make the repository importable

from reference.repo import REPO, relative_args, repo_relative  # noqa: E402

sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "sdk"))

from zoodip.console import interrupts_said_from_here  # noqa: E402

interrupts_said_from_here(__name__)  # (a Ctrl-C during the imports below, NumPy's among them: one line, not a traceback)

from _memory_contenders import CONTENDERS, DEFAULT_CHUNKS, GENERATION, MAIN, QUICK_LEVERS  # noqa: E402,F401 (memory.CONTENDERS stays)
from _memory_report import GB, bar_chart, breakdown, has_targets, markdown, peak_split, ratios, summarize  # noqa: E402
from _models import DEFAULT_CACHE, export_name, is_current_export  # noqa: E402
from _results_files import write_file  # noqa: E402
from _results_guard import check_results_folder  # noqa: E402
from _scratch import scratch_folder  # noqa: E402

from zoodip import validation  # noqa: E402
from zoodip.console import OneLineParser, print_error, script_main  # noqa: E402
from zoodip.errors import ZoodipError  # noqa: E402
from zoodip.image_side import check_side  # noqa: E402
from zoodip.manifest import MANIFEST  # noqa: E402
from zoodip.paths import check_output_dir  # noqa: E402

CONTENDERS_PY = REPO / "benchmarks" / "_contenders.py"
PHOTOS = REPO / "sdk" / "zoodip" / "data" / "example_concept"
DEFAULT_OUT = REPO / "benchmarks" / "results" / "memory"
# The counts' ceilings, each (most, what it stands for in the refusal): a slip such as --resolution 100000 started
# exports and contenders that could only fail, minutes later, for memory; a run past these measures nothing more.
MAX_PHOTOS = (100, "a personalization set is a few photos")
MAX_RESOLUTION = (1024, "twice SD1.5's own 512-pixel side; every contender's activations grow with its square")
MAX_STEPS = (100, "the peak memory is reached within the first steps; more only lengthen every contender's run")
MAX_REPEATS = (20, "fresh-process runs of each contender, for the spread of its peak")
MAX_DIRECTIONS = (1024, "each is a UNet forward and an autograd product of the fidelity check")
# The budget rows' budget on the tiny model: its weights are a few MB, so SD1.5's 1300 MB would hold everything;
# this one still makes them plan (tiles, one graph at a time) and holds only-masked inpainting's whole photo.
TINY_BUDGET_MB = 400
MAX_TIMEOUT_S = 7 * 24 * 3600.0  # a week: past it a typed number is a slip


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
    if not is_current_export(folder, recipe):  # none yet, or one of an older revision of the recipe
        _log(f"preparing {folder.name} (first run: build + export, cached afterwards)")
        command = [sys.executable, str(REPO / "benchmarks" / "_models.py"), str(cache), "tiny" if tiny else "sd15",
                   recipe, str(chunks)]
        done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if done.returncode != 0 or not (folder / MANIFEST).is_file():
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


def _parser() -> OneLineParser:
    parser = OneLineParser(prog="python benchmarks/memory.py", description=__doc__.split("\n")[0])
    parser.add_argument("--resolution", type=int, default=None, help="training resolution (default 512; --quick 256)")
    parser.add_argument("--steps", type=int, default=None, help="personalization steps per run (default 3; --quick 2)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="fresh-process runs per main contender (default 2; --quick 1); lever rows run once")
    parser.add_argument("--quick", action="store_true", help="256 px, 1 repetition, the main contenders + 2 levers")
    parser.add_argument("--tiny", action="store_true", help="the tiny built-in model (seconds; for tests)")
    parser.add_argument("--scaling", action="store_true", help="also ours and torch backprop TI at 256/384/512 px")
    parser.add_argument("--contenders", default=None,
                        help="comma-separated names (default: all; --quick: main + 2 levers); 'main' = the 5 main ones, "
                             "'generation' = generating one image with and without --memory-budget")
    parser.add_argument("--out", default=None,
                        help=f"output folder (default: {repo_relative(DEFAULT_OUT)}, the committed results; --tiny needs one)")
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
        elif part == "generation":
            names += GENERATION
        elif part == "levers":
            names += [n for n in CONTENDERS if n not in MAIN + GENERATION]
        elif part in CONTENDERS:
            names.append(part)
        else:
            raise ZoodipError(f"unknown contender {part!r}: use 'main', 'generation', 'levers' or one of "
                              f"{', '.join(CONTENDERS)}")
    if not names:
        raise ZoodipError(f"--contenders {names_arg!r} names no contender: use 'main', 'generation', 'levers' or names")
    return list(dict.fromkeys(names))


def _out_folder(args: argparse.Namespace) -> str | Path:
    """--out as given, else the committed results (not for --tiny, whose numbers are no SD1.5 architecture's)."""
    if args.out is None and args.tiny:
        raise ZoodipError("--tiny measures the tiny model: give it an --out folder (the default is the committed "
                          f"{repo_relative(DEFAULT_OUT)})")
    return DEFAULT_OUT if args.out is None else args.out


def _contender(name: str, tiny: bool) -> tuple[str, dict]:
    """A contender's description and settings; on the tiny model a budget row runs (and says it runs) under
    TINY_BUDGET_MB."""
    description, base = CONTENDERS[name]
    if tiny and base.get("memory_budget_mb"):
        return f"{description} (--tiny: run under {TINY_BUDGET_MB} MB)", dict(base, memory_budget_mb=TINY_BUDGET_MB)
    return description, base


def run(args: argparse.Namespace) -> dict:
    resolution, steps, repeats = _sizes(args)
    names = select(args.contenders, args.quick)
    cache = check_output_dir(args.cache, "--cache").absolute()
    out = check_output_dir(_out_folder(args), "--out").absolute()
    cache.mkdir(parents=True, exist_ok=True)
    source = cache / ("tiny-random-s0" if args.tiny else "sd15-random-s0")
    work = Path((scratch := scratch_folder("zoodip-memory-")).name)
    photos = _copy_photos(work / "photos", args.photos)

    exports = _prepare_exports(cache, args.tiny, names)

    def spec_for(name: str, res: int, run_index: int) -> dict:
        spec = dict(_contender(name, args.tiny)[1])
        export = exports[tuple(spec.pop("export", ("w8a32", DEFAULT_CHUNKS)))]
        spec.update({"export_dir": str(export), "source": str(source), "photos": str(photos), "resolution": res,
                     "steps": steps, "workdir": str(work / f"{len(os.listdir(work))}-{run_index}")})
        if args.threads and "threads" not in spec:
            spec["threads"] = args.threads
        return spec

    def measure(name: str, res: int) -> dict:
        description, base = _contender(name, args.tiny)
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
            manifest = json.loads((exports[tuple(base["export"])] / MANIFEST).read_text())
        return summarize(name, description, base, runs, manifest)

    started = time.perf_counter()
    command = "python benchmarks/memory.py " + " ".join(relative_args(sys.argv[1:]))
    report: dict = {"machine": machine(), "resolution": resolution, "steps": steps, "repeats": repeats,
                    "photos": args.photos, "command": command.strip(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                    "tiny": args.tiny}
    rows = measure_each_spec_once(names, resolution, measure)

    if args.fidelity:
        report["fidelity"] = _fidelity(args, source, exports, work, resolution, rows)
    if args.scaling and not args.tiny:
        report["scaling"] = _scaling(rows, resolution, measure)
    report["rows"] = rows
    report["ratios"] = ratios(rows, has_targets(report))
    report["elapsed_s"] = time.perf_counter() - started
    scratch.cleanup()
    out.mkdir(parents=True, exist_ok=True)  # (only now: a failed or interrupted run leaves no empty --out behind)
    write_file(out / "memory.json", json.dumps(report, indent=2, default=str) + "\n")
    write_file(out / "memory.md", markdown(report))
    bar_chart(rows, out / "memory.png", f"Peak RSS at {resolution}px ({report['machine']['cores']} cores)",
              has_targets(report))
    return report


def measure_each_spec_once(names: list[str], resolution: int, measure) -> list[dict]:
    """One row per name; a contender whose spec is an earlier one's (ours-int8 and ours-w4a32 while W4A32 is
    the default) gets a copy of that row, marked ``same_as``, instead of a second measurement."""
    rows: list[dict] = []
    measured: dict[str, dict] = {}
    for name in names:
        key = json.dumps(CONTENDERS[name][1], sort_keys=True)
        if key in measured:
            first = measured[key]
            _log(f"{name}: the same run as {first['name']}, measured once")
            rows.append({**first, "name": name, "description": CONTENDERS[name][0], "same_as": first["name"]})
        else:
            rows.append(measured.setdefault(key, measure(name, resolution)))
    return rows


def _sizes(args: argparse.Namespace) -> tuple[int, int, int]:
    """Resolution, steps and repetitions: the flags', or the defaults of --tiny, --quick and the full run; and the
    other numbers' checks, before any work."""
    short = args.quick or args.tiny
    resolution = (128 if args.tiny else 256 if args.quick else 512) if args.resolution is None else args.resolution
    steps = (2 if short else 3) if args.steps is None else args.steps
    repeats = (1 if short else 2) if args.repeats is None else args.repeats
    check_side("--resolution", resolution)
    check_side("--fidelity-resolution", args.fidelity_resolution)
    counts = (("--resolution", resolution, 1, MAX_RESOLUTION),
              ("--fidelity-resolution", args.fidelity_resolution, 1, MAX_RESOLUTION),
              ("--steps", steps, 1, MAX_STEPS), ("--repeats", repeats, 1, MAX_REPEATS),
              ("--photos", args.photos, 1, MAX_PHOTOS), ("--threads", args.threads, 0, (None, "")),
              ("--directions", args.directions, 1, MAX_DIRECTIONS))
    for flag, value, least, (most, why) in counts:
        validation.positive_int(flag, value, least, most, why)  # (all before any export or contender)
    validation.finite_float("--timeout (seconds per contender)", args.timeout, low=0, high=MAX_TIMEOUT_S)
    return resolution, steps, repeats


def _prepare_exports(cache: Path, tiny: bool, names: list[str]) -> dict[tuple[str, int], Path]:
    """The exports the contenders run on, by (recipe, chunks), plus the default one (tokenizer/table for the
    torch contenders and fidelity)."""
    needed = {tuple(CONTENDERS[n][1].get("export", ("w8a32", DEFAULT_CHUNKS))) for n in names}
    needed.add(("w8a32", DEFAULT_CHUNKS))
    return {(recipe, chunks): prepare_export(cache, tiny, recipe, chunks) for recipe, chunks in sorted(needed)}


def _copy_photos(folder: Path, count: int) -> Path:
    """``count`` training photos in ``folder``, cycling through the bundled example photos."""
    folder.mkdir()
    available = sorted(PHOTOS.glob("*.png"))
    for i in range(count):
        shutil.copy(available[i % len(available)], folder / f"photo_{i}.png")
    return folder


def _fidelity(args: argparse.Namespace, source: Path, exports: dict, work: Path, resolution: int, rows: list[dict]) -> dict:
    """Finite differences through each export against torch autograd's directional derivatives; the
    correlation is also written into the rows of the contenders on those exports."""
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
    return fidelity


def _scaling(rows: list[dict], resolution: int, measure) -> dict:
    """Ours and torch backprop TI at 256/384/512 px (the run's own resolution reuses its row)."""
    resolutions = [256, 384, 512]
    scaling_rows: dict[str, list] = {}
    for name in ("ours-int8", "torch-backprop-ti"):
        cells = []
        for res in resolutions:
            row = next((r for r in rows if r["name"] == name), None) if res == resolution else measure(name, res)
            ok = row is not None and "peak_rss" in row
            cells.append({"peak_gb": row["peak_rss"]["max"] / GB, "step_s": row["step_s"]["median"]} if ok else None)
        scaling_rows[name] = cells
    return {"resolutions": resolutions, "rows": scaling_rows}


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
        if ok and "phases" in row:
            row["peak_split"] = peak_split(row["phases"])
    report["ratios"] = ratios(report["rows"], has_targets(report))
    write_file(path, json.dumps(report, indent=2, default=str) + "\n")
    write_file(out / "memory.md", markdown(report))
    bar_chart(report["rows"], out / "memory.png", f"Peak RSS at {report['resolution']}px ({report['machine']['cores']} cores)",
              has_targets(report))
    return report


def _guard_settings(args: argparse.Namespace) -> dict:
    """A run's settings as the results guard compares them: the sizes with their defaults filled in
    (``--resolution 512`` is a full run's default) and the contenders as the set they name (each runs in its own
    process: their order only orders the table)."""
    resolution, steps, repeats = _sizes(args)
    return vars(args) | {"resolution": resolution, "steps": steps, "repeats": repeats,
                         "contenders": sorted(select(args.contenders, args.quick))}


@script_main("--out was not written (the exports finished so far stay in --cache for the next run)")
def main(argv: list[str] | None = None) -> int:
    try:
        args = (parser := _parser()).parse_args(argv)
        if not args.render:  # (--render redraws the stored run: any settings)
            check_output_dir(args.cache, "--cache")  # (the folder flags first, as everywhere)
            _guard_settings(args)  # (a bad number or contender: its own line, before the guard's)
            check_results_folder(Path(_out_folder(args)), parser, argv, "memory.py", _guard_settings,
                                 record="memory")
        report = render(Path(_out_folder(args))) if args.render else run(args)
    except ZoodipError as exc:
        return print_error(exc)
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())

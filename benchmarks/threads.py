"""Thread settings on a quiet and on a busy CPU: seconds per UNet forward for each onnxruntime setting.

A phone's CPU is shared (the app's UI, other apps, the OS), so the SDK's thread defaults must be good
when other processes compete for the cores, not only on an idle benchmark machine. For each setting
(intra-op threads, spin-waiting on/off) this runs one fresh process that loads the export and times
UNet forwards of one training evaluation (batch 1, the model's conditioning shape), once on the quiet
machine and once while ``--busy`` other processes each keep one core busy (plain Python loops at the
same priority: the "other apps").

    python benchmarks/threads.py                      # SD1.5 architecture (random weights), 256 px
    python benchmarks/threads.py --model EXPORT --resolution 512 --forwards 5

Writes threads.json and threads.md into --out. "Quiet" means only that this script starts no load:
the load average before each measurement is recorded beside it, so a run on a shared machine shows it.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
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

from _models import checked_export  # noqa: E402
from _results_files import write_file  # noqa: E402
from _results_guard import check_results_folder  # noqa: E402
from zoodip.console import OneLineParser, print_error, script_main  # noqa: E402
from zoodip.errors import ZoodipError  # noqa: E402
from zoodip.image_side import side_problem  # noqa: E402
from zoodip.paths import check_output_dir  # noqa: E402
from zoodip import validation  # noqa: E402

# name -> (intra-op threads, spin-waiting); 0 threads = onnxruntime's default (one per core).
DEFAULT_OUT = REPO / "benchmarks" / "results" / "threads"  # the committed results
SETTINGS: dict[str, tuple[int, bool]] = {
    "all cores, spinning (onnxruntime's default)": (0, True),
    "all cores, no spinning": (0, False),
    "1 thread": (1, False),
}
# Burner processes at most: each is a process busy-looping on one core, so a mistyped --busy 100000 would start
# a hundred thousand of them (a phone's "other apps" are a few per core).
MAX_BUSY = 64
# Caps on the counts the work grows with: past them a typed number is a slip that can only fail late (memory, hours).
MAX_RESOLUTION = (2048, "four times SD1.5's own 512-pixel side; the UNet's activations grow with its square")
MAX_FORWARDS = (1000, "timed UNet forwards per thread setting, each case and process")
BURNER = "import signal, sys; signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\nwhile True: pass"


def time_forwards(model_dir: str, threads: int, spin: bool, resolution: int, forwards: int) -> list[float]:
    """In this process: load the export with these settings, one warm-up forward, then ``forwards`` timed ones."""
    import numpy as np

    from zoodip.model import ExportedModel, RuntimeOptions

    model = ExportedModel.load(Path(model_dir), RuntimeOptions(threads=threads, spin_wait=spin))
    side = resolution // model.vae_scale_factor
    rng = np.random.default_rng(0)
    latents = rng.standard_normal((1, model.latent_channels, side, side)).astype(np.float32)
    cond = model.encode_text(model.tokenizer("a photo of a dog"))
    times = []
    for k in range(forwards + 1):
        started = time.perf_counter()
        model.unet(latents, np.array([700.0], np.float32), cond)
        if k:  # the first call allocates the arena and plans the graph
            times.append(time.perf_counter() - started)
    return times


def measure(model_dir: Path, threads: int, spin: bool, resolution: int, forwards: int, busy: int) -> dict:
    """One setting in a fresh process, with ``busy`` burner processes running alongside."""
    burners = [subprocess.Popen([sys.executable, "-c", BURNER]) for _ in range(busy)]
    try:
        time.sleep(1.0 if busy else 0.0)  # let the burners reach their loops
        load = os.getloadavg()[0]
        spec = json.dumps({"model": str(model_dir), "threads": threads, "spin": spin, "resolution": resolution,
                           "forwards": forwards})
        done = subprocess.run([sys.executable, __file__, "--child", spec], capture_output=True, text=True,
                              env=dict(os.environ, PYTHONPATH=str(REPO)))
    finally:
        for burner in burners:
            burner.terminate()
        for burner in burners:
            burner.wait()
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or [f"killed by signal {-done.returncode} (out of memory?)"
                                                      if done.returncode < 0 else "(no output)"])[-1]
        raise ZoodipError(f"the measurement with threads={threads}, spin={spin} failed: {tail}")
    times = json.loads(lines[-1][len("RESULT "):])
    return {"s_per_forward": statistics.median(times), "times": times, "load_before": load}


def rounded(value: float, uncertainty: float) -> str:
    """``value`` to the decimal place of the first significant digit of ``uncertainty`` (three significant digits when
    it is 0, at least two always): a fixed two decimals showed 0.00 for a fast model and false digits for a noisy one."""
    if value <= 0:
        return f"{value:.3g}"
    lead = math.floor(math.log10(value))  # the place of the value's first significant digit
    place = lead - 2 if uncertainty <= 0 else min(lead - 1, math.floor(math.log10(uncertainty)))
    return f"{value:.{max(0, -place)}f}"


def _spread(case: dict) -> float:
    """Half the range of a case's timed forwards: how far apart repeated forwards of one setting land."""
    return (max(case["times"]) - min(case["times"])) / 2


def markdown(results: dict) -> str:
    meta = results["meta"]
    lines = [
        "# Thread settings: seconds per UNet forward, quiet and busy CPU",
        "",
        f"`{meta['command']}`  ",
        f"{meta['date']}, {meta['cpu']} ({meta['cores']} cores), model `{meta['model']}`, {meta['resolution']} px, "
        f"median of {meta['forwards']} forwards after one warm-up; busy = {meta['busy']} other processes each "
        "keeping one core busy, at the same priority; each number is rounded to the first digit of its forwards' "
        "half-range (the ratio: of the two half-ranges' relative sum)",
        "",
        "| setting | quiet: s / forward | busy: s / forward | busy / quiet |",
        "|---|---|---|---|",
    ]
    for name, row in results["settings"].items():
        quiet, busy = row["quiet"]["s_per_forward"], row["busy"]["s_per_forward"]
        dq, db = _spread(row["quiet"]), _spread(row["busy"])
        ratio = busy / quiet
        lines.append(f"| {name} | {rounded(quiet, dq)} | {rounded(busy, db)} | "
                     f"{rounded(ratio, ratio * (dq / quiet + db / busy))} |")
    return "\n".join(lines) + "\n"


def default_model() -> Path:
    from _memory_contenders import DEFAULT_CHUNKS
    from _models import DEFAULT_CACHE
    from memory import prepare_export

    return prepare_export(DEFAULT_CACHE, tiny=False, recipe="w8a32", chunks=DEFAULT_CHUNKS)


@script_main("--out was not written")
def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="python benchmarks/threads.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="export folder (default: the SD1.5 architecture with random weights, "
                                        "built and exported on first use as memory.py does)")
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--forwards", type=int, default=3, help="timed forwards per setting (after one warm-up)")
    parser.add_argument("--busy", type=int, default=os.cpu_count() or 1, help="burner processes for the busy case")
    parser.add_argument("--out", default=None,
                        help=f"results folder (default: {repo_relative(DEFAULT_OUT)}, the committed results)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = parser.parse_args(argv)
    except ZoodipError as exc:
        return print_error(exc)
    if args.child:
        spec = json.loads(args.child)
        print("RESULT " + json.dumps(time_forwards(spec["model"], spec["threads"], spec["spin"], spec["resolution"],
                                                   spec["forwards"])))
        return 0
    try:  # (before any export or burner process)
        validation.positive_int("--forwards", args.forwards, 1, *MAX_FORWARDS)
        validation.positive_int("--resolution", args.resolution, 1, *MAX_RESOLUTION)
    except ZoodipError as exc:
        return print_error(exc)
    if not 1 <= args.busy <= MAX_BUSY:
        return print_error(ZoodipError(f"--busy must be from 1 to {MAX_BUSY} (burner processes), got {args.busy}"))
    resolution_problem = side_problem(args.resolution)
    if resolution_problem:
        return print_error(ZoodipError(f"--resolution {resolution_problem}"))
    try:
        out = check_output_dir(DEFAULT_OUT if args.out is None else args.out, "--out")
        check_results_folder(out, parser, argv, "threads.py", record="threads")
        model = checked_export(args.model, "--model") if args.model else default_model()
        settings = {}
        for name, (threads, spin) in SETTINGS.items():
            settings[name] = {"threads": threads, "spin_wait": spin}
            for case, busy in (("quiet", 0), ("busy", args.busy)):
                settings[name][case] = measure(model, threads, spin, args.resolution, args.forwards, busy)
                print(f"[threads] {name}, {case}: {settings[name][case]['s_per_forward']:.2f} s / forward",
                      file=sys.stderr, flush=True)
    except ZoodipError as exc:
        return print_error(exc)
    from memory import machine

    meta = {"command": "python benchmarks/threads.py " + " ".join(relative_args(argv)),
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **machine(), "model": relative_args([str(model)])[0],
            "resolution": args.resolution, "forwards": args.forwards, "busy": args.busy}
    results = {"meta": meta, "settings": settings}
    write_file(out / "threads.json", json.dumps(results, indent=2))
    write_file(out / "threads.md", markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Peak memory of the UNet phase under a memory budget, against ``memory_plan.unet_bytes``.

    python benchmarks/unet_memory.py --resolution 912              # memory.py's cached SD1.5 export, 2 passes
    python benchmarks/unet_memory.py --export DIR --resolution 640 --passes 1

    python benchmarks/unet_memory.py --resolution 912 --generate 1641  # one whole `zoodip generate`, 1 step, under it

One process, one size (run it once per size: each gets a fresh process). The model is loaded as
``generate --memory-budget`` loads it (the budget's low-memory sessions and C-heap settings), then the
UNet runs as ``generate`` runs it under a budget: one image and one guidance branch a pass (seeded normal
latents and text states; one step of classifier-free guidance is 2 passes). Prints one JSON line: the
kernel's peak resident set (VmHWM) and the RSS before the UNet's session was made, in MiB, their
difference (what ``unet_bytes`` estimates: the UNet's weights and activations), and the estimate.
With ``--generate MB`` it runs the command line's ``generate`` in this process instead (1 step, that budget) and
prints the whole process's peak before the UNet is closed (text encoder and UNet phases) and after (the decode).
With ``--personalize MB`` it runs ``personalize`` on the example photos at ``--resolution`` (``--steps`` steps of n=1,
no evaluation, that budget; its run folder goes to ``--out``) and prints the whole process's peak, and the peak of
the photos' encoding before the steps.

    python benchmarks/unet_memory.py --resolution 512 --personalize 1171 --out RUN_DIR
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file: make the repository importable
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sdk"))

from zoodip.console import OneLineParser, interrupts_said_from_here, print_error, script_main  # noqa: E402

interrupts_said_from_here(__name__)  # (a Ctrl-C during the imports below, NumPy's among them: one line, not a traceback)

import numpy as np  # noqa: E402

from benchmarks._quality_report import run_context  # noqa: E402
from reference.repo import REPO, relative_args  # noqa: E402
from zoodip.errors import ZoodipError  # noqa: E402
from zoodip.memory_plan import check_encode, training_bytes, unet_bytes  # noqa: E402
from zoodip.model import ExportedModel, RuntimeOptions  # noqa: E402
from zoodip.validation import positive_int  # noqa: E402

DEFAULT_EXPORT = REPO / ".cache" / "bench" / "sd15-s0-w8a32-q32"  # benchmarks/memory.py builds it
MIB = 1 << 20
# Past them a typed number is a slip: the UNet's attention grows with the side's fourth power, its time with more.
MAX_RESOLUTION = (2048, "four times SD1.5's own 512-pixel side")
MAX_PASSES = (8, "the arena keeps its peak after the first passes; more only lengthen the run")
MAX_THREADS = (256, "onnxruntime's intra-op threads; 0 is all cores")
MAX_BUDGET_MB = (1 << 20, "a terabyte: past it a typed budget is a slip")


def _status() -> dict[str, int]:
    with open("/proc/self/status", encoding="ascii") as handle:
        return {key: int(rest.split()[0]) * 1024 for key, _, rest in (line.partition(":") for line in handle)
                if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile")}


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
        handle.write("5")  # VmHWM := VmRSS (Linux >= 4.0)


def measure(model: ExportedModel, side: int, passes: int, threads: int) -> dict:
    """The UNet's passes at ``side`` latents a side, from a closed session; MiB above the RSS before."""
    rng = np.random.default_rng(0)
    sample = rng.standard_normal((1, model.latent_channels, side, side)).astype(np.float32)
    text = rng.standard_normal((1, model.max_length, model.cross_attention_dim)).astype(np.float32)
    model.release("unet")
    before = _status()
    _reset_peak()
    peaks, started = [], time.perf_counter()
    for _ in range(passes):
        model.unet(sample, np.array([500.0], np.float32), text)
        peaks.append(round((_status()["VmHWM"] - before["VmRSS"]) / MIB, 1))
    after = _status()
    estimate = unet_bytes(model, side, side)
    return {"resolution": side * model.vae_scale_factor, "latents": side, "passes": passes, "threads": threads,
            "rss_before_mib": round(before["VmRSS"] / MIB, 1), "peak_mib": round(after["VmHWM"] / MIB, 1),
            "peak_above_before_mib": peaks[-1], "peak_above_before_by_pass_mib": peaks,
            "end_file_mib": round(after["RssFile"] / MIB, 1), "end_anon_mib": round(after["RssAnon"] / MIB, 1),
            "unet_bytes_mib": round(estimate / MIB, 1), "estimate_over_peak": round(estimate / MIB / peaks[-1], 3),
            "seconds": round(time.perf_counter() - started, 1)}


def _peak_until_released(graph: str, key: str) -> dict[str, float]:
    """The peaks a whole command's phases reach: ``ExportedModel.release`` patched (this process only) so that when
    ``graph`` is first closed, the process's peak so far goes under ``key`` and a fresh peak starts."""
    peaks: dict[str, float] = {}
    release = ExportedModel.release

    def noting_release(model: ExportedModel, name: str) -> None:
        release(model, name)
        if name == graph and key not in peaks:
            peaks[key] = round(_status()["VmHWM"] / MIB, 1)
            _reset_peak()

    ExportedModel.release = noting_release
    return peaks


def whole_generate(export: Path, resolution: int, budget_mb: int, threads: int, out: Path) -> dict:
    """One ``zoodip generate`` under ``budget_mb``, in this process: its peaks before and after the UNet is closed."""
    from zoodip.cli import main as zoodip_main

    peaks = _peak_until_released("unet", "until_unet_closed_mib")  # (the UNet's phase, then a fresh peak)
    before, started = _status(), time.perf_counter()
    code = zoodip_main(["generate", "--model", str(export), "--prompt", "a photo of a dog", "--steps", "1",
                        "--height", str(resolution), "--width", str(resolution), "--threads", str(threads),
                        "--memory-budget", str(budget_mb), "--out", str(out)])
    return {"resolution": resolution, "memory_budget_mb": budget_mb, "exit_code": code, "threads": threads,
            "rss_at_start_mib": round(before["VmRSS"] / MIB, 1), **peaks,
            "decode_mib": round(_status()["VmHWM"] / MIB, 1),
            "whole_process_peak_mib": round(max(_status()["VmHWM"] / MIB, peaks.get("until_unet_closed_mib", 0)), 1),
            "seconds": round(time.perf_counter() - started, 1)}


def whole_personalize(export: Path, resolution: int, budget_mb: int, steps: int, threads: int, out: Path) -> dict:
    """One ``zoodip personalize`` under ``budget_mb``, in this process: its peak through the photos' encoding (until the
    VAE encoder is closed), then a fresh one through the steps, the whole process's (their larger one) and the
    estimates of both phases."""
    from zoodip.cli import main as zoodip_main

    peaks = _peak_until_released("vae_encoder", "until_encoder_closed_mib")
    before, started = _status(), time.perf_counter()
    code = zoodip_main(["personalize", "--model", str(export), "--train_data_dir", str(REPO / "sdk" / "zoodip" / "data"
                        / "example_concept"), "--output_dir", str(out), "--placeholder_token", "<concept>",
                        "--initializer_token", "dog", "--resolution", str(resolution), "--max_train_steps", str(steps),
                        "--n", "1", "--eval-every", "0", "--threads", str(threads), "--memory-budget", str(budget_mb),
                        "--no-progress"])
    after = round(_status()["VmHWM"] / MIB, 1)
    model = ExportedModel.load(export)  # (for the estimates: its manifest; no graph is opened)
    side = resolution // model.vae_scale_factor
    return {"resolution": resolution, "memory_budget_mb": budget_mb, "exit_code": code, "steps": steps, "n": 1,
            "threads": threads, "rss_at_start_mib": round(before["VmRSS"] / MIB, 1), **peaks,
            ("steps_mib" if peaks else "whole_run_mib"): after,
            "whole_process_peak_mib": max(after, peaks.get("until_encoder_closed_mib", 0)),
            "training_bytes_mib": round(training_bytes(model, side, side, 2) / MIB, 1),
            "check_encode_mib": round(check_encode(model, side, side, None) / MIB, 1),
            "seconds": round(time.perf_counter() - started, 1)}


@script_main("nothing was written")
def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="python benchmarks/unet_memory.py", description=__doc__.splitlines()[0])
    parser.add_argument("--export", type=Path, default=DEFAULT_EXPORT, help="export folder (default: memory.py's SD1.5 one)")
    parser.add_argument("--resolution", type=int, default=512, help="image side in pixels")
    parser.add_argument("--passes", type=int, default=2, help="UNet passes (2: one step with guidance)")
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime's intra-op threads")
    parser.add_argument("--generate", type=int, default=None, metavar="MB",
                        help="one whole generate (1 step) under this --memory-budget instead; its image goes to --out")
    parser.add_argument("--personalize", type=int, default=None, metavar="MB",
                        help="one whole personalize (--steps steps) under this --memory-budget instead; its run to --out")
    parser.add_argument("--steps", type=int, default=2, help="--personalize's training steps")
    parser.add_argument("--out", type=Path, default=None, help="--generate's image (a new .png path), --personalize's "
                        "run folder (a new one)")
    try:
        args = parser.parse_args(argv)
        positive_int("--resolution", args.resolution, 1, *MAX_RESOLUTION)  # (before the export is loaded)
        positive_int("--passes", args.passes, 1, *MAX_PASSES)
        positive_int("--threads", args.threads, 0, *MAX_THREADS)
        if args.generate is not None:
            positive_int("--generate", args.generate, 1, *MAX_BUDGET_MB)
            if args.out is None or args.out.exists():
                parser.error("--generate needs --out PATH.png, a path that does not exist yet")
        if args.personalize is not None:
            positive_int("--personalize", args.personalize, 1, *MAX_BUDGET_MB)
            positive_int("--steps", args.steps, 1, *MAX_PASSES)
            if args.generate is not None or args.out is None or args.out.exists():
                parser.error("--personalize needs --out DIR, a folder that does not exist yet (and no --generate)")
        if args.export == DEFAULT_EXPORT and not DEFAULT_EXPORT.is_dir():
            parser.error(f"{relative_args([str(DEFAULT_EXPORT)])[0]} is not built yet: run benchmarks/memory.py once "
                         "(it exports the SD1.5 architecture there), or pass --export DIR")
        # The budget's sessions and heap settings; a budget large enough that no check refuses the size.
        model = ExportedModel.load(args.export, RuntimeOptions(threads=args.threads, memory_budget_mb=1 << 20))
        side, rest = divmod(args.resolution, model.vae_scale_factor)
        if side < 1 or rest:
            parser.error(f"--resolution {args.resolution}: must be a multiple of the VAE's factor {model.vae_scale_factor}")
    except ZoodipError as exc:
        return print_error(exc)
    if args.personalize is not None:
        del model  # (the run loads its own)
        record = whole_personalize(args.export, args.resolution, args.personalize, args.steps, args.threads, args.out)
    elif args.generate is not None:
        del model  # (the generate loads its own)
        record = whole_generate(args.export, args.resolution, args.generate, args.threads, args.out)
    else:
        record = measure(model, side, args.passes, args.threads)
    record["context"] = run_context(f"python benchmarks/unet_memory.py {' '.join(relative_args(sys.argv[1:] if argv is None else argv))}")
    print(json.dumps(record), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

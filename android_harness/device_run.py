#!/usr/bin/env python3
"""Runs ``zoodip personalize`` on the device and records what the host wants back (SDK only, no torch).

    PYTHONPATH=sdk python device_run.py --summary OUT/run.json -- personalize --model ... --output_dir OUT ...

Calls the real CLI entry point (``zoodip.cli.main``) in this process, streams progress as JSON
lines (adds ``--progress-jsonl OUT/progress.jsonl`` unless given), and writes ``run.json``:
exit code, the process's peak resident memory (VmHWM from /proc/self/status), wall time and the
per-step times taken from the progress stream. ``run.json`` is also rewritten every few seconds
while the run goes, so a run the OS kills (SIGKILL, low-memory killer) still leaves the peak
memory seen so far and ``"finished": false``. run_on_device.sh pushes and runs this file.
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path


def proc_status_kb(field: str) -> int | None:
    """A ``kB`` field of /proc/self/status (VmHWM, VmRSS, ...), or None where there is no /proc."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def step_times(progress: Path) -> list[float]:
    """Seconds of each training step without an evaluation in it, from the progress JSON lines."""
    times, last = [], 0.0  # elapsed_s counts from the start of the training loop
    try:
        lines = progress.read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") not in ("step", "eval"):
            continue
        if event["event"] == "step" and event["elapsed_s"] >= last:
            times.append(round(event["elapsed_s"] - last, 4))
        last = event["elapsed_s"]
    return times


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv or argv.index("--") != 2 or argv[0] != "--summary":
        print("usage: device_run.py --summary RUN_JSON -- personalize ...", file=sys.stderr)
        return 2
    summary = Path(argv[1])
    cli_args = argv[3:]
    summary.parent.mkdir(parents=True, exist_ok=True)
    progress = summary.with_name("progress.jsonl")
    if "--progress-jsonl" not in cli_args:
        cli_args += ["--progress-jsonl", str(progress)]
    else:
        progress = Path(cli_args[cli_args.index("--progress-jsonl") + 1])

    started = time.monotonic()
    state: dict = {"finished": False, "exit_code": None, "argv": cli_args, "pid": os.getpid()}
    done = threading.Event()

    def snapshot() -> dict:
        hwm, rss = proc_status_kb("VmHWM"), proc_status_kb("VmRSS")
        times = step_times(progress)
        return {**state, "wall_s": round(time.monotonic() - started, 3),
                "peak_rss_mb": None if hwm is None else round(hwm / 1024, 1),
                "rss_mb": None if rss is None else round(rss / 1024, 1),
                "steps_timed": len(times), "step_s_median": statistics.median(times) if times else None,
                "step_s": times}

    def sampler() -> None:
        while not done.wait(5.0):
            try:
                _write_json(summary, snapshot())
            except OSError:
                pass

    threading.Thread(target=sampler, name="zoodip-device-run-sampler", daemon=True).start()
    from zoodip.cli import main as cli_main

    code = 1
    try:
        code = cli_main(cli_args)
    finally:
        done.set()
        state.update(finished=True, exit_code=code)
        _write_json(summary, snapshot())
    return code


if __name__ == "__main__":
    sys.exit(main())

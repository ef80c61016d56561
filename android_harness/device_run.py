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


PROGRESS_FLAGS = ("--progress-jsonl", "--progress_jsonl")


def progress_file(cli_args: list[str]) -> str | None:
    """The file the CLI arguments stream progress to (the last one given, as argparse takes it), or None."""
    found = None
    for i, arg in enumerate(cli_args):
        flag, eq, value = arg.partition("=")
        if flag in PROGRESS_FLAGS:
            found = value if eq else (cli_args[i + 1] if i + 1 < len(cli_args) else None)
    return found


def main(argv: list[str] | None = None) -> int:
    """The device runner's command line: a Ctrl-C is one line saying what is kept, exit status 130 (zoodip imported here, as in _main)."""
    from zoodip.console import script_main

    return script_main("--summary holds the run as it was when last written (finished: false)")(_main)(argv)


def _main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv or argv.index("--") != 2 or argv[0] != "--summary":
        print("usage: device_run.py --summary RUN_JSON -- personalize ...", file=sys.stderr)
        return 2
    summary = Path(argv[1])
    cli_args = argv[3:]
    given = progress_file(cli_args)
    if given == "-" or (given is None and any(a.partition("=")[0] in PROGRESS_FLAGS for a in cli_args)):
        print("error: device_run.py reads the step times from the progress file: give --progress-jsonl a file "
              "(not '-'), or leave it out for one beside RUN_JSON", file=sys.stderr)
        return 2
    if summary.is_dir():  # (the run's record is replaced by a rename, which a folder refuses: after the whole run)
        print(f"error: --summary {summary} is a folder: name the file to write, e.g. {summary / 'run.json'}",
              file=sys.stderr)
        return 2
    try:
        summary.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"error: cannot make the folder of --summary {summary} ({exc.strerror or exc}): choose another path",
              file=sys.stderr)
        return 2
    progress = summary.with_name("progress.jsonl") if given is None else Path(given)
    if given is None:
        cli_args += ["--progress-jsonl", str(progress)]

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

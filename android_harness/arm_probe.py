#!/usr/bin/env python3
"""One measured personalization run plus a finite-difference probe, with the SDK only (no torch).

    PYTHONPATH=sdk python android_harness/arm_probe.py --model EXPORT --photos DIR --out OUT [--steps 4 ...]

Runs the real CLI entry point (``zoodip.cli.main(["personalize", ...])``) in this process, then
evaluates the denoising loss L(v) and L(v + mu z_i) on a fixed, seeded problem (the quantities a
training step differences), and writes OUT/probe.json; the progress stream goes to OUT/progress.jsonl (or
--progress-jsonl), as with device_run.py. ``arm_emulated.py`` runs this same file on
the host and inside the ARM64 rootfs and compares the two; it also runs on a device.
"""
from __future__ import annotations

import time

_T0 = time.monotonic()

import contextlib  # noqa: E402
import hashlib  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import TextIO  # noqa: E402

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402

IMPORT_S = time.monotonic() - _T0

# The ARM CPU features the kernel (or qemu-user) reports to this process, as /proc/cpuinfo names them.
# onnxruntime picks its kernels from these, so they say which kernel family a run exercised.
# Bits from the Linux arm64 uapi hwcap.h: (AT_HWCAP bit, name) and (AT_HWCAP2 bit, name).
HWCAP_BITS = ((0, "fp"), (1, "asimd"), (9, "fphp"), (10, "asimdhp"), (20, "asimddp"), (22, "sve"))
HWCAP2_BITS = ((1, "sve2"), (13, "i8mm"), (14, "bf16"), (23, "sme"))
AT_HWCAP, AT_HWCAP2 = 16, 26


def cpu_features() -> list[str] | None:
    """The listed ARM64 features this process may use (getauxval), or None off aarch64 Linux."""
    if platform.machine() not in ("aarch64", "arm64") or sys.platform != "linux":
        return None
    import ctypes

    getauxval = ctypes.CDLL(None).getauxval
    getauxval.restype, getauxval.argtypes = ctypes.c_ulong, [ctypes.c_ulong]
    hwcap, hwcap2 = getauxval(AT_HWCAP), getauxval(AT_HWCAP2)
    return ([name for bit, name in HWCAP_BITS if hwcap >> bit & 1]
            + [name for bit, name in HWCAP2_BITS if hwcap2 >> bit & 1])


# The probe's directions at most: all of them and the base point run as one batch of UNet evaluations, so a
# mistyped count (100000000) failed after the whole personalization, allocating the batch.
MAX_DIRECTIONS = 64


def fd_probe(model_dir: str, directions: int, mu: float, threads: int, seed: int = 1234) -> dict:
    from zoodip.model import ExportedModel, RuntimeOptions
    from zoodip.trainer import DenoisingLoss

    model = ExportedModel.load(model_dir, RuntimeOptions(threads=threads))
    token = "<fd-probe>"
    placeholder = model.tokenizer.add_placeholder(token)[0]
    ids = model.tokenizer(f"a photo of a {token}")[0]
    v0 = np.asarray(model.token_embeddings[model.tokenizer.token_ids_for_word("star")[0]], np.float32)
    rng = np.random.default_rng(seed)
    shape = (model.latent_channels, model.sample_size, model.sample_size)
    x_t = rng.standard_normal(shape).astype(np.float32)
    target = rng.standard_normal(shape).astype(np.float32)
    z = rng.standard_normal((directions, model.hidden_size)).astype(np.float32)
    candidates = np.concatenate([v0[None], v0[None] + np.float32(mu) * z]).astype(np.float32)
    digest = hashlib.sha256(b"".join(a.tobytes() for a in (ids, candidates, x_t, target))).hexdigest()[:16]
    started = time.monotonic()
    losses = DenoisingLoss(model, placeholder, batched=True)(ids, candidates, x_t, 700, target)
    return {"mu": mu, "losses": [float(x) for x in losses], "inputs_sha256": digest,
            "forward_s": time.monotonic() - started, "batch": len(candidates)}


# The `zoodip personalize` flags this script passes its own on as: the CLI's lines (`--max_train_steps must be ...`,
# `--output_dir X is an existing file`) are shown in this script's words. The CLI says every setting as its flag and a
# path as given, so a flag here is a word of its own that starts with --, never a piece of a path (DIR/output_dir).
CLI_FLAGS = {"--max_train_steps": "--steps", "--output_dir": "--out", "--train_data_dir": "--photos",
             "--checkpointing_steps": "--checkpointing-steps"}
_CLI_FLAG = re.compile(r"(?<![\w/\\.-])(" + "|".join(CLI_FLAGS) + r")(?![\w-])")


class InOwnFlags(io.TextIOBase):
    """A text stream writing to ``stream`` with the CLI's flags in CLI_FLAGS said as this script's."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        self.stream.write(_CLI_FLAG.sub(lambda found: CLI_FLAGS[found.group(1)], text))
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def reconfigure(self, **settings: object) -> None:
        """zoodip's readable_output: set on the stream beneath (a path's non-UTF-8 byte shown as '\\xff')."""
        if callable(getattr(self.stream, "reconfigure", None)):
            self.stream.reconfigure(**settings)


def main(argv: list[str] | None = None) -> int:
    """The probe's command line: a Ctrl-C is one line saying what is kept, exit status 130 (zoodip imported here, as in _main)."""
    from zoodip.console import script_main

    return script_main("--out/probe.json was not written (a personalization run finished in --out is kept)")(_main)(argv)


def _main(argv: list[str] | None = None) -> int:
    # zoodip (PYTHONPATH=sdk) is what this probe runs; imported here, after IMPORT_S, as zoodip.cli is below.
    from zoodip.console import OneLineParser, print_error
    from zoodip.errors import ZoodipError
    from zoodip.paths import atomic_write_bytes

    parser = OneLineParser(prog="python android_harness/arm_probe.py", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--photos", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--eval-every", type=int, default=4)
    parser.add_argument("--checkpointing-steps", type=int, default=2)
    parser.add_argument("--tau", type=int, default=4)
    parser.add_argument("--n", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--directions", type=int, default=4, help="finite-difference probe directions (0: no probe)")
    parser.add_argument("--progress-jsonl", help="the progress stream's file (default: OUT/progress.jsonl)")
    try:
        args = parser.parse_args(argv)
        if not 0 <= args.directions <= MAX_DIRECTIONS:
            parser.error(f"--directions must be 0 (no probe) to {MAX_DIRECTIONS} (one batch), got {args.directions}")
    except ZoodipError as exc:
        return print_error(exc)

    from zoodip.cli import main as cli_main

    out = Path(args.out)
    # Inside the run's folder, as device_run.py keeps it (it was OUT.progress.jsonl, beside the folder).
    progress = out / "progress.jsonl" if args.progress_jsonl is None else Path(args.progress_jsonl)
    started = time.monotonic()
    with contextlib.redirect_stderr(InOwnFlags(sys.stderr)):
        code = cli_main(["personalize", "--model", args.model, "--train_data_dir", args.photos,
                         "--output_dir", str(out), "--placeholder_token", "<arm-star>", "--initializer_token", "star",
                         "--max_train_steps", str(args.steps), "--eval-every", str(args.eval_every),
                         "--checkpointing_steps", str(args.checkpointing_steps), "--tau", str(args.tau),
                         "--n", str(args.n),
                         "--seed", str(args.seed), "--threads", str(args.threads), "--no-progress",
                         "--progress-jsonl", str(progress)])
    if code != 0:
        return code
    report = {
        "machine": platform.machine(), "python": platform.python_version(), "numpy": np.__version__,
        "onnxruntime": ort.__version__, "cpu_features": cpu_features(), "import_s": IMPORT_S, "personalize_s": time.monotonic() - started,
        "progress": str(progress),
    }
    if args.directions:
        report["fd_probe"] = fd_probe(args.model, args.directions, 1e-3, args.threads)
    # whole or not at all (zoodip's own writer: the harness ships without benchmarks/)
    text = json.dumps(report, indent=2) + "\n"
    atomic_write_bytes(out / "probe.json", text, then="run the probe again")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""The personalization loop on ARM64 Linux under qemu user-mode emulation, compared with x86-64.

    python android_harness/arm_emulated.py setup     # install qemu/debootstrap, register binfmt, build the rootfs (once)
    python android_harness/arm_emulated.py check     # setup, then run + compare (what `make arm-check` does)
    python android_harness/arm_emulated.py status    # what is present, what is missing (exit 0 when ready)

The ARM64 userland is built once and cached outside the repository (it survives fresh clones):

    ~/.cache/zoodip/arm64-rootfs     Debian bookworm arm64 (debootstrap --variant=minbase, python3 3.11)
                                      + /opt/zoodip-venv with the aarch64 wheels of the SDK's dependencies
                                      (numpy, onnxruntime, pillow, tqdm from PyPI, same versions as the host)
    ~/.cache/zoodip/arm64-wheels     those wheels (pip download --platform manylinux_2_28_aarch64 ...)

(ZOODIP_ARM64_ROOTFS overrides the rootfs path.) A run copies the repository's sdk/ (only the SDK:
numpy + onnxruntime + Pillow, never torch) and an export folder made on the host into the rootfs,
and runs arm_probe.py there through ``chroot`` (the real CLI entry point ``zoodip.cli.main
(["personalize", ...])`` plus a fixed finite-difference probe) -- every aarch64 instruction is
executed by qemu-aarch64-static via binfmt_misc, emulating the CPU model DEFAULT_CPU (a NEON-only phone
core; --cpu / ZOODIP_ARM64_CPU choose another, e.g. "max" for SVE). The same probe runs on the host; the script prints
how the training losses, evaluation losses, finite differences and the learned embedding compare.
``check`` also runs run_on_device.sh end to end against the rootfs through an ssh stand-in.

binfmt_misc registrations do not survive a reboot: every entry point (re-)registers the emulator
(mounting binfmt_misc if needed) from /usr/lib/binfmt.d/qemu-aarch64.conf. All of this needs root.
"""
from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "zoodip"
ROOTFS = Path(os.environ.get("ZOODIP_ARM64_ROOTFS", CACHE / "arm64-rootfs")).expanduser()
WHEELS = ROOTFS.parent / "arm64-wheels"
STAMP = ".zoodip-rootfs-ready"
VENV = "/opt/zoodip-venv"
SUITE = "bookworm"  # its python3 is 3.11: the wheels below are fetched for that version
PY_VERSION = "3.11"
QEMU = Path("/usr/bin/qemu-aarch64-static")
BINFMT_CONF = Path("/usr/lib/binfmt.d/qemu-aarch64.conf")
BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")
BINFMT_ENTRY = BINFMT_DIR / "qemu-aarch64"
APT_PACKAGES = ("qemu-user-static", "debootstrap")
# The ARM CPU qemu emulates (QEMU_CPU for every emulated process). qemu-user's own default, "max",
# advertises every optional feature (SVE and more); onnxruntime then takes SVE kernels that qemu
# runs ~20x slower, and phones in use have NEON-only cores anyway. Cortex-A76: a phone big core
# (ARMv8.2: NEON, fp16 arithmetic, dot product; no SVE). Override with --cpu or ZOODIP_ARM64_CPU,
# e.g. "max" to exercise onnxruntime's SVE kernels once (slow).
DEFAULT_CPU = "cortex-a76"
CPU_ENV = "ZOODIP_ARM64_CPU"
# Test/compare tolerances (see android_harness/README.md for the measured values).
# Measured on the tiny model (6 steps): losses 7e-7, finite differences 3e-3, embedding 0.5% of the update.
LOSS_RTOL = 1e-5          # per-step training losses and evaluation losses, relative
FD_RTOL = 0.05            # finite differences (L(v+mu z_i)-L(v))/mu on one fixed problem, relative L2
UPDATE_RTOL = 0.05        # ||v_arm - v_x86|| / ||v_x86 - v_init||: relative to how far training moved v


class HostNotReady(Exception):
    """This host cannot run the emulated check as it is (not root, a tool missing, binfmt_misc refused):
    main() prints it as the contract's one ``error:`` line, exit status 2."""


def _sdk_importable() -> None:
    """Put the repository's SDK on sys.path (the harness also runs where it is not installed)."""
    if str(REPO / "sdk") not in sys.path:
        sys.path.insert(0, str(REPO / "sdk"))


def log(message: str) -> None:
    print(f"[arm64] {message}", file=sys.stderr, flush=True)


# --- environment: emulator, binfmt, rootfs --------------------------------------------------------

def _sdk_versions() -> dict[str, str]:
    """The host's versions of the SDK dependencies: the ARM side gets the same ones."""
    from importlib.metadata import version

    out = {}
    for name in ("numpy", "onnxruntime", "pillow", "tqdm"):
        try:
            out[name] = version(name)
        except Exception:
            out[name] = ""
    return out


def binfmt_rule() -> str:
    """The registration line for qemu-aarch64 (from the Debian package's binfmt.d file)."""
    if BINFMT_CONF.is_file():
        for line in BINFMT_CONF.read_text().splitlines():
            if line.startswith(":qemu-aarch64:"):
                return line.strip()
    # The same rule, pointing at the static emulator; F = open the interpreter now (works in a chroot).
    return (":qemu-aarch64:M::\\x7f\\x45\\x4c\\x46\\x02\\x01\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x02\\x00\\xb7\\x00:"
            "\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\x00\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xfe\\xff\\xff\\xff:"
            f"{QEMU}:F")


def binfmt_registered() -> bool:
    try:
        return BINFMT_ENTRY.read_text().splitlines()[0].strip() == "enabled"
    except OSError:
        return False


def ensure_binfmt() -> str | None:
    """Register qemu-aarch64 with binfmt_misc if it is not; returns why it cannot, or None."""
    if platform.machine() in ("aarch64", "arm64"):
        return None  # native: nothing to emulate
    if binfmt_registered():
        return None
    if not QEMU.is_file():
        return f"{QEMU} is missing (apt-get install qemu-user-static)"
    if os.geteuid() != 0:
        return "registering qemu-aarch64 with binfmt_misc needs root"
    register = BINFMT_DIR / "register"
    if not register.exists():
        result = subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT_DIR)],
                                capture_output=True, text=True)
        if result.returncode != 0 or not register.exists():
            return f"cannot mount binfmt_misc on {BINFMT_DIR}: {result.stderr.strip() or 'no register file'}"
    try:
        register.write_text(binfmt_rule() + "\n")
    except OSError as exc:
        if not binfmt_registered():
            return f"cannot register qemu-aarch64 with binfmt_misc: {exc}"
    return None if binfmt_registered() else "qemu-aarch64 is registered but not enabled in binfmt_misc"


def emulated_cpu() -> str:
    """The CPU model to emulate: ZOODIP_ARM64_CPU if set, else DEFAULT_CPU."""
    return os.environ.get(CPU_ENV, "").strip() or DEFAULT_CPU


def qemu_cpus() -> list[str]:
    """The CPU models this qemu-aarch64-static emulates (``-cpu help``); [] without the emulator."""
    if not QEMU.is_file():
        return []
    # qemu 7.2 prints the list and exits with status 1, so the output is what counts
    result = subprocess.run([str(QEMU), "-cpu", "help"], capture_output=True, text=True)
    lines = result.stdout.splitlines()
    return [line.split()[0] for line in lines[1:] if line.strip()] if lines[:1] == ["Available CPUs:"] else []


def qemu_version() -> str | None:
    if not QEMU.is_file():
        return None
    result = subprocess.run([str(QEMU), "--version"], capture_output=True, text=True)
    words = result.stdout.split()
    return words[2] if len(words) > 2 and words[1] == "version" else None


def emulating() -> bool:
    """True on a host that runs aarch64 code through qemu (False on an ARM64 host: it runs natively)."""
    return platform.machine() not in ("aarch64", "arm64")


def check_cpu(cpu: str) -> str | None:
    """Why qemu cannot emulate this CPU model, or None when it can (or nothing is emulated)."""
    if not emulating():
        return None
    known = qemu_cpus()
    if known and cpu not in known:
        return f"qemu-aarch64-static does not emulate CPU '{cpu}' ({CPU_ENV} or --cpu): use one of {', '.join(known)}"
    return None


def emulation_env(cpu: str) -> dict[str, str]:
    """Environment entries that make qemu-user (binfmt_misc) emulate `cpu`; passed to every chroot'd process.

    qemu reads QEMU_CPU from the environment of the program being started, and the guest inherits it,
    so it must reach both the chroot command and anything started with ``env -i`` inside it.
    """
    return {"QEMU_CPU": cpu} if emulating() else {}


def rootfs_ready(root: Path = ROOTFS) -> bool:
    # lexists: the venv's python is an absolute symlink, meaningful only inside the chroot
    return (root / STAMP).is_file() and os.path.lexists(root / VENV.lstrip("/") / "bin" / "python")


def status() -> tuple[bool, str]:
    """(ready, reason): everything needed for an emulated run is present (binfmt re-registered if needed)."""
    if os.geteuid() != 0:
        return False, "the emulated ARM64 run uses chroot and binfmt_misc, which need root"
    if platform.machine() not in ("x86_64", "amd64", "aarch64", "arm64"):
        return False, f"unsupported host architecture {platform.machine()}"
    if platform.machine() in ("x86_64", "amd64") and not QEMU.is_file():
        return False, f"{QEMU} is missing: run 'make arm-check' (it apt-installs qemu-user-static)"
    if not rootfs_ready():
        return False, f"no prepared ARM64 rootfs at {ROOTFS}: run 'make arm-check' once to build it (~5 min)"
    why = ensure_binfmt() or check_cpu(emulated_cpu())
    if why:
        return False, why
    return True, f"ready: {ROOTFS}" + (f" (emulated CPU: {emulated_cpu()})" if emulating() else "")


def install_host_packages() -> None:
    missing = [p for p, exe in (("qemu-user-static", QEMU), ("debootstrap", Path("/usr/sbin/debootstrap")))
               if not exe.exists()]
    if not missing or platform.machine() in ("aarch64", "arm64") and missing == ["qemu-user-static"]:
        return
    if os.geteuid() != 0:
        raise HostNotReady(f"{', '.join(missing)} missing and not root: install them with apt-get, or run as root")
    log(f"apt-get install {' '.join(missing)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=env)


def debian_mirror() -> str:
    """The Debian mirror apt uses on this host (deb822 or one-line sources), else deb.debian.org."""
    candidates = sorted(Path("/etc/apt/sources.list.d").glob("*.sources")) + [Path("/etc/apt/sources.list")]
    for path in candidates:
        try:
            text = path.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            parts = line.split()
            if line.startswith("URIs:") and len(parts) > 1 and "security" not in parts[1]:
                return parts[1]
            if parts[:1] == ["deb"] and len(parts) > 2 and "security" not in line:
                return parts[2] if not parts[1].startswith("[") else parts[3]
    return "http://deb.debian.org/debian"


def fetch_wheels(dest: Path) -> list[str]:
    versions = _sdk_versions()
    reqs = [f"{name}=={v}" if v else name for name, v in versions.items()]
    log(f"pip download aarch64 wheels: {' '.join(reqs)}")
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:",
                    "--python-version", PY_VERSION, "--platform", "manylinux_2_28_aarch64",
                    "--platform", "manylinux_2_27_aarch64", "--platform", "manylinux_2_17_aarch64",
                    "--platform", "manylinux2014_aarch64", "-d", str(dest), *reqs], check=True)
    return reqs


def build_rootfs(root: Path = ROOTFS) -> None:
    """debootstrap an arm64 bookworm userland and a venv with the SDK's dependencies (once)."""
    _sdk_importable()
    from zoodip.paths import exclusive_lock

    with exclusive_lock(root.parent / ".arm64-rootfs.lock"):
        if rootfs_ready(root):
            return
        why = ensure_binfmt()
        if why:
            raise HostNotReady(why)
        partial = root.with_name(root.name + ".partial")
        if partial.exists():
            shutil.rmtree(partial)
        mirror = debian_mirror()
        env = dict(os.environ, **emulation_env(emulated_cpu()))  # debootstrap's second stage runs aarch64 code
        log(f"debootstrap --arch=arm64 --variant=minbase {SUITE} {partial} {mirror} (about 3-5 minutes)")
        started = time.monotonic()
        try:
            subprocess.run(["debootstrap", "--arch=arm64", "--variant=minbase", "--include=python3,python3-venv",
                            SUITE, str(partial), mirror], check=True, stdout=subprocess.DEVNULL, env=env)
            reqs = fetch_wheels(WHEELS)
            wheels_in_root = partial / "opt" / "wheels"
            shutil.copytree(WHEELS, wheels_in_root)
            log(f"venv {VENV} in the rootfs, offline install of {' '.join(reqs)}")
            subprocess.run(["chroot", str(partial), "/usr/bin/python3", "-m", "venv", VENV], check=True, env=env)
            subprocess.run(["chroot", str(partial), f"{VENV}/bin/python", "-m", "pip", "install", "-q", "--no-index",
                            "--find-links", "/opt/wheels", *reqs], check=True, env=env)
        except subprocess.CalledProcessError as exc:  # (its own output said why, above)
            shutil.rmtree(partial, ignore_errors=True)
            raise HostNotReady(f"building the arm64 rootfs failed: '{' '.join(map(str, exc.cmd[:2]))} ...' exited "
                               f"{exc.returncode} (the Debian mirror {mirror} and PyPI must be reachable once); nothing "
                               "was kept, run it again") from None
        shutil.rmtree(wheels_in_root)
        info = {"suite": SUITE, "mirror": mirror, "packages": reqs, "built_s": round(time.monotonic() - started, 1)}
        (partial / STAMP).write_text(json.dumps(info, indent=2) + "\n")
        if root.exists():
            shutil.rmtree(root)
        os.replace(partial, root)
        log(f"rootfs ready at {root} in {info['built_s']} s")


def setup() -> None:
    if os.geteuid() != 0:
        raise HostNotReady("the emulated ARM64 run needs root (chroot, binfmt_misc, debootstrap): run it with sudo")
    install_host_packages()
    why = check_cpu(emulated_cpu()) or ensure_binfmt()  # (the CPU list is known once qemu is installed)
    if why:
        raise HostNotReady(why)
    build_rootfs()


# --- one personalization, on the host or in the rootfs ---------------------------------------------

@dataclass
class RunSpec:
    steps: int = 4
    eval_every: int = 4
    checkpointing_steps: int = 2
    tau: int = 4
    n: int = 2
    seed: int = 0
    threads: int = 1
    photos: int = 3  # the first N bundled example photos (the evaluation loss costs 3 forwards per photo)
    directions: int = 4  # finite-difference probe
    cpu: str = field(default_factory=emulated_cpu)  # the ARM CPU model qemu emulates for the ARM64 side

    def probe_args(self, model: str, photos: str, out: str) -> list[str]:
        return ["--model", model, "--photos", photos, "--out", out, "--steps", str(self.steps),
                "--eval-every", str(self.eval_every), "--checkpointing-steps", str(self.checkpointing_steps),
                "--tau", str(self.tau), "--n", str(self.n), "--seed", str(self.seed), "--threads", str(self.threads),
                "--directions", str(self.directions)]


# Nothing is mounted in the chroot. With the host's /proc (x86 /proc/cpuinfo, which qemu 7.2 passes
# through) and /sys mounted, onnxruntime's cpuinfo library crashes under qemu-user; without them it
# prints these warnings and onnxruntime falls back to getauxval(AT_HWCAP) for the ARM CPU features.
CPUINFO_NOISE = ("Error in cpuinfo:", "onnxruntime cpuid_info warning:", "onnxruntime warning: cpuinfo_initialize")


def _without_cpuinfo_noise(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not line.startswith(CPUINFO_NOISE))


def read_run(out: Path, wall_s: float) -> dict[str, Any]:
    """Losses, evaluation losses, embedding, probe and timing of a finished probe run."""
    import numpy as np

    _sdk_importable()
    from zoodip.embeddings import EMBEDDING_NAME, load_embedding_file
    from zoodip.run_folder import LOG_NAME

    probe = json.loads((out / "probe.json").read_text())
    records = [json.loads(line) for line in (out / LOG_NAME).read_text().splitlines() if line.strip()]
    progress = out / "progress.jsonl"  # arm_probe.py's default
    events = [json.loads(line) for line in progress.read_text().splitlines() if line.strip()]
    _, vectors = load_embedding_file(out / EMBEDDING_NAME)
    step_times, last = [], 0.0
    for event in events:
        if event["event"] in ("step", "eval"):
            if event["event"] == "step":  # training steps without an evaluation in them
                step_times.append(event["elapsed_s"] - last)
            last = event["elapsed_s"]
    return {
        "machine": probe["machine"], "cpu_features": probe.get("cpu_features"), "numpy": probe["numpy"], "onnxruntime": probe["onnxruntime"],
        "losses": [r["loss"] for r in records if "loss" in r],
        "eval_losses": [r["eval_loss"] for r in records if "eval_loss" in r],
        "embedding": np.asarray(vectors, np.float32).reshape(-1),
        "fd_probe": probe.get("fd_probe"),
        "step_s": float(np.median(step_times)) if step_times else None,
        "loop_s": events[-1]["elapsed_s"] if events else None,
        "import_s": probe["import_s"],
        "wall_s": wall_s,
        "final_event": events[-1]["event"] if events else None,
    }


def _stage(dest: Path, exports: dict[str, Path], photos: int) -> None:
    """sdk/, the probe script, the first photos and the export folders under dest."""
    shutil.copytree(REPO / "sdk" / "zoodip", dest / "sdk" / "zoodip", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy2(REPO / "android_harness" / "arm_probe.py", dest / "arm_probe.py")
    (dest / "photos").mkdir()
    for path in sorted((REPO / "sdk" / "zoodip" / "data" / "example_concept").glob("*.png"))[:photos]:
        shutil.copy2(path, dest / "photos" / path.name)
    for name, folder in exports.items():
        shutil.copytree(folder, dest / name)


def run_host(exports: dict[str, Path], work: Path, spec: RunSpec, name: str = "export") -> dict[str, Any]:
    """The probe on this machine (x86-64), with the same staged files as the ARM64 side."""
    stage = work / "host-stage"
    if not stage.exists():
        _stage(stage, exports, spec.photos)
    out = stage / f"out-{name}"
    shutil.rmtree(out, ignore_errors=True)  # a reused --work folder: start the run afresh
    env = dict(os.environ, PYTHONPATH=str(stage / "sdk"), PYTHONHASHSEED="0")
    started = time.monotonic()
    result = subprocess.run([sys.executable, str(stage / "arm_probe.py"),
                             *spec.probe_args(str(stage / name), str(stage / "photos"), str(out))],
                            env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"host run failed ({result.returncode}): {result.stderr.strip()[-2000:]}")
    return read_run(out, time.monotonic() - started)


@contextlib.contextmanager
def staged_in_rootfs(exports: dict[str, Path], spec: RunSpec, root: Path = ROOTFS) -> Iterator[tuple[Path, str]]:
    """Copy sdk/ and the export folders into the rootfs; yields (host path, path inside the chroot)."""
    stage = Path(tempfile.mkdtemp(prefix="zoodip-arm-", dir=root / "tmp"))
    try:
        _stage(stage, exports, spec.photos)
        yield stage, "/" + stage.relative_to(root).as_posix()
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def run_arm(stage: Path, inner: str, spec: RunSpec, name: str = "export", root: Path = ROOTFS) -> dict[str, Any]:
    """The probe inside the ARM64 rootfs: chroot + the venv's aarch64 python (qemu via binfmt_misc)."""
    out = f"{inner}/out-{name}"
    emulation = emulation_env(spec.cpu)
    cmd = ["chroot", str(root), "/usr/bin/env", "-i", f"PYTHONPATH={inner}/sdk", "PYTHONHASHSEED=0", "HOME=/root",
           "PATH=/usr/bin:/bin", *(f"{k}={v}" for k, v in emulation.items()), f"{VENV}/bin/python", f"{inner}/arm_probe.py",
           *spec.probe_args(f"{inner}/{name}", f"{inner}/photos", out)]
    started = time.monotonic()
    result = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, **emulation))
    if result.returncode != 0:
        raise RuntimeError(f"ARM64 run failed ({result.returncode}): {_without_cpuinfo_noise(result.stderr).strip()[-2000:]}")
    return read_run(stage / f"out-{name}", time.monotonic() - started)


def emulated_as(cpu: str) -> str:
    """How the ARM64 side runs, for reports: the qemu version and CPU model, or natively."""
    if not emulating():
        return "native ARM64 (nothing emulated)"
    return f"qemu-aarch64-static {qemu_version() or '(version unknown)'} user mode, emulated CPU {cpu}"


def compare(a: dict[str, Any], b: dict[str, Any], v_init: Any = None) -> dict[str, Any]:
    import numpy as np

    def rel(x, y):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        return float(np.max(np.abs(x - y) / np.maximum(np.abs(x), 1e-30))) if x.size else 0.0

    va, vb = a["embedding"].astype(np.float64), b["embedding"].astype(np.float64)
    out = {
        "steps": len(a["losses"]),
        "loss_max_rel_diff": rel(a["losses"], b["losses"]),
        "eval_loss_max_rel_diff": rel(a["eval_losses"], b["eval_losses"]),
        "embedding_max_abs_diff": float(np.max(np.abs(va - vb))),
        "embedding_rel_l2_diff": float(np.linalg.norm(va - vb) / np.linalg.norm(va)),
        "losses_bit_identical": a["losses"] == b["losses"] and a["eval_losses"] == b["eval_losses"],
        "embedding_bit_identical": bool(np.array_equal(a["embedding"], b["embedding"])),
    }
    if v_init is not None:  # the difference relative to how far training moved the embedding
        moved = np.linalg.norm(va - np.asarray(v_init, np.float64))
        out["embedding_diff_over_update"] = float(np.linalg.norm(va - vb) / moved) if moved else None
    pa, pb = a.get("fd_probe"), b.get("fd_probe")
    if pa and pb:
        la, lb = np.asarray(pa["losses"]), np.asarray(pb["losses"])
        fa, fb = (la[1:] - la[0]) / pa["mu"], (lb[1:] - lb[0]) / pb["mu"]
        out["probe_same_inputs"] = pa["inputs_sha256"] == pb["inputs_sha256"]
        out["probe_loss_max_abs_diff"] = float(np.max(np.abs(la - lb)))
        out["probe_fd_max_abs_diff"] = float(np.max(np.abs(fa - fb)))
        out["probe_fd_rel_l2_diff"] = float(np.linalg.norm(fa - fb) / max(np.linalg.norm(fa), 1e-30))
        out["probe_fd"] = [[float(x) for x in fa], [float(x) for x in fb]]
    return out


def within_tolerance(c: dict[str, Any]) -> bool:
    update = c.get("embedding_diff_over_update")
    ok = (c["loss_max_rel_diff"] <= LOSS_RTOL and c["eval_loss_max_rel_diff"] <= LOSS_RTOL
          and (update is None or update <= UPDATE_RTOL))
    if "probe_fd_rel_l2_diff" in c:
        ok = ok and c["probe_same_inputs"] and c["probe_fd_rel_l2_diff"] <= FD_RTOL
    return ok


def ort_folder(work: Path, export: Path) -> Path:
    """Where the .ort conversion of ``export`` goes in the work folder (one per export, so recipes do not mix)."""
    return work / f"{Path(export).name}-ort"


def run_comparison(export: Path, work: Path, spec: RunSpec | None = None, with_ort: bool = True) -> dict[str, Any]:
    """x86-64 vs ARM64 (emulated) on one export; with_ort adds an ARM64 run on its .ort conversion."""
    import numpy as np

    spec = spec or RunSpec()
    exports = {"export": Path(export)}
    if with_ort:
        if str(REPO / "android_harness") not in sys.path:
            sys.path.insert(0, str(REPO / "android_harness"))
        from convert_to_ort import convert_export

        ort_dir = ort_folder(work, export)
        if not ort_dir.exists():
            convert_export(export, ort_dir, check=False, log=lambda m: None)
        exports["export-ort"] = ort_dir
    log(f"x86-64 run: {spec.steps} steps, threads {spec.threads}, {spec.photos} photos")
    runs: dict[str, Any] = {"x86_64": run_host(exports, work, spec)}
    with staged_in_rootfs(exports, spec) as (stage, inner):
        log(f"ARM64 run: {spec.steps} steps, {emulated_as(spec.cpu)}")
        runs["arm64"] = run_arm(stage, inner, spec)
        if with_ort:
            log("ARM64 run under qemu on the .ort conversion")
            runs["arm64_ort"] = run_arm(stage, inner, spec, "export-ort")

    _sdk_importable()
    from zoodip.model import ExportedModel

    model = ExportedModel.load(export)
    v_init = np.asarray(model.token_embeddings[model.tokenizer.token_ids_for_word("star")[0]], np.float32)
    report: dict[str, Any] = {"spec": dict(spec.__dict__), "arm64_cpu": emulated_as(spec.cpu), "runs": {},
                              "comparisons": {}, "recipe": model.manifest["recipe"]}
    for key, run in runs.items():
        report["runs"][key] = {k: v for k, v in run.items() if k != "embedding"}
        report["runs"][key]["embedding"] = [float(x) for x in run["embedding"]]
    report["comparisons"]["x86_64 vs arm64"] = compare(runs["x86_64"], runs["arm64"], v_init)
    if with_ort:
        report["comparisons"]["x86_64 vs arm64 (.ort)"] = compare(runs["x86_64"], runs["arm64_ort"], v_init)
        report["comparisons"]["arm64 .onnx vs arm64 .ort"] = compare(runs["arm64"], runs["arm64_ort"], v_init)
    report["tolerance"] = {"loss_rtol": LOSS_RTOL, "update_rtol": UPDATE_RTOL, "fd_rtol": FD_RTOL}
    report["ok"] = all(within_tolerance(c) for c in report["comparisons"].values())
    return report


def format_report(report: dict[str, Any]) -> str:
    spec = report["spec"]
    lines = [f"personalization: tiny {report['recipe'].upper()} export, {spec['steps']} steps, n={spec['n']}, eval every "
             f"{spec['eval_every']}, {spec['photos']} photos, threads={spec['threads']}",
             f"  ARM64: {report['arm64_cpu']}"]
    for key, run in report["runs"].items():
        features = f", features {' '.join(run['cpu_features'])}" if run.get("cpu_features") else ""
        lines.append(f"  {key:10s} [{run['machine']}{features}, numpy {run['numpy']}, onnxruntime {run['onnxruntime']}] "
                     f"median step {run['step_s']:.3f} s (n+1={spec['n'] + 1} forwards), import {run['import_s']:.1f} s, "
                     f"process {run['wall_s']:.1f} s; losses {', '.join(f'{x:.7f}' for x in run['losses'])}; "
                     f"eval {', '.join(f'{x:.7f}' for x in run['eval_losses'])}")
    for key, c in report["comparisons"].items():
        line = (f"  {key}: training losses max rel diff {c['loss_max_rel_diff']:.3g}, eval losses {c['eval_loss_max_rel_diff']:.3g}; "
                f"embedding max abs diff {c['embedding_max_abs_diff']:.3g}, rel L2 {c['embedding_rel_l2_diff']:.3g}")
        if c.get("embedding_diff_over_update") is not None:
            line += f" ({c['embedding_diff_over_update']:.3g} of the update)"
        if "probe_fd_rel_l2_diff" in c:
            line += (f"; fixed-problem losses max abs diff {c['probe_loss_max_abs_diff']:.3g}, finite differences "
                     f"(L(v+mu z)-L(v))/mu rel L2 diff {c['probe_fd_rel_l2_diff']:.3g}")
        line += f"; bit-identical: losses {c['losses_bit_identical']}, embedding {c['embedding_bit_identical']}"
        lines.append(line)
    tol = report["tolerance"]
    lines.append(f"tolerance: losses rel <= {tol['loss_rtol']:g}, embedding diff <= {tol['update_rtol']:g} of the update, "
                 f"finite differences rel L2 <= {tol['fd_rtol']:g}: " + ("OK" if report["ok"] else "FAILED"))
    return "\n".join(lines)


FAKE_SSH = """#!/bin/bash
# Test double written by arm_emulated.py: "ssh HOST CMD" runs CMD in the ARM64 rootfs (chroot) instead.
while [ $# -gt 0 ]; do case "$1" in -p|-o|-i|-l) shift 2 ;; -*) shift ;; *) break ;; esac; done
shift  # the host
exec /usr/sbin/chroot {root} /usr/bin/env -i HOME=/root PATH=/usr/bin:/bin {emulation} /bin/sh -c "cd /root && $1"
"""


def device_check(export: Path, work: Path, steps: int = 4, cpu: str | None = None) -> dict[str, Any]:
    """run_on_device.sh end to end (push, run, pull) against the ARM64 rootfs through an ssh stand-in."""
    bindir = work / "fake-ssh-bin"
    bindir.mkdir(parents=True, exist_ok=True)
    emulation = emulation_env(cpu or emulated_cpu())
    (bindir / "ssh").write_text(FAKE_SSH.format(root=ROOTFS, emulation=" ".join(f"{k}={v}" for k, v in emulation.items())))
    (bindir / "ssh").chmod(0o755)
    out = work / "device-out"
    photos = work / "device-photos"
    if not photos.exists():
        photos.mkdir()
        for path in sorted((REPO / "sdk" / "zoodip" / "data" / "example_concept").glob("*.png"))[:3]:
            shutil.copy2(path, photos / path.name)
    cmd = ["bash", str(REPO / "android_harness" / "run_on_device.sh"), "--ssh", "emulated-arm64", "--model", str(export),
           "--photos", str(photos), "--python", f"{VENV}/bin/python", "--run", "arm-check", "--out", str(out),
           "--steps", str(steps), "--", "--eval-every", str(steps), "--tau", "4", "--threads", "1",
           "--placeholder_token", "<arm-star>", "--initializer_token", "star"]
    env = dict(os.environ, PATH=f"{bindir}:{os.environ.get('PATH', '/usr/bin:/bin')}", **emulation)
    shutil.rmtree(ROOTFS / "root" / "zoodip-run", ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    started = time.monotonic()
    try:
        result = subprocess.run(cmd, env=env, capture_output=True, text=True)
    finally:
        shutil.rmtree(ROOTFS / "root" / "zoodip-run", ignore_errors=True)
    summary = json.loads((out / "run.json").read_text()) if (out / "run.json").is_file() else {}
    return {"exit_code": result.returncode, "wall_s": time.monotonic() - started, "summary": summary,
            "pulled": sorted(p.name for p in out.iterdir()) if out.is_dir() else [],
            "stderr_tail": _without_cpuinfo_noise(result.stderr)[-1500:]}


# The recipes the check can run: those meant for training (fp32 activations, smooth finite differences).
ARM_CHECK_RECIPES = ("w8a32", "w4a32")


def make_tiny_export(work: Path, recipe: str = "w8a32") -> Path:
    for path in (REPO / "sdk", REPO):
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))
    from zoodip.manifest import MANIFEST

    out = work / f"tiny-export-{recipe}"
    if not (out / MANIFEST).is_file():
        from zoodip_export.export_model import export_model

        log(f"exporting the tiny model on the host: export_model(None, out, tiny=True, recipe={recipe!r})")
        export_model(None, out, tiny=True, recipe=recipe, progress=False)
    return out


def main(argv: list[str] | None = None) -> int:
    """The emulated check's command line: a Ctrl-C is one line saying what is kept, exit status 130 (zoodip imported here, as in _main)."""
    from zoodip.console import script_main

    return script_main("--json was not written (what setup finished is kept for the next run; the run folders only in --work)")(_main)(argv)


def _main(argv: list[str] | None = None) -> int:
    _sdk_importable()
    from zoodip.console import OneLineParser, print_error  # one line for a bad flag
    from zoodip.errors import ZoodipError
    from zoodip.paths import check_output_dir, check_output_file

    parser = OneLineParser(prog="python android_harness/arm_emulated.py",
                           description="zoodip on emulated ARM64 (qemu user mode + chroot)")
    parser.add_argument("command", choices=["setup", "check", "status"])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--no-ort", action="store_true", help="skip the ARM64 run on the .ort conversion")
    parser.add_argument("--no-device", action="store_true", help="skip run_on_device.sh against the rootfs")
    parser.add_argument("--cpu", default=None,
                        help=f"ARM CPU model qemu emulates (default: ${CPU_ENV} or {DEFAULT_CPU}; "
                             "'max' or 'a64fx' turn on SVE kernels, much slower; list: qemu-aarch64-static -cpu help)")
    parser.add_argument("--recipe", choices=ARM_CHECK_RECIPES, default="w8a32",
                        help="the export recipe of the tiny model both sides run (default: w8a32)")
    parser.add_argument("--json", type=Path, default=None, help="also write the report here")
    parser.add_argument("--work", type=Path, default=None, help="keep the run folders here (default: a temp dir)")
    try:
        args = parser.parse_args(argv)
        if args.steps < 1:
            parser.error(f"--steps {args.steps}: must be at least 1")
        # Checked now: a --work naming a file or a --json naming a folder failed with a traceback after the runs.
        if args.work is not None:
            check_output_dir(args.work, "--work")
        if args.json is not None:
            check_output_file(args.json, "--json")
    except ZoodipError as exc:
        return print_error(exc)
    if args.cpu:  # through the environment, so status(), setup() and every child process see the same choice
        os.environ[CPU_ENV] = args.cpu
    why = check_cpu(emulated_cpu())
    if why:
        return print_error(why)
    if args.command == "status":
        ready, reason = status()
        print(reason)
        return 0 if ready else 1
    try:
        setup()
    except HostNotReady as exc:
        return print_error(exc)
    if args.command == "setup":
        print(status()[1])
        return 0
    ready, reason = status()
    if not ready:
        return print_error(reason)
    spec = RunSpec(steps=args.steps, eval_every=max(1, args.steps // 2), checkpointing_steps=max(1, args.steps // 2))
    with contextlib.ExitStack() as stack:
        work = args.work or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="zoodip-arm-check-")))
        work.mkdir(parents=True, exist_ok=True)
        export = make_tiny_export(work, args.recipe)
        report = run_comparison(export, work, spec, with_ort=not args.no_ort)
        print(format_report(report), flush=True)
        if not args.no_device:
            converted = ort_folder(work, export)
            target = converted if converted.is_dir() else export
            log(f"run_on_device.sh --ssh against the ARM64 rootfs (an ssh stand-in runs commands in the chroot): {target.name}")
            device = device_check(target, work, cpu=spec.cpu)
            report["device_runner"] = device
            summary = device["summary"]
            print(f"device runner (run_on_device.sh, emulated ARM64, {target.name}): exit {device['exit_code']}, "
                  f"on-device exit {summary.get('exit_code')}, median step {summary.get('step_s_median')} s, "
                  f"peak memory {summary.get('peak_rss_mb')} MB (None: no /proc in the chroot), pulled back: "
                  f"{', '.join(device['pulled'])}")
            if device["exit_code"] != 0 or summary.get("exit_code") != 0:
                print(device["stderr_tail"], file=sys.stderr)
                report["ok"] = False
    if args.json:  # (whole: a Ctrl-C or a full disk in the middle left a torn report)
        from zoodip.paths import atomic_write_bytes

        text = (json.dumps(report, indent=2) + "\n").encode("utf-8")
        atomic_write_bytes(args.json, lambda handle: handle.write(text), then="run the check again")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

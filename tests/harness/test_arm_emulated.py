"""The personalization loop on ARM64 (Debian arm64 userland, aarch64 numpy/onnxruntime wheels, run
under qemu user-mode emulation) agrees with the same run on this x86-64 host.

Skipped, with the reason, where the emulator or the prepared rootfs is absent: `make arm-check`
installs qemu-user-static/debootstrap and builds the rootfs once (~/.cache/zoodip/arm64-rootfs).
binfmt_misc registrations do not survive a reboot; status() re-registers the emulator (as root).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "android_harness"))

import arm_emulated  # noqa: E402


def test_status_reports_a_reason():
    ready, reason = arm_emulated.status()
    assert isinstance(ready, bool) and reason


def test_emulated_cpu_defaults_to_a_phone_core_and_follows_the_override(monkeypatch):
    monkeypatch.delenv(arm_emulated.CPU_ENV, raising=False)
    assert arm_emulated.emulated_cpu() == arm_emulated.DEFAULT_CPU
    assert arm_emulated.RunSpec().cpu == arm_emulated.DEFAULT_CPU
    monkeypatch.setenv(arm_emulated.CPU_ENV, "max")
    assert arm_emulated.RunSpec().cpu == "max"
    env = arm_emulated.emulation_env("max")
    assert env == ({"QEMU_CPU": "max"} if arm_emulated.emulating() else {})


@pytest.mark.skipif(not arm_emulated.QEMU.is_file() or not arm_emulated.emulating(),
                    reason="qemu-aarch64-static is not installed, or this host runs ARM64 natively")
def test_a_cpu_qemu_does_not_emulate_is_refused_in_one_line(monkeypatch, capsys):
    assert arm_emulated.DEFAULT_CPU in arm_emulated.qemu_cpus()
    # setenv, not delenv: main() puts --cpu into the environment, and monkeypatch restores only what it recorded
    monkeypatch.setenv(arm_emulated.CPU_ENV, arm_emulated.DEFAULT_CPU)
    assert arm_emulated.main(["status", "--cpu", "pentium"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "'pentium'" in err and arm_emulated.DEFAULT_CPU in err and "\n" not in err


@pytest.mark.parametrize("flag", ["--work", "--json"])
def test_an_output_path_that_cannot_be_written_is_refused_before_any_run(flag, monkeypatch, capsys, tmp_path):
    """--work naming a file, or --json naming a folder, was a traceback after every run had finished."""
    monkeypatch.setattr(arm_emulated, "setup", lambda: pytest.fail("setup ran"))
    (tmp_path / "afile").write_text("x")
    bad = tmp_path / ("afile" if flag == "--work" else "")
    assert arm_emulated.main(["check", flag, str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and flag in err and "\n" not in err, err


def test_a_host_that_cannot_run_it_gets_one_line_and_status_2(monkeypatch, capsys):
    # Not root: setup() stops before any apt-get, debootstrap or binfmt_misc change.
    monkeypatch.setattr(arm_emulated, "check_cpu", lambda cpu: None)
    monkeypatch.setattr(arm_emulated.os, "geteuid", lambda: 1000)
    assert arm_emulated.main(["setup"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "root" in err and "\n" not in err and "Traceback" not in err


def test_a_failed_rootfs_build_is_one_reason_and_leaves_nothing(monkeypatch, tmp_path):
    """A debootstrap that failed (no network) was a CalledProcessError traceback, its half-built rootfs left."""
    import subprocess

    root = tmp_path / "arm64-rootfs"
    monkeypatch.setattr(arm_emulated, "ensure_binfmt", lambda: None)

    def debootstrap(command, **kwargs):
        (root.with_name(root.name + ".partial") / "debootstrap").mkdir(parents=True)
        raise subprocess.CalledProcessError(1, command)

    monkeypatch.setattr(arm_emulated.subprocess, "run", debootstrap)
    with pytest.raises(arm_emulated.HostNotReady, match="building the arm64 rootfs failed: 'debootstrap --arch=arm64 "
                                                        "...' exited 1 .* nothing was kept"):
        arm_emulated.build_rootfs(root)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".arm64-rootfs.lock"]


@pytest.mark.slow
@pytest.mark.parametrize("export_fixture", ["tiny_export", "tiny_w4_export"])  # the recipes make arm-check can run
def test_x86_64_and_emulated_arm64_personalizations_agree(export_fixture, request, tmp_path):
    ready, reason = arm_emulated.status()
    if not ready:
        pytest.skip(f"emulated ARM64 unavailable: {reason}")
    spec = arm_emulated.RunSpec()  # 4 steps, n=2, evaluation at steps 0 and 4, 3 photos, 1 thread
    report = arm_emulated.run_comparison(request.getfixturevalue(export_fixture), tmp_path, spec, with_ort=False)
    print(arm_emulated.format_report(report))
    assert report["recipe"] == {"tiny_export": "w8a32", "tiny_w4_export": "w4a32"}[export_fixture]
    assert report["runs"]["arm64"]["machine"] == "aarch64"
    # The CPU model reached qemu: the default phone core has NEON and no SVE (qemu's own default, max, has SVE).
    features = report["runs"]["arm64"]["cpu_features"]
    assert "asimd" in features, features
    if spec.cpu == arm_emulated.DEFAULT_CPU and arm_emulated.emulating():
        assert "sve" not in features, (spec.cpu, features)
    assert report["runs"]["x86_64"]["onnxruntime"] == report["runs"]["arm64"]["onnxruntime"]
    c = report["comparisons"]["x86_64 vs arm64"]
    assert c["steps"] == spec.steps and c["probe_same_inputs"]
    assert c["loss_max_rel_diff"] <= arm_emulated.LOSS_RTOL, c
    assert c["eval_loss_max_rel_diff"] <= arm_emulated.LOSS_RTOL, c
    assert c["probe_fd_rel_l2_diff"] <= arm_emulated.FD_RTOL, c
    assert c["embedding_diff_over_update"] <= arm_emulated.UPDATE_RTOL, c


def test_the_probe_keeps_its_progress_stream_inside_its_output_folder(tiny_export, photos, tmp_path):
    """arm_probe.py wrote OUT.progress.jsonl beside OUT (outside the folder it was given, unlike device_run.py)."""
    import json
    import os
    import subprocess

    out = tmp_path / "out"
    args = [sys.executable, str(REPO / "android_harness" / "arm_probe.py"), "--model", str(tiny_export), "--photos",
            str(photos), "--steps", "1", "--eval-every", "1", "--checkpointing-steps", "1", "--tau", "2",
            "--directions", "0"]
    env = dict(os.environ, PYTHONPATH=str(REPO / "sdk"))
    done = subprocess.run([*args, "--out", str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    events = [json.loads(line) for line in (out / "progress.jsonl").read_text().splitlines()]
    assert events[-1]["event"] == "done"
    assert json.loads((out / "probe.json").read_text())["progress"] == str(out / "progress.jsonl")
    # A place the user names is used as given.
    named = tmp_path / "elsewhere.jsonl"
    done = subprocess.run([*args, "--out", str(tmp_path / "out2"), "--progress-jsonl", str(named)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert named.is_file() and not (tmp_path / "out2" / "progress.jsonl").exists()


def test_the_probe_refuses_a_direction_count_it_cannot_batch_before_personalizing(tmp_path):
    """--directions 100000000 ran the whole personalization, then ended in a 24 GiB _ArrayMemoryError traceback."""
    import os
    import subprocess

    args = [sys.executable, str(REPO / "android_harness" / "arm_probe.py"), "--model", str(tmp_path / "model"),
            "--photos", str(tmp_path / "photos"), "--out", str(tmp_path / "out"), "--directions", "100000000"]
    done = subprocess.run(args, env=dict(os.environ, PYTHONPATH=str(REPO / "sdk")), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and done.stderr.startswith("error: --directions") and done.stderr.count("\n") == 1, \
        done.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("flags, said", [(["--steps", "-1"], "error: --steps must be an integer >= 1"),
                                         (["--checkpointing-steps", "-3"], "error: --checkpointing-steps must be"),
                                         (["--out", "FILE"], "error: --out {FILE} is an existing file")])
def test_the_probes_refusals_name_its_own_flags_not_the_clis(flags, said, tmp_path, capsys):
    """arm_probe.py --steps -1 said '--max_train_steps must be an integer >= 1', --out FILE '--output_dir ... is an
    existing file': the names of the `zoodip personalize` flags it passes them on as, which it does not take."""
    sys.path.insert(0, str(REPO / "android_harness"))
    import arm_probe

    afile = tmp_path / "afile"
    afile.write_text("")
    argv = ["--model", str(tmp_path / "model"), "--photos", str(REPO / "sdk" / "zoodip" / "data" / "example_concept"),
            "--out", str(tmp_path / "out"), *[str(afile) if flag == "FILE" else flag for flag in flags]]
    assert arm_probe.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(said.format(FILE=afile)) and err.count("\n") == 1, err
    assert "_steps" not in err and "output_dir" not in err


def test_the_probes_flag_names_leave_the_users_paths_as_given(tmp_path, capsys):
    """Its stderr's renaming of the CLI's flags rewrote a path the user gave that holds a flag's name: --out
    DIR/output_dir (a file) said '--out DIR/--out is an existing file', --model DIR/train_data_dir (missing) '...
    DIR/--photos does not exist'."""
    sys.path.insert(0, str(REPO / "android_harness"))
    import arm_probe

    afile = tmp_path / "output_dir"
    afile.write_text("")
    photos = REPO / "sdk" / "zoodip" / "data" / "example_concept"
    assert arm_probe.main(["--model", str(tmp_path / "model"), "--photos", str(photos), "--out", str(afile)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --out {afile} is an existing file") and err.count("\n") == 1, err
    missing = tmp_path / "train_data_dir"
    assert arm_probe.main(["--model", str(missing), "--photos", str(photos), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and err.count("\n") == 1, err


def test_the_probes_stderr_shows_a_byte_of_a_path_as_the_cli_does(tmp_path, capsys):
    """Under its flag renaming, zoodip's readable output (a path's non-UTF-8 byte shown as '\\xff') was not set on
    the real stderr: the byte came out as Python's '\\udcff', or failed where the stream is strict."""
    sys.path.insert(0, str(REPO / "android_harness"))
    import arm_probe

    afile = tmp_path / os.fsdecode(b"caf\xff")
    afile.write_text("")
    photos = REPO / "sdk" / "zoodip" / "data" / "example_concept"
    assert arm_probe.main(["--model", str(tmp_path / "model"), "--photos", str(photos), "--out", str(afile)]) == 2
    err = capsys.readouterr().err
    assert "caf\\xff is an existing file" in err and err.count("\n") == 1, err

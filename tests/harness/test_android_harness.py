"""android_harness/: the .ort conversion, the device runner (dry run and its on-device half), and the
app sketch's reading of the real CLI's progress stream and cancellation."""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
HARNESS = REPO / "android_harness"
KOTLIN = HARNESS / "app-sketch" / "src" / "main" / "kotlin" / "dev" / "zoodip" / "sketch" / "PersonalizationProcess.kt"
sys.path.insert(0, str(HARNESS))

import convert_to_ort  # noqa: E402

from zoodip.embeddings import load_embedding_file  # noqa: E402
from zoodip.model import GRAPHS, ExportedModel  # noqa: E402

TOKEN = "<striped-star>"


def sdk_env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO / "sdk"))


def cli_personalize(export, photos, out, *extra) -> list[str]:
    return [sys.executable, "-m", "zoodip.cli", "personalize", "--model", str(export), "--train_data_dir", str(photos),
            "--output_dir", str(out), "--placeholder_token", TOKEN, "--initializer_token", "star", "--threads", "1",
            "--no-progress", *map(str, extra)]


# --- .ort conversion ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ort_export(tiny_export, tmp_path_factory):
    out = tmp_path_factory.mktemp("ort") / "tiny_ort"
    report = convert_to_ort.convert_export(tiny_export, out, log=lambda message: None)
    return out, report


def test_ort_export_is_a_valid_export_with_int8_weights(ort_export, tiny_export):
    out, report = ort_export
    model = ExportedModel.load(out, verify_hashes=True)  # files table rewritten: sizes and hashes match
    import onnx

    for name in GRAPHS:
        graph = model.manifest["graphs"][name]
        assert graph["file"].endswith(".ort") and graph["external_data"] is None
        stats = report["graphs"][name]
        # Weights stay int8 with their DequantizeLinear nodes: nothing folded back to fp32, no activation quantization.
        source = onnx.load(str(tiny_export / f"{name}.onnx"))
        int8_source = sum(len(t.raw_data) or len(t.int32_data) for t in source.graph.initializer if t.data_type == onnx.TensorProto.INT8)
        assert stats["initializer_bytes"]["int8"] == int8_source
        assert stats["ops"]["DequantizeLinear"] == sum(n.op_type == "DequantizeLinear" for n in source.graph.node)
        assert not {"DynamicQuantizeLinear", "MatMulInteger", "ConvInteger", "QLinearConv", "QLinearMatMul",
                    "com.microsoft.DynamicQuantizeMatMul", "com.microsoft.MatMulIntegerToFloat"} & set(stats["ops"])
        assert stats["ort_bytes"] > 0
    ops_config = (out / "required_operators.config").read_text()
    assert "ai.onnx;" in ops_config and "DequantizeLinear" in ops_config
    assert str(out.parent) not in ops_config  # no absolute (staging) paths leak into the configs
    assert (out / "required_operators_and_types.config").is_file()
    assert model.manifest["mobile"]["format"] == "ort"


def test_ort_graphs_give_the_onnx_losses_and_finite_differences(ort_export):
    _, report = ort_export
    check = report["verification"]
    for name, item in check["graphs"].items():
        assert item["rel_diff"] < 1e-5, (name, item)
    losses = check["losses"]
    # Measured: bit-identical for the text encoder and UNet (the loss path), so finite differences agree exactly.
    assert losses["max_abs_loss_diff"] <= 1e-6 * max(abs(x) for x in losses["onnx"])
    assert losses["max_rel_fd_diff"] < 1e-3, losses


def test_personalization_on_the_ort_export_matches_the_onnx_one(ort_export, tiny_export, photos, tmp_path):
    out, _ = ort_export
    embeds, evals = {}, {}
    for key, export in (("onnx", tiny_export), ("ort", out)):
        run = subprocess.run(cli_personalize(export, photos, tmp_path / key, "--max_train_steps", 3, "--eval-every", 3,
                                             "--tau", 4), env=sdk_env(), capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        embeds[key] = load_embedding_file(tmp_path / key / "learned_embeds.safetensors")[1].astype(np.float64)
        evals[key] = [json.loads(line)["eval_loss"] for line in (tmp_path / key / "log.jsonl").read_text().splitlines()
                      if "eval_loss" in line]
    # Not bit-identical on x86-64: there the .onnx session adds the x86-only NCHWc layout transform to the
    # VAE encoder (the .ort file leaves it out, it must run on ARM), so the cached latents differ by ~1e-8
    # and the finite differences carry that into the trajectory. On ARM64 both formats are bit-identical
    # (android_harness/README.md). Measured here: 0.3% of the embedding's update after 3 steps.
    np.testing.assert_allclose(evals["ort"], evals["onnx"], rtol=1e-6)
    model = ExportedModel.load(tiny_export)
    v_init = np.asarray(model.token_embeddings[model.tokenizer.token_ids_for_word("star")[0]], np.float64)
    update = np.linalg.norm(embeds["onnx"][0] - v_init)
    assert np.linalg.norm(embeds["ort"] - embeds["onnx"]) <= 0.05 * update


def test_convert_errors_are_one_line(ort_export, tiny_export, tmp_path, capsys):
    out, _ = ort_export
    assert convert_to_ort.main([str(tiny_export), str(out)]) == 2
    assert convert_to_ort.main([str(tmp_path), str(tmp_path / "x")]) == 2
    assert convert_to_ort.main([str(out), str(tmp_path / "again")]) == 2  # already .ort
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 3 and all(line.startswith("error: ") for line in err), err
    assert "exists and is not empty" in err[0] and "manifest.json" in err[1] and "ORT graphs" in err[2]


def test_convert_replaces_an_earlier_export_only(tiny_export, tmp_path, capsys, monkeypatch):
    """--overwrite removed whatever OUT_DIR was: the folder holding EXPORT_DIR (the export with it, exit 0) or, given
    '', the current folder; OUT_DIR inside EXPORT_DIR was written into the export."""
    parent = tmp_path / "parent"
    shutil.copytree(tiny_export, parent / "export")
    (parent / "notes.txt").write_text("mine")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "keep.txt").write_text("mine")
    monkeypatch.chdir(mine)
    for out, needle in ((parent, "holds it"), ("", "OUT_DIR is empty"), (parent / "export" / "sub", "lies inside it"),
                        (mine, "not a zoodip export folder")):
        assert convert_to_ort.main([str(parent / "export"), str(out), "--overwrite", "--no-verify"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and needle in err and "\n" not in err, err
    assert (parent / "notes.txt").read_text() == "mine" and (mine / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in (parent / "export").iterdir()) == sorted(p.name for p in Path(tiny_export).iterdir())
    earlier = tmp_path / "earlier"
    for _ in range(2):  # the second replaces the first
        assert convert_to_ort.main([str(parent / "export"), str(earlier), "--overwrite", "--no-verify"]) == 0
    assert (earlier / "manifest.json").is_file() and not list(tmp_path.glob(".earlier*"))


# --- device runner ----------------------------------------------------------------------------------

def dry_run(*args, cwd) -> subprocess.CompletedProcess:
    # PATH without adb or ssh: a dry run must need neither.
    return subprocess.run(["bash", str(HARNESS / "run_on_device.sh"), "--dry-run", *map(str, args)], cwd=cwd,
                          env=dict(os.environ, PATH="/usr/bin:/bin"), capture_output=True, text=True, timeout=60)


def test_run_on_device_dry_run_adb_prints_every_command(tiny_export, photos, tmp_path):
    result = dry_run("--adb", "--serial", "emulator-5554", "--model", tiny_export, "--photos", photos, "--steps", 7,
                     "--run", "dog1", "--", "--placeholder_token", "<my-dog>", "--initializer_token", "dog", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    commands = [line[2:] for line in lines if line.startswith("+ ")]
    text = "\n".join(commands)
    assert "adb -s emulator-5554 get-state" in text
    assert "adb -s emulator-5554 forward tcp:8022 tcp:8022" in text
    assert "ssh -p 8022" in text and "127.0.0.1" in text
    assert f"tar -C {REPO / 'sdk'} --exclude=__pycache__ -cf - zoodip" in text
    assert "device_run.py" in text and "nohup" in text
    assert lines[-1] == "(dry run: nothing was executed)"
    assert not (tmp_path / "device_out").exists()  # nothing ran

    # The personalize command line that reaches the device, unquoted as the remote shell will.
    run_line = next(c for c in commands if "device_run.py --summary" in c)
    remote = shlex.split(run_line.removesuffix(" || true"))[-1]
    argv = shlex.split(remote.split(" -- ", 1)[1].split(" > ", 1)[0])
    assert argv[:1] == ["personalize"]
    assert argv[argv.index("--max_train_steps") + 1] == "7"
    assert argv[argv.index("--placeholder_token") + 1] == "<my-dog>"
    assert argv[argv.index("--output_dir") + 1] == "zoodip-run/runs/dog1"
    assert argv[argv.index("--model") + 1] == f"zoodip-run/models/{tiny_export.name}"
    # It pulls back the embedding, the log and the memory/timing summary.
    pull = next(c for c in commands if "learned_embeds.safetensors" in c and "tar -C" in c.split("|")[-1])
    assert "log.jsonl" in pull and "run.json" in pull and "device_out/dog1" in pull


def test_run_on_device_dry_run_ssh_setup_and_resume(tiny_export, photos, tmp_path):
    result = dry_run("--ssh", "me@arm-box", "--port", 2222, "--setup", "venv", "--resume", "--model", tiny_export,
                     "--photos", photos, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "adb" not in result.stdout
    assert "ssh -p 2222" in result.stdout and "me@arm-box" in result.stdout
    assert "python3 -m venv zoodip-run/venv" in result.stdout and "pip install -q numpy onnxruntime pillow tqdm" in result.stdout
    assert "zoodip-run/venv/bin/python zoodip-run/device_run.py" in result.stdout
    assert "--resume" in result.stdout


def test_run_on_device_quotes_the_device_side_names(tiny_export, photos, tmp_path):
    """A model folder named 'my model' ran 'rm -rf zoodip-run/models/my model' on the device (its ~/model gone),
    --remote-dir 'zoo run' sent every step to other folders, and a --python path with a space or a ';' was split by
    the device's shell (here it ran 'touch pwned'). Run for real through an ssh that runs the device's commands in a
    folder of this machine."""
    home, bin_dir = tmp_path / "device home", tmp_path / "bin"
    home.mkdir()
    python = home / "my env" / "python;touch pwned"  # one program path, as --python takes it
    python.parent.mkdir()
    python.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} \"$@\"\n")
    python.chmod(0o755)
    (home / "model").write_text("the device's own file")
    bin_dir.mkdir()
    (bin_dir / "ssh").write_text(f"#!/bin/sh\nwhile [ $# -gt 1 ]; do shift; done\ncd {shlex.quote(str(home))} && exec sh -c \"$1\"\n")
    (bin_dir / "ssh").chmod(0o755)
    model = tmp_path / "host side" / "-my model"  # (a leading '-' was an option to the host's tar)
    shutil.copytree(tiny_export, model)
    result = subprocess.run(["bash", str(HARNESS / "run_on_device.sh"), "--ssh", "dev@box", "--setup", "none",
                             "--python", str(python), "--remote-dir", "zoo run", "--model", str(model),
                             "--photos", str(photos), "--steps", "2", "--out", str(tmp_path / "back"), "--",
                             "--placeholder_token", TOKEN, "--initializer_token", "star", "--tau", "2",
                             "--eval-every", "2"],
                            env=dict(os.environ, PATH=f"{bin_dir}:/usr/bin:/bin"), capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr
    assert (home / "model").read_text() == "the device's own file"
    assert sorted(p.name for p in home.iterdir()) == ["model", "my env", "zoo run"]  # no 'pwned'
    assert not (home / "zoo run" / "pwned").exists()
    assert (home / "zoo run" / "models" / "-my model" / "manifest.json").is_file()
    assert (tmp_path / "back" / "exit_code").read_text().strip() == "0"
    assert (tmp_path / "back" / "learned_embeds.safetensors").is_file()


@pytest.mark.parametrize("args,needle", [
    (["--adb", "--steps", "0", "--model", "m", "--photos", "."], "--steps must be a whole number from 1"),
    (["--adb", "--port", "99999", "--model", "m", "--photos", "."], "--port must be a port number"),
    (["--adb", "--remote-dir", "-x", "--model", "m", "--photos", "."], "--remote-dir must name a folder"),
    (["--adb", "--remote-dir", "~/zoo", "--model", "m", "--photos", "."], "relative to the device's home already"),
    (["--adb", "--photos", "."], "--model"),
    (["--model", ".", "--photos", "."], "choose --adb"),
    (["--adb", "--model", "/nonexistent", "--photos", "."], "manifest.json"),
    (["--adb", "--bogus"], "unknown option"),
])
def test_run_on_device_user_errors(args, needle, tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "manifest.json").write_text("{}")  # an export as far as the script looks
    result = dry_run(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and needle in result.stderr and len(result.stderr.splitlines()) == 1


def test_run_on_device_help_is_the_header_only():
    """--help printed a fixed line range, which had come to hold the script's first lines of code."""
    result = subprocess.run(["bash", str(HARNESS / "run_on_device.sh"), "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith("Run a zoodip personalization")
    assert "--python PATH" in result.stdout and "set -e" not in result.stdout and "HERE=" not in result.stdout


def test_device_run_records_memory_and_step_times(tiny_export, photos, tmp_path):
    out = tmp_path / "run"
    result = subprocess.run([sys.executable, str(HARNESS / "device_run.py"), "--summary", str(out / "run.json"), "--",
                             *cli_personalize(tiny_export, photos, out, "--max_train_steps", 4, "--eval-every", 4,
                                              "--tau", 4)[3:]], env=sdk_env(), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "run.json").read_text())
    assert summary["finished"] is True and summary["exit_code"] == 0
    assert summary["peak_rss_mb"] > 10  # VmHWM of the process
    assert summary["steps_timed"] == 3 and summary["step_s_median"] > 0  # step 4 holds an evaluation
    events = [json.loads(line) for line in (out / "progress.jsonl").read_text().splitlines()]
    assert events[-1]["event"] == "done"


@pytest.mark.parametrize("summary_under_a_file,progress", [(False, ["--progress-jsonl"]), (False, ["--progress-jsonl", "-"]),
                                                       (False, ["--progress_jsonl=-"]), (True, [])])
def test_device_run_refuses_in_one_line_what_it_could_not_record(summary_under_a_file, progress, tmp_path):
    """'--progress-jsonl -' ran and recorded no step times (steps_timed 0), a bare --progress-jsonl was an IndexError
    and a --summary under a file a FileExistsError."""
    (tmp_path / "afile").write_text("x")
    summary = tmp_path / ("afile" if summary_under_a_file else "run") / "run.json"
    result = subprocess.run([sys.executable, str(HARNESS / "device_run.py"), "--summary", str(summary), "--",
                             "personalize", *progress], env=sdk_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert not (tmp_path / "run").exists()


def test_device_run_refuses_a_summary_that_is_a_folder_before_the_run(tmp_path):
    """--summary FOLDER ran the whole command, then ended in an IsADirectoryError traceback, its record unwritten."""
    result = subprocess.run([sys.executable, str(HARNESS / "device_run.py"), "--summary", str(tmp_path), "--", "info",
                             "--help"], env=sdk_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.startswith("error: --summary ") and result.stderr.count("\n") == 1, \
        result.stderr
    assert result.stdout == "" and list(tmp_path.iterdir()) == []


def test_device_run_reads_the_progress_file_however_its_flag_is_spelt():
    import device_run

    assert device_run.progress_file(["--progress_jsonl=a.jsonl", "--x"]) == "a.jsonl"
    assert device_run.progress_file(["--progress-jsonl", "a", "--progress-jsonl", "b"]) == "b"
    assert device_run.progress_file(["--resume"]) is None


# --- the app sketch against the real CLI --------------------------------------------------------------

def kotlin_reads() -> dict[str, str]:
    """JSON field -> the accessor the Kotlin sketch reads it with."""
    source = KOTLIN.read_text()
    body = source[source.index("fun parseProgressLine"):]
    body = body[:body.index("\n}\n")]
    reads = dict((field, method) for method, field in
                 re.findall(r'obj\.(getString|getInt|getLong|getDouble|optString|optDoubleOrNull|optIntOrNull|optStringOrNull)\("([a-z_]+)"\)', body))
    assert reads, "no field reads found in the Kotlin sketch"
    return reads


KOTLIN_TYPES = {  # accessor -> Python types that JSON value may have for it to succeed
    "getString": (str,), "optString": (str,), "getInt": (int,), "getLong": (int,), "getDouble": (int, float),
    "optDoubleOrNull": (int, float, type(None)), "optIntOrNull": (int, type(None)),
    "optStringOrNull": (str, type(None)),
}


def test_kotlin_sketch_reads_the_fields_the_cli_streams(tiny_export, photos, tmp_path):
    result = subprocess.run(cli_personalize(tiny_export, photos, tmp_path / "run", "--max_train_steps", 4, "--eval-every", 2,
                                            "--tau", 2, "--progress-jsonl", "-"),
                            env=sdk_env(), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    events = [json.loads(line) for line in lines]  # stdout carries only JSON lines
    assert {e["type"] for e in events} == {"progress"} and events[-1]["event"] == "done"
    reads = kotlin_reads()
    streamed = set().union(*(e.keys() for e in events))
    assert set(reads) == streamed, f"Kotlin reads {sorted(reads)}, the CLI streams {sorted(streamed)}"
    seen_null, seen_value = set(), set()
    for event in events:
        for field, method in reads.items():
            assert field in event, (field, event)
            value = event[field]
            assert isinstance(value, KOTLIN_TYPES[method]) and not isinstance(value, bool), (field, method, value)
            (seen_null if value is None else seen_value).add(field)
    # The nullable accessors really meet both cases in this stream (eta_s is null only before a step).
    assert {"eval_loss", "kept_dims"} <= seen_null and {"loss", "eval_loss", "kept_dims", "eta_s"} <= seen_value
    events_named = set(re.findall(r'"(setup|step|eval|validation|checkpoint|done|cancelled|early-stopped)"', KOTLIN.read_text()))
    assert {e["event"] for e in events} <= events_named
    # The README's description of the stream, which an app developer reads first, names each event too
    # (it once named "step" alone: a step that ran an evaluation arrives as "eval", and the end as "done").
    readme_named = set(re.findall(r'"event": "([a-z-]+)"', (REPO / "README.md").read_text()))
    assert {e["event"] for e in events} <= readme_named, sorted({e["event"] for e in events} - readme_named)


def test_cancel_like_the_sketch_sigint_checkpoints_exits_130_and_resume_finishes(tiny_export, photos, tmp_path):
    out = tmp_path / "run"
    args = cli_personalize(tiny_export, photos, out, "--max_train_steps", 100000, "--eval-every", 0,
                           "--checkpointing_steps", 3, "--tau", 4, "--progress-jsonl", "-")
    # As the Kotlin sketch does: the shell prints its pid and execs Python, which keeps that pid.
    # SIGINT as the app delivers it: a test run started in the background (`make test &`) inherits SIGINT ignored,
    # Python then installs no KeyboardInterrupt handler in the child, and the run would go on to its 100000 steps.
    proc = subprocess.Popen(["/bin/sh", "-c", 'echo $$; exec "$0" "$@"', *args], env=sdk_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    watchdog = threading.Timer(600, proc.kill)  # whatever goes wrong, the reads below end
    watchdog.start()
    try:
        pid = int(proc.stdout.readline())
        assert pid == proc.pid
        steps_seen = 0
        while steps_seen < 8:  # 8 step events (setup phases come first)
            event = json.loads(proc.stdout.readline())
            assert event["type"] == "progress"
            steps_seen += event["event"] != "setup"
        os.kill(pid, signal.SIGINT)
        tail = [json.loads(line) for line in proc.stdout.read().splitlines() if line.startswith("{")]
        code = proc.wait(timeout=60)
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
    assert code == 130
    assert "resume with --resume" in proc.stderr.read()
    with np.load(out / "checkpoint.npz") as state:
        step = int(state["step"])
    # The signal stops the run after the current step and checkpoints it there (not at the last
    # periodic checkpoint), and the stream ends with a "cancelled" event at that step.
    assert step >= 8
    assert tail and tail[-1]["event"] == "cancelled" and tail[-1]["step"] == step
    assert not (out / "learned_embeds.safetensors").exists()
    resumed = subprocess.run(cli_personalize(tiny_export, photos, out, "--max_train_steps", step + 2, "--eval-every", 0,
                                             "--checkpointing_steps", 3, "--tau", 4, "--resume"),
                             env=sdk_env(), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert (out / "learned_embeds.safetensors").is_file()

"""What a run may write over, and how it ends when its reader or terminal goes: the fourth hostile-input sweep's
findings (a progress log appended to a photo or the model's manifest, a run folder among the photos, --out over the
start image, a partial set of images, a progress reader that left, a closed terminal)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli_helpers import assert_one_line_error, held_import, personalize_args, run_cli, signal_while_importing


def test_progress_jsonl_is_never_appended_to_a_file_that_is_not_a_progress_log(tiny_export, photos, tmp_path, capsys):
    photo = tmp_path / "victim.png"
    Image.new("RGB", (8, 8)).save(photo)
    before = photo.read_bytes()
    out = tmp_path / "run"
    for target, needle in ((photo, "exists and is not a progress log"),
                           (tiny_export / "manifest.json", "is in the model folder"),
                           (out / "config.json", "is a file of the run"),
                           (out / "log.jsonl", "is a file of the run"),
                           (out / "learned_embeds-steps-2.safetensors", "is a file of the run"),
                           (out / "validation-steps-2.png", "is a file of the run")):
        code, _, err = run_cli(personalize_args(tiny_export, photos, out, "--progress-jsonl", target), capsys)
        assert_one_line_error(code, err, needle)
    assert photo.read_bytes() == before and not out.exists()
    inside = out / "progress.jsonl"  # its own .jsonl in the run folder, which the run has yet to make
    assert run_cli(personalize_args(tiny_export, photos, out, "--progress-jsonl", inside), capsys)[0] == 0
    assert json.loads(inside.read_text().splitlines()[-1])["type"] == "progress"
    log = tmp_path / "progress.jsonl"  # a progress log of an earlier run is appended to
    assert run_cli(personalize_args(tiny_export, photos, tmp_path / "first", "--progress-jsonl", log), capsys)[0] == 0
    lines = log.read_text().splitlines()
    assert run_cli(personalize_args(tiny_export, photos, tmp_path / "again", "--progress-jsonl", log), capsys)[0] == 0
    assert log.read_text().splitlines()[: len(lines)] == lines and len(log.read_text().splitlines()) > len(lines)


def test_a_run_refused_for_its_model_leaves_no_folder_made_for_its_progress_log(photos, tmp_path, capsys):
    """--progress-jsonl OUT/progress.jsonl with a missing or damaged --model left OUT created and empty: the log's
    folder was made at the first (setup) event, before the model was loaded, and only the file was removed."""
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "manifest.json").write_text("{")
    for model, needle in ((tmp_path / "missing", "does not exist"), (damaged, "is not valid JSON")):
        out = tmp_path / "out"
        code, _, err = run_cli(personalize_args(model, photos, out / "run", "--progress-jsonl",
                                                out / "logs" / "progress.jsonl"), capsys)
        assert_one_line_error(code, err, needle)
        assert not out.exists()


def test_a_progress_log_on_a_full_disk_stops_the_run_with_its_steps_saved_and_no_half_line(
        tiny_export, photos, tmp_path, capsys, monkeypatch):
    """The log's disk filled up mid-run: the run died with its steps since the last checkpoint lost (the run folder's
    disk had room), and the log kept half a line, after which a resumed run appended its own."""
    import errno
    import os

    from zoodip.progress_log import LazyJsonlLog

    append, calls = LazyJsonlLog._append, []

    class FillingUp:  # the log file, on a disk that takes half of the 8th line and then nothing
        def __init__(self, file):
            self.file = file

        def write(self, data):
            if len(calls) < 8:
                return self.file.write(data)
            if len(calls) == 8:
                return self.file.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __getattr__(self, name):
            return getattr(self.file, name)

    def fills_up(self, data):
        calls.append(data)
        self.file = self.file if isinstance(self.file, FillingUp) else FillingUp(self.file)
        return append(self, data)

    monkeypatch.setattr(LazyJsonlLog, "_append", fills_up)
    log, out = tmp_path / "progress.jsonl", tmp_path / "run"
    code, _, err = run_cli(personalize_args(tiny_export, photos, out, "--max_train_steps", "40", "--eval-every", "0",
                                            "--checkpointing_steps", "1000", "--progress-jsonl", log), capsys)
    assert_one_line_error(code, err, "cannot write --progress-jsonl")
    assert "(the disk is full): free space and resume with --resume (the run stopped at step" in err
    assert 1 <= int(np.load(out / "checkpoint.npz")["step"]) < 40
    assert all(json.loads(line)["type"] == "progress" for line in log.read_text().splitlines())  # whole lines only
    monkeypatch.setattr(LazyJsonlLog, "_append", append)
    assert run_cli(personalize_args(tiny_export, photos, out, "--max_train_steps", "40", "--eval-every", "0",
                                    "--progress-jsonl", log, "--resume"), capsys)[0] == 0
    assert json.loads(log.read_text().splitlines()[-1])["event"] == "done"


def test_a_named_pipe_whose_reader_leaves_stops_the_run_and_keeps_its_output(tiny_export, photos, tmp_path):
    """--progress-jsonl FIFO: its reader leaving was taken for stdout's, whose output then went to /dev/null (the
    summary lost) with nothing said of the pipe."""
    import os
    import threading

    fifo, out = tmp_path / "progress.fifo", tmp_path / "run"
    os.mkfifo(fifo)
    reader = threading.Thread(target=lambda: open(fifo, "rb").close())  # opens it, then leaves at once
    reader.start()
    proc = _cli(*personalize_args(tiny_export, photos, out, "--max_train_steps", "2000", "--eval-every", "0",
                                  "--progress-jsonl", fifo))
    printed, err = proc.communicate(timeout=120)
    reader.join()
    assert proc.returncode == 2, err
    assert err.strip().splitlines()[-1].startswith(f"error: cannot write --progress-jsonl {fifo} (its reader left)")
    assert "cancelled:" in printed and "resume with --resume (the run stopped at step" in err


def test_the_run_folder_is_refused_among_the_photos_or_in_the_model(tiny_export, photos, tmp_path, capsys):
    import shutil

    photos = shutil.copytree(photos, tmp_path / "photos")  # were it accepted, the run would land among the photos
    for out, needle in ((photos, "lies in --train_data_dir"), (photos / "run", "lies in --train_data_dir"),
                        (tiny_export / "run", "lies in --model")):
        code, _, err = run_cli(personalize_args(tiny_export, photos, out), capsys)
        assert_one_line_error(code, err, needle)
    assert not (photos / "run").exists() and not (tiny_export / "run").exists()


def test_generate_never_writes_over_its_start_image_or_mask(tiny_export, tmp_path, capsys):
    start = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(start)
    before = start.read_bytes()
    common = ["generate", "--model", tiny_export, "--prompt", "a star", "--steps", "2"]
    for extra in (["--image", start, "--out", start], ["--image", start, "--out", tmp_path / "." / "photo.png"],
                  ["--image", tmp_path / "other.png", "--mask", start, "--out", start]):
        Image.new("RGB", (64, 64)).save(tmp_path / "other.png")
        assert_one_line_error(*run_cli(common + extra, capsys)[::2], "--out would write over")
    assert start.read_bytes() == before


def test_a_failed_write_leaves_the_files_that_were_there(tiny_export, tmp_path, capsys, monkeypatch):
    """A full disk at the third of three images: no new image is left, and the older files of those names are kept
    (taking back the new ones had deleted the old ones they replaced)."""
    from PIL import Image as PILImage

    (tmp_path / "grid-1.png").write_bytes(b"an older image")
    real_save, calls = PILImage.Image.save, []

    def save_then_fail(self, fp, *args, **kwargs):
        calls.append(fp)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(PILImage.Image, "save", save_then_fail)
    code, _, err = run_cli(["generate", "--model", tiny_export, "--prompt", "a star", "--steps", "2",
                            "--num-images", "3", "--out", tmp_path / "grid.png"], capsys)
    assert_one_line_error(code, err, "(the disk is full): free space")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid-1.png"]
    assert (tmp_path / "grid-1.png").read_bytes() == b"an older image"


def _cli(*args) -> subprocess.Popen:
    # Ctrl-C as a terminal delivers it: a test run started in the background (`make test &`) inherits SIGINT ignored,
    # and Python then installs no KeyboardInterrupt handler in the child.
    return subprocess.Popen([sys.executable, "-m", "zoodip.cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_for_steps(log, count: int) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (log.is_file() and log.read_text().count("\n") >= count):
        time.sleep(0.02)


def test_a_closed_terminal_saves_the_run_as_sigterm_does(tiny_export, photos, tmp_path):
    out = tmp_path / "hup"
    proc = _cli(*personalize_args(tiny_export, photos, out, "--max_train_steps", "100000", "--eval-every", "0",
                                  "--checkpointing_steps", "1000"))
    _wait_for_steps(out / "log.jsonl", 5)
    proc.send_signal(signal.SIGHUP)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGHUP, err
    assert "resume with --resume" in err and "Traceback" not in err
    assert int(np.load(out / "checkpoint.npz")["step"]) >= 5


def test_a_run_started_with_nohup_keeps_running_through_a_hangup(tiny_export, photos, tmp_path):
    """nohup ignores SIGHUP for the command, which took the signal over and stopped at the user's logout."""
    out = tmp_path / "nohup"
    proc = subprocess.Popen([sys.executable, "-m", "zoodip.cli", *map(str, personalize_args(
        tiny_export, photos, out, "--max_train_steps", "40", "--eval-every", "0"))], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))
    _wait_for_steps(out / "log.jsonl", 5)
    proc.send_signal(signal.SIGHUP)
    printed, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "done: 40 steps" in printed + err, err


def test_a_progress_reader_that_leaves_stops_the_run_with_its_steps_saved(tiny_export, photos, tmp_path):
    """An app that stops reading --progress-jsonl - (or `| head`): the run stops after the step, checkpointed, as the
    pipe's signal would end a command (141), not killed with up to --checkpointing_steps of work lost."""
    out = tmp_path / "pipe"
    proc = _cli(*personalize_args(tiny_export, photos, out, "--max_train_steps", "100000", "--eval-every", "0",
                                  "--checkpointing_steps", "1000", "--progress-jsonl", "-"))
    lines = [json.loads(proc.stdout.readline()) for _ in range(8)]
    assert all(line["type"] == "progress" for line in lines)
    proc.stdout.close()  # the reader leaves
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 141, err
    assert "Traceback" not in err and "resume with --resume" in err
    assert int(np.load(out / "checkpoint.npz")["step"]) >= 1


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_generate_says_no_image_was_written(tiny_export, tmp_path, sig):
    out = tmp_path / "g.png"
    proc = _cli("generate", "--model", tiny_export, "--prompt", "a star", "--steps", "1000", "--num-images", "4",
                "--out", out)
    time.sleep(4)  # past the imports and the model's loading: inside sampling
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig and err.strip() == "interrupted: no image was written", err  # (143: SIGTERM)
    assert list(tmp_path.iterdir()) == []


def test_a_path_the_terminal_cannot_show_is_escaped_not_a_traceback(tiny_export, tmp_path):
    import os

    out = tmp_path / "ünï.png"
    proc = subprocess.run([sys.executable, "-m", "zoodip.cli", "generate", "--model", str(tiny_export), "--prompt",
                           "a star", "--steps", "2", "--out", str(out)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONIOENCODING": "ascii"})
    assert proc.returncode == 0 and "\\xfcn\\xef.png" in proc.stdout and proc.stderr == "", proc.stderr
    assert out.is_file()


def _older_manifest(export: Path, dest: Path, *drop: str) -> Path:
    """A copy of ``export`` whose manifest lacks the ``model`` fields ``drop`` (an export made before them)."""
    import shutil

    older = shutil.copytree(export, dest)
    manifest = json.loads((older / "manifest.json").read_text())
    for key in drop:
        del manifest["model"][key]
    (older / "manifest.json").write_text(json.dumps(manifest))
    return older


def test_every_multiple_of_8_runs_and_an_older_unet_says_its_sides_in_one_line(tiny_export, doubling_unet_export,
                                                                                tmp_path, capsys):
    """136 px on the tiny UNet (one halving; 17 latents): today's export runs it as diffusers does. An export whose
    UNet doubles at each upsampling (onnxruntime's Concat failed there, a traceback) records its halvings, so the
    size is refused before any work; one made before the halvings were recorded says it in one line when it fails."""
    out = tmp_path / "odd.png"
    args = ["generate", "--prompt", "a star", "--steps", "2", "--width", "136", "--out", out]
    code, _, err = run_cli(args + ["--model", tiny_export], capsys)
    assert code == 0 and Image.open(out).size == (136, 128), err
    out.unlink()
    code, _, err = run_cli(args + ["--model", doubling_unet_export], capsys)
    # The flag, not the argument; and that the limit is this export's.
    assert_one_line_error(code, err, "--width must be a positive multiple of 16 on this export, got 136: its UNet was "
                                     "exported before it ran any multiple of 8 (export the model again), or use e.g.")
    older = _older_manifest(doubling_unet_export, tmp_path / "older", "unet_halvings", "unet_upsampling_follows_skips")
    code, _, err = run_cli(args + ["--model", older], capsys)
    assert_one_line_error(code, err, "the UNet cannot run at 136x128 px")
    assert not out.exists()
    assert run_cli(["generate", "--model", doubling_unet_export, "--prompt", "a star", "--steps", "2", "--width",
                    "144", "--out", out], capsys)[0] == 0


def test_sides_zoodip_derives_are_sizes_the_unet_runs_at(tiny_export, doubling_unet_export, tmp_path, capsys):
    """A 10:7 photo: rounded to 8 px where the UNet follows its skip connections, to its halvings' 16 px where it
    doubles, to SD's 64 px on an export that records neither (512x336 failed in SD1.5's UNet). `info` says the rule."""
    photo = tmp_path / "wide.png"
    Image.new("RGB", (300, 210), (120, 30, 30)).save(photo)  # 128 x 89.6 px at the native 128
    older = _older_manifest(doubling_unet_export, tmp_path / "older", "unet_halvings", "unet_upsampling_follows_skips")
    for model, size in ((tiny_export, (128, 88)), (doubling_unet_export, (128, 80)), (older, (128, 64))):
        out = tmp_path / f"{model.name}.png"
        code, _, err = run_cli(["generate", "--model", model, "--prompt", "a star", "--steps", "2", "--image", photo,
                                "--out", out], capsys)
        assert code == 0 and Image.open(out).size == size, (model.name, Image.open(out).size, err)
    for model, words in ((tiny_export, "image sides: multiples of 8 px\n"),
                         (doubling_unet_export, "image sides: multiples of 16 px (its UNet was exported before"),
                         (older, "image sides: multiples of 64 px on SD (not recorded by this export")):
        code, text, _ = run_cli(["info", model], capsys)
        assert code == 0 and words in text, text


# The `zoodip` command as its console script and `python -m zoodip` start it, with the import of a module held (it
# says so on stdout) until the test's signal lands: the moment is certain, however slow the machine. zoodip.cli: during
# the CLI's imports; zoodip.describe: during `zoodip info`'s work (imported there).
STARTS = {"console script": "from zoodip.entry import main\nsys.exit(main())\n",
          "python -m zoodip": "import runpy\nrunpy.run_module('zoodip', run_name='__main__', alter_sys=True)\n"}


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("start", list(STARTS))
@pytest.mark.parametrize("held", ["zoodip.cli", "zoodip.describe"])
def test_a_ctrl_c_or_sigterm_in_the_cli_s_imports_or_in_info_is_one_line(tmp_path, held, start, sig):
    """The `zoodip` command's entry point: a Ctrl-C during the CLI's imports (NumPy, onnxruntime: a moment on a slow
    machine) ends it with one line and status 130, as one during the work does (it was a traceback of the imports);
    a SIGTERM there, or in a command that takes no SIGTERM of its own (info, verify), ended it without a word (-15),
    now the same line and 143."""
    import tomllib

    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    scripts = tomllib.loads(pyproject.read_text())["project"]["scripts"]
    assert scripts["zoodip"] == "zoodip.entry:main"
    status, printed, err = signal_while_importing(held_import(held) + STARTS[start], ["info", "x"], sig, tmp_path)
    assert (status, err, printed) == (128 + sig, "interrupted\n", "")


def test_python_dash_m_zoodip_is_the_command(tmp_path):
    """`python -m zoodip` (where the `zoodip` script is not on PATH: a venv not activated, an embedded Python) runs
    the same command, its usage naming `zoodip`, and a bad flag is the command's one line, exit 2."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.run([sys.executable, "-m", "zoodip", "--version"], capture_output=True, text=True, cwd=tmp_path,
                          env=env)
    assert (proc.returncode, proc.stdout.split()[0]) == (0, "zoodip"), proc.stderr
    proc = subprocess.run([sys.executable, "-m", "zoodip", "generate", "--no-such-flag"], capture_output=True,
                          text=True, cwd=tmp_path, env=env)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr

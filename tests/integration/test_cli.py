"""The CLI: every bad input is one line on stderr, exit status 2, no traceback, nothing half-written."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest


from cli_helpers import TOKEN, assert_one_line_error, personalize_args, run_cli


def test_personalize_then_generate_with_the_learned_token(tiny_export, photos, tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, _ = run_cli(personalize_args(tiny_export, photos, out), capsys)
    assert code == 0 and "embedding:" in stdout
    image = tmp_path / "gen.png"
    code, stdout, err = run_cli(["generate", "--model", tiny_export, "--prompt", f"a photo of {TOKEN}",
                                 "--embedding", out / "learned_embeds.safetensors", "--steps", "3",
                                 "--out", image, "--threads", "1"], capsys)
    assert code == 0, err
    from PIL import Image

    assert Image.open(image).size == (128, 128)


def test_generate_shows_its_sampling_steps_on_a_terminal_only(tiny_export, tmp_path, capsys, monkeypatch):
    args = ["generate", "--model", tiny_export, "--prompt", "a star", "--steps", "3", "--out", tmp_path / "g.png",
            "--threads", "1"]
    code, _, err = run_cli(args, capsys)
    assert code == 0 and err == "", err  # a log or a pipe: nothing but the 'wrote' line on stdout
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    code, _, err = run_cli(args, capsys)
    assert code == 0 and "sampling:" in err and "1/3" in err, err  # (tqdm redraws at most every 0.1 s)


def test_progress_jsonl_stream(tiny_export, photos, tmp_path, capsys):
    stream = tmp_path / "progress.jsonl"
    code, _, err = run_cli(personalize_args(tiny_export, photos, tmp_path / "p", "--progress-jsonl", stream), capsys)
    assert code == 0, err
    events = [json.loads(line) for line in stream.read_text().splitlines()]
    assert events[-1]["event"] == "done" and events[-1]["step"] == 3
    assert {"type", "event", "step", "total", "loss", "eval_loss", "forwards", "eta_s"} <= set(events[0])


def test_a_progress_file_another_run_writes_is_refused(tiny_export, photos, tmp_path, capsys):
    """Two runs given one --progress-jsonl interleaved their lines, which name no run, beyond telling apart."""
    fcntl = pytest.importorskip("fcntl")
    stream = tmp_path / "progress.jsonl"
    with open(stream, "ab") as other:  # another run, writing it
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        code, _, err = run_cli(personalize_args(tiny_export, photos, tmp_path / "p", "--progress-jsonl", stream), capsys)
        assert_one_line_error(code, err, f"--progress-jsonl {stream} is being written by another run: give each run "
                                         "its own file")
        assert stream.read_bytes() == b""
    code, _, err = run_cli(personalize_args(tiny_export, photos, tmp_path / "p", "--progress-jsonl", stream), capsys)
    assert code == 0, err


@pytest.fixture()
def broken_exports(tiny_export, tmp_path):
    """Copies of the tiny export, each damaged in one way."""
    def make(kind):
        folder = tmp_path / f"export_{kind}"
        shutil.copytree(tiny_export, folder)
        manifest_path = folder / "manifest.json"
        manifest = json.loads(manifest_path.read_text())
        if kind == "partial":
            (folder / manifest["graphs"]["unet"]["file"]).unlink()
        elif kind == "no_manifest":
            manifest_path.unlink()
        elif kind == "diffusers_folder":  # the model folder diffusers' scripts take, passed as the export
            manifest_path.unlink()
            (folder / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
        elif kind == "mismatch":
            manifest["graphs"]["unet"]["inputs"] = {"latents": {"shape": [1], "dtype": "float32"}}
            manifest_path.write_text(json.dumps(manifest))
        elif kind == "garbage_manifest":
            manifest_path.write_text("{ not json")
        return folder
    return make


@pytest.mark.parametrize("kind,needle", [
    ("partial", "is missing"), ("no_manifest", "no manifest.json"),
    ("diffusers_folder", "is a diffusers folder, not a zoodip export: convert it once with 'zoodip export"),
    ("mismatch", "manifest says"), ("garbage_manifest", "not valid JSON"),
])
def test_damaged_export_folders(broken_exports, photos, tmp_path, capsys, kind, needle):
    out = tmp_path / "out"
    code, _, err = run_cli(personalize_args(broken_exports(kind), photos, out), capsys)
    assert_one_line_error(code, err, needle)
    assert not (out / "learned_embeds.safetensors").exists()


@pytest.mark.parametrize("flags,needle", [
    (["--n", "0"], "--n must be"),
    (["--mu", "-1"], "--mu must be"),
    (["--mu", "nan"], "--mu must be"),
    (["--mu", "1e30"], "--mu 1e+30 is too large"),  # refused before its perturbations overflow float32
    (["--tau", "1"], "--tau must be"),
    (["--nu", "2"], "--nu must be"),
    (["--vocabulary-subspace", "0"], "--vocabulary-subspace must be a variance fraction"),
    (["--optimizer", "sgd", "--adam-state-dtype", "float16"], "--adam-state-dtype applies to --optimizer adam only"),
    (["--clip-estimate", "1"], "--clip-estimate must be a finite number > 1"),
    (["--clip-estimate", "inf"], "--clip-estimate must be"),
    (["--clip-estimate", "2", "--adam-state-dtype", "float16"], "--clip-estimate clips against ZO-Adam's float64"),
    (["--clip-estimate", "2", "--optimizer", "sgd"], "--clip-estimate clips against ZO-Adam's float64"),
    (["--directions", "orthogonal", "--n", "32"], "orthogonal directions: --n 32 is more than the"),
    (["--directions", "sideways"], "--directions"),
    (["--orthogonal-n", "3"], "--orthogonal-n sets the directions of the steps after --orthogonal-after"),
    (["--orthogonal-after", "-5"], "--orthogonal-after (forwards) must be an integer >= 0"),
    (["--orthogonal-after", "90", "--directions", "orthogonal"], "drop one of the two"),
    (["--orthogonal-after", "90", "--orthogonal-n", "33"], "--orthogonal-n 33 is more than the"),
    (["--t-range", "900", "500"], "900"),
    (["--t-range", "0", "5000"], "5000"),
    (["--resolution", "100"], "multiple of 8"),
    (["--learning_rate", "0"], "--learning_rate"),
    (["--initializer_token", "zqxjvkwpfhgtb"], "single token"),
    (["--placeholder_token", "star"], "star"),
    (["--resume"], "nothing to resume"),
    (["--resume_from_checkpoint", "latest"], "nothing to resume"),
    (["--resume_from_checkpoint", "checkpoint-500"], "--resume_from_checkpoint takes 'latest'"),
    (["--save_steps", "-1"], "--save_steps must be"),
    (["--lr_warmup_steps", "-2"], "--lr_warmup_steps must be"),
    (["--lr_scheduler", "polynomial"], "--lr_scheduler"),
])
def test_bad_flags(tiny_export, photos, tmp_path, capsys, flags, needle):
    out = tmp_path / "out"
    args = personalize_args(tiny_export, photos, out)
    code, _, err = run_cli(args + flags, capsys)
    assert_one_line_error(code, err, needle)
    assert not (out / "learned_embeds.safetensors").exists()


def test_bad_photo_folders(tiny_export, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run_cli(personalize_args(tiny_export, empty, tmp_path / "o"), capsys)
    assert_one_line_error(code, err, "no images")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.jpg").write_bytes(b"not an image")
    code, _, err = run_cli(personalize_args(tiny_export, broken, tmp_path / "o2"), capsys)
    assert_one_line_error(code, err, "a.jpg")


def test_missing_export_folder_and_generate_errors(tmp_path, tiny_export, capsys):
    code, _, err = run_cli(["generate", "--model", tmp_path / "nope", "--prompt", "x"], capsys)
    assert_one_line_error(code, err, "does not exist")
    code, _, err = run_cli(["generate", "--model", tiny_export, "--prompt", "x", "--height", "100"], capsys)
    assert_one_line_error(code, err, "multiple of 8")  # the VAE's 8 px
    pickle_file = tmp_path / "emb.bin"
    pickle_file.write_bytes(b"\x80\x04 pickle")
    code, _, err = run_cli(["generate", "--model", tiny_export, "--prompt", "x", "--embedding", pickle_file], capsys)
    assert_one_line_error(code, err, "emb.bin")


def test_cli_entry_point_exit_code_in_a_real_process(tmp_path):
    """The installed console script: exit status 2 and a single stderr line, as a user sees it."""
    proc = subprocess.run([sys.executable, "-m", "zoodip.cli", "generate", "--model", str(tmp_path / "nope"),
                           "--prompt", "x"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: ") and len(proc.stderr.strip().splitlines()) == 1



@pytest.mark.parametrize("encoding", [None, "ascii"])
def test_a_file_name_that_is_no_text_is_shown_as_its_bytes(tmp_path, encoding):
    """b'no\\xff' in a path was shown as Python's 'no\\udcff', a character no user knows; an ASCII terminal (LANG=C)
    must not raise UnicodeEncodeError either."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONIOENCODING"}
    env.update({"LANG": "C", "LC_ALL": "C"}, **({"PYTHONIOENCODING": encoding} if encoding else {}))
    proc = subprocess.run([sys.executable, "-m", "zoodip.cli", "info", os.fsencode(tmp_path) + b"/no\xff\xe9"],
                          capture_output=True, env=env)
    assert proc.returncode == 2 and proc.stderr.count(b"\n") == 1, proc.stderr
    assert b"/no\\xff\\xe9 does not exist" in proc.stderr and b"udc" not in proc.stderr, proc.stderr

def test_sigterm_stops_after_the_step_with_a_checkpoint(tiny_export, photos, tmp_path):
    """An app's Process.destroy() (SIGTERM) keeps every finished step: checkpoint at the stop, exit 143."""
    import signal
    import time

    import numpy as np

    out = tmp_path / "term"
    proc = subprocess.Popen([sys.executable, "-m", "zoodip.cli", *map(str, personalize_args(tiny_export, photos, out)),
                             "--max_train_steps", "100000", "--eval-every", "0", "--checkpointing_steps", "1000"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = out / "log.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (log.is_file() and log.read_text().count("\n") >= 5):
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "resume with --resume" in err and "Traceback" not in err
    steps = int(np.load(out / "checkpoint.npz")["step"])
    assert steps >= 5  # not the step-0 checkpoint: the stop itself was checkpointed
    snapshot = out / f"learned_embeds-steps-{steps}.safetensors"  # and what it learned, usable as is
    assert snapshot.is_file() and f"embedding so far in {snapshot}" in err


def test_resume_from_checkpoint_latest_is_resume(tiny_export, photos, tmp_path, capsys):
    out = tmp_path / "r"
    code, _, err = run_cli(personalize_args(tiny_export, photos, out, "--max_train_steps", "2"), capsys)
    assert code == 0, err
    code, stdout, err = run_cli(personalize_args(tiny_export, photos, out, "--resume_from_checkpoint", "latest"), capsys)
    assert code == 0, err
    assert stdout.startswith("done: 3 steps")


def test_a_resumed_run_says_the_steps_of_this_session_apart_from_the_run_s(tiny_export, photos, tmp_path, capsys):
    """--resume of a finished 6000-step run said 'done: 6000 steps in 0.5 s' (and one resumed from 6000 to 6500,
    'done: 6500 steps in 13.1 s'): the whole run's steps over this session's time, a speed no phone has."""
    out = tmp_path / "r"
    code, stdout, err = run_cli(personalize_args(tiny_export, photos, out, "--max_train_steps", "2"), capsys)
    assert code == 0, err
    assert re.match(r"done: 2 steps in \d+\.\d s, 6 training forwards", stdout)  # a fresh run: as before
    code, stdout, err = run_cli(personalize_args(tiny_export, photos, out, "--resume"), capsys)
    assert code == 0, err
    assert re.match(r"done: 3 steps \(1 in this session, in \d+\.\d s\), 9 training forwards", stdout), stdout
    code, stdout, err = run_cli(personalize_args(tiny_export, photos, out, "--resume"), capsys)
    assert code == 0, err
    assert stdout.startswith("done: 3 steps, all before this session (the run had finished), 9 training forwards"), stdout


def test_a_reader_that_leaves_the_pipe_early_is_no_traceback(tiny_export):
    """`zoodip info EXPORT | head -1`: head closes the pipe before zoodip writes (here: before it starts)."""
    proc = subprocess.Popen([sys.executable, "-m", "zoodip.cli", "info", str(tiny_export)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait() == 141 and err == "", err


def test_seed_minus_one_draws_a_seed_and_says_it_as_a1111_does(tiny_export, tmp_path, capsys):
    import re

    from PIL import Image
    import numpy as np

    common = ["generate", "--model", tiny_export, "--prompt", "a star", "--steps", "2", "--threads", "1"]
    code, out, err = run_cli(common + ["--seed", "-1", "--out", tmp_path / "random.png"], capsys)
    said = re.search(r"\(--seed (\d+)\)", out)
    assert code == 0 and said, (out, err)
    code, _, _ = run_cli(common + ["--seed", said.group(1), "--out", tmp_path / "again.png"], capsys)
    assert code == 0 and np.array_equal(np.asarray(Image.open(tmp_path / "random.png")),
                                        np.asarray(Image.open(tmp_path / "again.png")))
    assert_one_line_error(*run_cli(common + ["--seed", "-2"], capsys)[::2],  # (said with -1, as personalize's)
                          "error: --seed must be an integer >= 0, or -1 for a random one, got -2")


def test_info_and_verify_path_mistakes_are_one_line(tiny_export, tmp_path, capsys):
    for args, needle in ((["info", ""], "the path is empty"), (["verify", ""], "path is empty"),
                         (["verify", tiny_export / "manifest.json"], "is a file, not an export folder")):
        assert_one_line_error(*run_cli(args, capsys)[::2], needle)


def test_generate_cleans_what_a_killed_call_left_beside_its_outputs_not_a_live_ones(tiny_export, tmp_path, capsys):
    """A generate killed while writing left .a-1.png.tmp-PID-... files that no later call removed."""
    import os

    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead, alive = int(ended.stdout), os.getpid()  # (the first has ended; this process runs)
    names = {f".a-1.png.tmp-{dead}-00ff00ff.png": "stale", f".a.png.tmp-{dead}-0a0b0c0d.png": "stale",
             f".a-2.png.tmp-{alive}-01020304.png": "live", f".b.png.tmp-{dead}-0a0b0c0d.png": "another file's"}
    for name in names:
        (tmp_path / name).write_bytes(b"half an image")
        os.utime(tmp_path / name, (0, 0))  # long untouched (a fresh one may be another machine's live write)
    (tmp_path / f".a-1.png.tmp-{dead}-12341234.png").write_bytes(b"being written")
    names[f".a-1.png.tmp-{dead}-12341234.png"] = "fresh"
    code, _, err = run_cli(["generate", "--model", tiny_export, "--prompt", "a star", "--steps", "1", "--num-images",
                            "2", "--out", tmp_path / "a.png"], capsys)
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == sorted(
        name for name, kind in names.items() if kind != "stale")


@pytest.mark.parametrize("argv", [["--bogus"], ["--bogus", "info", "x"], ["--model", "m", "personalize"]])
def test_an_option_before_the_command_is_one_line_saying_where_options_go(argv, capsys):
    """zoodip itself takes --help and --version only: `zoodip --bogus` said a command was required, `zoodip --bogus
    info x` sent the user to info's help, which has no such option either."""
    code, _, err = run_cli(argv, capsys)
    assert_one_line_error(code, err, f"{argv[0]} is not an option of zoodip itself: options go after the command")


def test_help_and_version_before_nothing_still_work(capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(["--version"], capsys)
    assert exit_info.value.code == 0 and capsys.readouterr().out.startswith("zoodip ")

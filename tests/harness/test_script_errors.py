"""The repository's scripts keep the command-line contract: a bad flag is one line ``error: ...`` on stderr, naming
how the script is run (``see 'python benchmarks/quality.py --help'``), exit status 2, no traceback, no usage block,
nothing on stdout. Each runs in its own process, as a user starts it; each fails while parsing (a second or so,
a few seconds for those that import torch or onnx at module level)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# Every script of the repository that parses a command line: a new one is covered without being listed here.
SCRIPTS = sorted(
    str(path.relative_to(REPO)) for folder in ("benchmarks", "reference", "android_harness", "export")
    for path in (REPO / folder).glob("*.py")
    if '__name__ == "__main__"' in (text := path.read_text()) and ("ArgumentParser(" in text or "OneLineParser(" in text)
)
# How a user runs the scripts that are not run as "python PATH" (the prog their one line names).
RUN_AS = {"export/curvature.py": ["python", "-m", "zoodip_export.curvature"],
          "reference/demo.py": ["python", "-m", "reference.demo"]}
# (how a user runs it, the arguments before the bad flag): every script, plus a subcommand's own flags.
CASES = [(RUN_AS.get(script, ["python", script]), [], script) for script in SCRIPTS] + [
    (["python", "reference/sd_width.py"], ["start", "--out", "x"], "reference/sd_width.py"),  # a subcommand's parser
    (["python", "android_harness/arm_emulated.py"], ["status"], "android_harness/arm_emulated.py"),
]


def test_every_script_is_found() -> None:
    assert len(SCRIPTS) >= 20 and "benchmarks/quality.py" in SCRIPTS and "export/export_model.py" in SCRIPTS


@pytest.mark.parametrize("command, before, script", [pytest.param(c, b, s, id=" ".join([s] + b)) for c, b, s in CASES])
def test_a_bad_flag_is_one_line_and_exit_2(command, before, script):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO / "sdk"), os.environ.get("PYTHONPATH")])))
    run = subprocess.run([sys.executable, script, *before, "--bogus-flag"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr
    lines = run.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), run.stderr
    assert f"see '{' '.join(command)}" in lines[0]  # the parser's prog is how the script is run
    assert run.stdout == ""


# (script, its arguments; FILE: an existing file where a folder belongs; DEMO: a folder that passes for a demo's)
FOLDER_CASES = [
    ("benchmarks/memory.py", ["--tiny", "--out", "FILE"], "--out"),
    ("benchmarks/memory.py", ["--tiny", "--cache", "FILE"], "--cache"),
    ("benchmarks/quality.py", ["--smoke", "--work", "FILE"], "--work"),
    ("benchmarks/quality.py", ["--smoke", "--cache", "FILE"], "--cache"),
    ("benchmarks/problem_dimension.py", ["--out", "OUT", "--cache", "FILE"], "--cache"),  # (worlds are built into it)
    ("benchmarks/demo_seeds.py", ["--seeds", "0", "--work", "FILE"], "--work"),
    ("benchmarks/prompt_editing.py", ["--demo", "DEMO", "--captions", "1", "--out", "FILE"], "--out"),
]
NUMBER_CASES = [(["--steps", "0"], "--steps must be an integer >= 1"), (["--repeats", "0"], "--repeats"),
                (["--resolution", "0"], "--resolution"), (["--threads", "-2"], "--threads"),
                (["--timeout", "-5"], "--timeout"), (["--fidelity-resolution", "0"], "--fidelity-resolution"),
                (["--directions", "0"], "--directions"),
                # A slip such as --resolution 100000 started exports and contenders that could only fail for memory.
                (["--resolution", "100000"], "--resolution must be at most 1024 ("),
                (["--fidelity-resolution", "8192"], "--fidelity-resolution must be at most 1024 ("),
                (["--steps", "100000"], "--steps must be at most 100 ("), (["--repeats", "1000"], "--repeats must be at most 20 ("),
                (["--directions", "100000"], "--directions must be at most 1024 (")]


def _one_line_error(script: str, args: list[str], needle: str, tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO / "sdk"), os.environ.get("PYTHONPATH")])))
    run = subprocess.run([sys.executable, script, *args], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
    lines = run.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], run.stderr


@pytest.mark.parametrize("script, args, flag", FOLDER_CASES)
def test_a_folder_flag_given_a_file_is_one_line_before_any_work(script, args, flag, tmp_path):
    (tmp_path / "file").write_text("not a folder")
    (tmp_path / "demo" / "model").mkdir(parents=True)
    (tmp_path / "demo" / "model" / "manifest.json").write_text("{}")
    args = [str(tmp_path / "file") if a == "FILE" else str(tmp_path / "demo") if a == "DEMO" else
            str(tmp_path / "out") if a == "OUT" else a for a in args]
    _one_line_error(script, args, f"{flag} {tmp_path / 'file'} is an existing file, not a folder", tmp_path)


@pytest.mark.parametrize("args, needle", NUMBER_CASES)
def test_memory_benchmark_numbers_are_checked_before_any_work(args, needle, tmp_path):
    """0 was read as 'the default' (a falsy flag), a negative one failed in every contender's own process."""
    _one_line_error("benchmarks/memory.py", ["--tiny", "--out", str(tmp_path / "out"), *args], needle, tmp_path)
    assert not (tmp_path / "out").exists()


def test_the_demo_refuses_a_bad_length_before_its_export(tmp_path):
    _one_line_error("reference/demo.py", ["--out", str(tmp_path / "demo"), "--steps", "-1"], "--steps -1: give 1 to 1,000,000,000",
                    tmp_path)
    assert not (tmp_path / "demo").exists()


@pytest.mark.parametrize("args,needle", [(["--guidance", "nan"], "--guidance nan: give a finite guidance scale"),
                                         (["--seed", "-1"], "--seed 0 or more"),
                                         (["--out", "FILE"], "is an existing file")])
def test_the_generation_accuracy_check_refuses_before_generating(args, needle, tmp_path):
    """Each was a traceback, the file as --out only after all the images were made."""
    (tmp_path / "file").write_text("x")
    _one_line_error("reference/eval_reference.py", [str(tmp_path / "file") if a == "FILE" else a for a in args],
                    needle, tmp_path)


def test_the_generation_accuracy_check_exports_the_model_it_is_given(tmp_path):
    """An export already at --export was measured whatever --model said (and the report named no model)."""
    from reference.eval_reference import _exported_from

    assert _exported_from(tmp_path) is None
    (tmp_path / "manifest.json").write_text(json.dumps({"source": {"path": str(tmp_path / "model-a")}}))
    assert _exported_from(tmp_path) == (tmp_path / "model-a").resolve()


def test_the_demo_refuses_bad_threads_before_its_export(tmp_path):
    """--threads -1 was refused only after the 15-second export had written --out."""
    _one_line_error("reference/demo.py", ["--out", str(tmp_path / "demo"), "--threads", "-1"],
                    "--threads -1: each must be 0 or more", tmp_path)
    assert not (tmp_path / "demo").exists()


@pytest.mark.parametrize("out, needle", [("models/sd", "is a model's folder (it holds model_index.json)"),
                                         ("models", "its model/ is not a zoodip export")])
def test_the_demo_writes_nothing_into_a_models_folder(tmp_path, out, needle):
    """--out reference/model put the demo's photos, export and runs among the committed weights; --out reference
    wrote reference/concept/ before the export refused to replace reference/model."""
    model = tmp_path / "models" / "model"
    model.mkdir(parents=True)
    (model / "model_index.json").write_text("{}")
    (tmp_path / "models" / "sd").symlink_to(model)
    before = sorted(tmp_path.rglob("*"))
    _one_line_error("reference/demo.py", ["--out", str(tmp_path / out), "--steps", "1"], needle, tmp_path)
    assert sorted(tmp_path.rglob("*")) == before


@pytest.mark.parametrize("args, needle", [
    (["--out", "EVAL"], "--out {tmp}/eval.onnx already exists: name a new file, or add --overwrite"),  # was replaced
    (["--out", "RECORD"], "--out {tmp}/record.json already exists"),  # the record beside a new model was replaced
    (["--out", "DIR"], "--out {tmp} is a folder"),  # a traceback after the whole training
    (["--lr", "nan"], "--lr must be a finite number > 0"),  # a traceback after rendering
])
def test_the_evaluator_training_refuses_before_any_work(tmp_path, args, needle):
    (tmp_path / "eval.onnx").write_bytes(b"onnx")
    (tmp_path / "record.json").write_text("{}")
    names = {"EVAL": tmp_path / "eval.onnx", "RECORD": tmp_path / "record.onnx", "DIR": tmp_path}
    small = ["--n-train", "4", "--n-test", "4", "--steps", "1", "--batch", "2", "--out", str(tmp_path / "new.onnx")]
    _one_line_error("reference/train_evaluator.py", small + [str(names.get(a, a)) for a in args],
                    needle.format(tmp=tmp_path), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval.onnx", "record.json"]
    assert (tmp_path / "eval.onnx").read_bytes() == b"onnx" and (tmp_path / "record.json").read_text() == "{}"


def test_the_evaluator_training_writes_into_a_new_folder(tmp_path):
    """The default --out, reference/.work/evaluator.onnx, lies in a folder a fresh clone lacks: the training ran to its
    end and then failed as a FileNotFoundError traceback writing the model."""
    out = tmp_path / "new" / "evaluator.onnx"
    run = subprocess.run([sys.executable, "reference/train_evaluator.py", "--n-train", "4", "--n-test", "4", "--steps",
                          "1", "--batch", "2", "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr[-2000:]
    assert out.is_file() and json.loads(out.with_suffix(".json").read_text())["steps"] == 1


def test_eval_reference_names_export_when_refusing_its_export_folder(tmp_path, capsys):
    """eval_reference.py --export DAMAGED said 'refusing to overwrite DAMAGED: it is not a zoodip export folder', and
    --export over the model 'OUT_DIR ... is the source folder': the exporter's words, naming no --export flag."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from reference import eval_reference

    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "manifest.json").write_text("{")
    for export, said in ((damaged, f"refusing to overwrite --export {damaged}: it is not a zoodip export folder"),
                         (REPO / "reference", f"--export {REPO / 'reference'} is the source folder")):
        assert eval_reference.main(["--export", str(export), "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {said}") and err.count("\n") == 1, err
    assert (damaged / "manifest.json").read_text() == "{" and not (tmp_path / "out").exists()


# (script, its arguments; OUT, CACHE: folders that must not be made; DEMO: a folder that passes for a demo's)
CAP_CASES = [
    ("benchmarks/problem_dimension.py", ["--out", "OUT", "--cache", "CACHE", "--samples", "100000"],
     "--samples must be at most 64 ("),
    ("benchmarks/problem_dimension.py", ["--out", "OUT", "--cache", "CACHE", "--gradient-noise", "100000"],
     "--gradient-noise must be at most 4096 ("),
    ("benchmarks/demo_seeds.py", ["--seeds", "0-99999999999999999999", "--work", "CACHE", "--out", "OUT"],
     "the count of seeds must be at most 100 ("),
    ("benchmarks/long_prompts.py", ["--demo", "DEMO", "--captions", "100000", "--out", "OUT"],
     "--captions must be at most 10000 ("),
    ("reference/eval_reference.py", ["--n", "100000", "--export", "CACHE", "--out", "OUT"], "--n must be at most 10000 ("),
    ("benchmarks/threads.py", ["--resolution", "100000", "--out", "OUT"], "--resolution must be at most 2048 ("),
    ("benchmarks/threads.py", ["--forwards", "100000", "--out", "OUT"], "--forwards must be at most 1000 ("),
    ("benchmarks/vae_tiles.py", ["--resolution", "100000", "--export", "CACHE"], "--resolution must be at most 4096 ("),
    ("benchmarks/fd_fidelity.py", ["CACHE", "OUT", "--directions", "10000000"], "--directions must be at most 100000 ("),
    ("benchmarks/int4_kernels.py", ["--repeats", "100000"], "--repeats must be at most 1000 ("),
    ("benchmarks/attribute_signal.py", ["--draws", "10000000", "--cache", "CACHE", "--out", "OUT"],
     "--draws must be at most 10000 ("),
    ("benchmarks/demo_seeds.py", ["--backprop", "100000000", "--work", "CACHE", "--out", "OUT"],
     "--backprop must be at most 100000 ("),
    ("benchmarks/quality.py", ["--smoke", "--steps", "10000000", "--work", "CACHE", "--out", "OUT"], "--steps must be at most 100000 ("),
    ("benchmarks/quality.py", ["--smoke", "--checkpoints", "100000", "--work", "CACHE", "--out", "OUT"], "--checkpoints must be at most 100 ("),
    ("benchmarks/quality.py", ["--smoke", "--images-per-prompt", "100000", "--work", "CACHE", "--out", "OUT"], "--images-per-prompt must be at most 64 ("),
    ("benchmarks/quality.py", ["--smoke", "--gen-steps", "100000", "--work", "CACHE", "--out", "OUT"], "--gen-steps must be at most 1000 ("),
    ("benchmarks/quality.py", ["--smoke", "--max-heldout", "100000", "--work", "CACHE", "--out", "OUT"], "--max-heldout must be at most 1000 ("),
    ("benchmarks/quality.py", ["--task", "world", "--seeds", "100000", "--work", "CACHE", "--out", "OUT"],
     "--seeds must be at most 100 ("),
]


@pytest.mark.parametrize("script, args, needle", CAP_CASES)
def test_a_count_past_its_ceiling_is_one_line_before_any_work(script, args, needle, tmp_path):
    """Each was taken: hours of work (a demo per seed, a generation per caption) or memory that ran out."""
    (tmp_path / "demo" / "model").mkdir(parents=True)
    (tmp_path / "demo" / "model" / "manifest.json").write_text("{}")
    names = {"OUT": tmp_path / "out", "CACHE": tmp_path / "cache", "DEMO": tmp_path / "demo"}
    _one_line_error(script, [str(names.get(a, a)) for a in args], needle, tmp_path)
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()

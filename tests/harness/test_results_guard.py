"""benchmarks/_results_guard.py: a benchmark run with other settings than the committed run of its results folder
(a bare ``--quick`` run into the default, committed folder) is refused in one line instead of replacing it; the
committed command itself (the README's) is still accepted."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from benchmarks import _results_guard as guard  # noqa: E402
from zoodip.console import OneLineParser  # noqa: E402
from zoodip.errors import ZoodipError  # noqa: E402


class Passed(Exception):
    """Raised by a stub placed after the guard: the run got past it."""


def _parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python benchmarks/x.py")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=None)
    return parser


@pytest.fixture
def results(tmp_path, monkeypatch):
    monkeypatch.setattr(guard, "RESULTS", tmp_path / "results")
    folder = tmp_path / "results" / "x"
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({"command": "python benchmarks/x.py --steps 20"}))
    return folder


def test_other_settings_are_refused_the_recorded_ones_accepted(results):
    for argv in ([], ["--quick", "--steps", "20"], ["--steps", "5"]):
        with pytest.raises(ZoodipError, match="other settings: pass --out"):
            guard.check_results_folder(results, _parser(), argv, "x.py")
    guard.check_results_folder(results, _parser(), ["--steps=20", "--out", str(results)], "x.py")
    guard.check_results_folder(results.parent / "new", _parser(), ["--quick"], "x.py")  # no run there yet
    guard.check_results_folder(results.parent.parent / "elsewhere", _parser(), ["--quick"], "x.py")


def test_a_command_recorded_only_in_results_md_counts(results):
    (results / "results.json").write_text(json.dumps({"rows": []}))
    (results / "results.md").write_text("# X\n\n`python benchmarks/x.py`  \n2026-12-05\n")
    guard.check_results_folder(results, _parser(), [], "x.py")
    with pytest.raises(ZoodipError):
        guard.check_results_folder(results, _parser(), ["--quick"], "x.py")
    (results / "results.md").unlink()  # a run, but no command: nothing proves the settings the same
    with pytest.raises(ZoodipError, match="holds results that record no command, settings no run can be proven"):
        guard.check_results_folder(results, _parser(), [], "x.py")


def test_a_quick_run_into_a_committed_folder_is_one_line(tmp_path):
    folder = "benchmarks/results/quality/sd-width-900"
    before = (REPO / folder / "results.json").read_bytes()
    run = subprocess.run([sys.executable, "benchmarks/quality.py", "--quick", "--out", folder], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and run.stderr.count("\n") == 1 and "pass --out" in run.stderr, run.stderr
    assert (REPO / folder / "results.json").read_bytes() == before


def test_quality_readme_commands_are_accepted():
    import quality

    for folder in ("sd-width-900", "sd-width-seeds", "forward-count"):
        command = guard.recorded_command(REPO / "benchmarks/results/quality" / folder)
        argv = guard.shlex.split(command)[2:]
        guard.check_results_folder(REPO / "benchmarks/results/quality" / folder, quality.build_parser(), argv,
                                   "quality.py")


@pytest.mark.parametrize("script", ["emphasis.py", "long_prompts.py", "prompt_editing.py"])
def test_demo_benchmarks_accept_their_committed_command_only(monkeypatch, tmp_path, script):
    module = __import__(Path(script).stem)
    folder = REPO / "benchmarks/results" / Path(script).stem.replace("_", "-")
    argv = guard.shlex.split(guard.recorded_command(folder))[2:]
    demo = tmp_path / "demo"
    for name in ("model/manifest.json", "run/learned_embeds.safetensors"):
        (demo / name).parent.mkdir(parents=True, exist_ok=True)
        (demo / name).write_text("")
    argv = [str(demo) if i and argv[i - 1] == "--demo" else a for i, a in enumerate(argv)]
    argv = argv if "--demo" in argv else argv + ["--demo", str(demo)]

    def passed(*args):
        raise Passed

    monkeypatch.setattr(module, "measure", passed)
    with pytest.raises(Passed):
        module.main(argv)
    assert module.main(argv + ["--" + ("seeds" if script == "emphasis.py" else "captions"), "3"]) == 2


@pytest.mark.parametrize("script, stub, other", [("attribute_signal.py", "relative_args", ["--draws", "2"]),
                                                 ("problem_dimension.py", "relative_args", ["--samples", "1"]),
                                                 ("demo_seeds.py", "run", ["--seeds", "0"])])
def test_committed_command_passes_the_guard_another_does_not(monkeypatch, capsys, script, stub, other):
    module = __import__(Path(script).stem)
    folder = {"attribute_signal.py": "attribute-signal", "problem_dimension.py": "problem-dimension",
              "demo_seeds.py": "demo"}[script]
    argv = guard.shlex.split(guard.recorded_command(REPO / "benchmarks/results" / folder))[2:]

    def passed(*args, **kwargs):
        raise Passed

    monkeypatch.setattr(module, stub, passed)
    with pytest.raises(Passed):
        module.main(argv)
    if script == "problem_dimension.py":  # the README's other run there writes gradient-noise.json
        with pytest.raises(Passed):
            module.main(["--models", "sd-width-768,reference-64", "--gradient-noise", "256"])
        assert module.main(["--gradient-noise", "2"]) == 2
    if script == "demo_seeds.py":
        with pytest.raises(Passed):
            module.main([])  # the README's bare command: seeds 0-4, the committed run's
    assert module.main(other) == 2
    assert "other settings: pass --out" in capsys.readouterr().err


def test_demo_and_problem_dimension_records_say_when_and_where(monkeypatch, tmp_path):
    import _demo_runs
    import problem_dimension

    _demo_runs.write_results(tmp_path / "demo", "emphasis.py", ["--seeds", "2"], {"rows": []}, lambda command: command)
    monkeypatch.setattr(problem_dimension, "measure", lambda *args: {"model": "reference-64"})
    monkeypatch.setattr(problem_dimension, "markdown", lambda rows, command: command)
    assert problem_dimension.main(["--models", "reference-64", "--out", str(tmp_path / "dimension")]) == 0
    for folder in ("demo", "dimension"):
        record = json.loads((tmp_path / folder / "results.json").read_text())
        assert record["command"].startswith("python benchmarks/") and record["date"].startswith("20")
        assert record["machine"]["cpu_count"] >= 1 and "rows" in record


def test_a_worker_is_not_held_to_the_default_folders_run(monkeypatch, tmp_path):
    """quality.py's workers run with --worker SPEC only: a full run stored in the default folder must not stop them."""
    import quality

    monkeypatch.setattr(quality, "DEFAULT_OUT", REPO / "benchmarks/results/quality/sd-width-900")
    monkeypatch.setattr(quality, "_worker", lambda spec: 0)
    assert quality.main(["--worker", str(tmp_path / "spec.json")]) == 0


def test_a_smoke_run_is_not_held_to_the_default_folders_run(monkeypatch):
    """quality.py --smoke without --out writes a temporary folder: a run stored in the default folder refused it."""
    import quality

    def passed(*args, **kwargs):
        raise Passed

    monkeypatch.setattr(quality, "DEFAULT_OUT", REPO / "benchmarks/results/quality/sd-width-900")
    monkeypatch.setattr(quality, "prepare_model", passed)
    with pytest.raises(Passed):
        quality.main(["--smoke"])
    assert quality.main(["--smoke", "--out", str(quality.DEFAULT_OUT)]) == 2


def test_a_recorded_merge_spelled_otherwise_is_the_same_merge(monkeypatch, capsys):
    """quality.py --merge compared its DIRs as typed: the recorded merge re-run with 'DIR/' or './DIR' (or with a
    training flag, which a merge ignores) was refused as 'a run with other settings'."""
    import quality

    def passed(*args, **kwargs):
        raise Passed

    monkeypatch.setattr(quality, "merge_main", passed)
    folder = "benchmarks/results/quality/sd-width-900-levers-merged"
    argv = guard.shlex.split(guard.recorded_command(REPO / folder))[2:]
    assert argv[:3] == ["--merge", "benchmarks/results/quality/sd-width-900", "benchmarks/results/quality/sd-width-900-levers"]
    monkeypatch.chdir(REPO)
    with pytest.raises(Passed):
        quality.main(["--merge", "./" + argv[1] + "/", argv[2] + "/", "--out", folder, "--quick"])
    assert quality.main(["--merge", argv[2], argv[1], "--out", folder]) == 2  # (the sources in another order: not provably the same merge)
    assert "other settings" in capsys.readouterr().err


def test_a_committed_folder_spelled_otherwise_is_still_guarded(results):
    """--out through '..' out of and back into benchmarks/ (benchmarks/../benchmarks/results/x) or through a link to
    the folder is the same folder: a --quick run there was let through, replacing the committed run."""
    link = results.parent.parent / "link"
    link.symlink_to(results)
    for spelling in (results.parent.parent / "elsewhere" / ".." / "results" / "x", link):
        with pytest.raises(ZoodipError, match="other settings"):
            guard.check_results_folder(spelling, _parser(), ["--quick", "--out", str(spelling)], "x.py")
        guard.check_results_folder(spelling, _parser(), ["--steps", "20", "--out", str(spelling)], "x.py")


def test_a_recorded_command_run_with_an_environment_or_patch_is_not_a_plain_run(results):
    """A run recorded as 'VAR=1 PYTHONPATH=PATCH python benchmarks/x.py ...' measured something the same flags alone
    do not: the flags alone must not replace it."""
    (results / "results.json").write_text(json.dumps({"command": "ZOODIP_X=1 PYTHONPATH=PATCH_DIR python "
                                                                  "benchmarks/x.py --steps 20"}))
    with pytest.raises(ZoodipError, match="settings no run can be proven to repeat: pass --out OTHER_FOLDER$"):
        guard.check_results_folder(results, _parser(), ["--steps", "20"], "x.py")  # (not: re-run that command)
    for interpreter in ("python", "python3", ".venv/bin/python"):
        (results / "results.json").write_text(json.dumps({"command": f"{interpreter} benchmarks/x.py --steps 20"}))
        guard.check_results_folder(results, _parser(), ["--steps", "20"], "x.py")


def test_demo_seeds_thread_count_is_a_setting(monkeypatch, capsys):
    """demo_seeds.py's results hold each seed's wall time, and a folder such as demo-w4a32-8000-1thread is named
    after its --threads: a run with another thread count replaced its times silently."""
    import demo_seeds

    folder = "benchmarks/results/demo-w4a32-8000-1thread"
    argv = guard.shlex.split(guard.recorded_command(REPO / folder))[2:]

    def passed(*args, **kwargs):
        raise Passed

    monkeypatch.setattr(demo_seeds, "run", passed)
    with pytest.raises(Passed):
        demo_seeds.main(argv)
    assert demo_seeds.main([a if a != "1" or argv[i - 1] != "--threads" else "4" for i, a in enumerate(argv)]) == 2
    assert "other settings: pass --out" in capsys.readouterr().err


def test_memory_keeps_its_committed_quick_run(monkeypatch, capsys):
    """The README's bare 'python benchmarks/memory.py' (512 px, every contender) wrote into the default folder, whose
    committed run is '--quick': it replaced it silently. Now refused; the recorded command and --render still pass."""
    import memory

    def passed(*args, **kwargs):
        raise Passed

    monkeypatch.setattr(memory, "run", passed)
    monkeypatch.setattr(memory, "render", passed)
    assert memory.main([]) == 2 and "other settings: pass --out" in capsys.readouterr().err
    for argv in (["--quick"], ["--render"], ["--quick", "--out", "benchmarks/results/memory"]):
        with pytest.raises(Passed):
            memory.main(argv)
    for record in sorted((REPO / "benchmarks/results/memory").glob("**/memory.json")):
        words = guard.shlex.split(guard.recorded_command(record.parent, "memory"))[2:]
        at = words.index("--out")
        with pytest.raises(Passed):
            memory.main(words[:at] + ["--out", str(record.parent)] + words[at + 2:])


def test_a_results_json_cut_short_by_a_kill_is_not_called_committed(results):
    """A run killed while writing results.json (no results.md yet) left a folder that every run was refused with
    'holds committed results, a run with other settings ... (or re-run that command...)', naming no command."""
    (results / "results.json").write_text('{"command": "python benchmarks/x.py --st')
    with pytest.raises(ZoodipError) as refused:
        guard.check_results_folder(results, _parser(), ["--steps", "20"], "x.py")
    assert "record no command" in str(refused.value) and "committed" not in str(refused.value)
    assert "re-run" not in str(refused.value)


def test_threads_keeps_its_committed_runs(monkeypatch, capsys):
    """threads.py wrote into benchmarks/results/threads (its default) with any settings, replacing the committed
    '--resolution 256 --forwards 5 --busy 2' run; now held to it like the other benchmarks."""
    import threads

    def passed(*args, **kwargs):
        raise Passed

    monkeypatch.setattr(threads, "measure", passed)
    monkeypatch.setattr(threads, "default_model", lambda: REPO / "reference" / "model")
    assert threads.main(["--forwards", "1"]) == 2 and "other settings: pass --out" in capsys.readouterr().err
    for folder in ("threads", "threads/busy1"):
        words = guard.shlex.split(guard.recorded_command(REPO / "benchmarks/results" / folder, "threads"))[2:]
        with pytest.raises(Passed):
            threads.main(words)


def test_a_recorded_quality_run_spelled_otherwise_is_the_same_run(monkeypatch, capsys):
    """sd-width-900's recorded run ('--steps 300 --checkpoints 3 --methods init,ti-backprop,zoodip,zo-puts,zo-naive')
    re-run with --steps left to its default (300), or its --methods in another order, was refused as 'a run with
    other settings': the guard compared the flags as typed, not the settings they give."""
    import quality

    def passed(*args, **kwargs):
        raise Passed

    monkeypatch.setattr(quality, "prepare_model", passed)
    folder = "benchmarks/results/quality/sd-width-900"
    argv = guard.shlex.split(guard.recorded_command(REPO / folder))[2:]
    assert argv[:4] == ["--steps", "300", "--checkpoints", "3"] and argv[4] == "--methods"
    spellings = [argv[2:],  # --steps 300: the default
                 argv[:5] + [",".join(reversed(argv[5].split(",")))] + argv[6:],
                 argv[:5] + [argv[5].replace(",", ", ")] + argv[6:]]
    for spelling in spellings:
        with pytest.raises(Passed):
            quality.main(spelling)
    assert quality.main(["--steps", "150", *argv[2:]]) == 2  # (another length: still refused)
    assert quality.main([*argv[:5], "init,zoodip", *argv[6:]]) == 2  # (other methods: still refused)
    assert "other settings" in capsys.readouterr().err


def test_a_recorded_memory_run_spelled_otherwise_is_the_same_run(monkeypatch, capsys):
    """default-w4a32-512's recorded run ('--resolution 512 --contenders A,B,C,D ...') re-run with --resolution left
    to its default (512) or the contenders in another order was refused as 'a run with other settings'."""
    import memory

    def passed(*args, **kwargs):
        raise Passed

    monkeypatch.setattr(memory, "run", passed)
    folder = "benchmarks/results/memory/default-w4a32-512"
    argv = guard.shlex.split(guard.recorded_command(REPO / folder, "memory"))[2:]
    at = argv.index("--out")
    argv[at + 1] = str(REPO / folder)
    assert argv[:2] == ["--resolution", "512"] and argv[2] == "--contenders"
    for spelling in (argv[2:], argv[:3] + [",".join(reversed(argv[3].split(",")))] + argv[4:]):
        with pytest.raises(Passed):
            memory.main(spelling)
    assert memory.main(["--resolution", "256", *argv[2:]]) == 2
    assert "other settings" in capsys.readouterr().err
    assert memory.main(["--steps", "0", *argv]) == 2  # (a bad value: its own line, not 'other settings')
    assert "--steps" in capsys.readouterr().err


@pytest.mark.skipif(not (REPO / "reference" / "model-768" / "model_index.json").is_file(),
                    reason="the built-in model (whose demo length is 4000 steps) is not in this checkout")
def test_a_recorded_demo_seeds_run_spelled_otherwise_is_the_same_run(monkeypatch, capsys):
    """demo-w4a32-4000's recorded '--steps 4000' re-run without it (the demo's default on the built-in model), or the
    default folder's run ('--seeds 0-4') given '--steps 4000', was refused as 'a run with other settings'."""
    import demo_seeds

    def passed(*args, **kwargs):
        raise Passed

    monkeypatch.setattr(demo_seeds, "run", passed)
    argv = guard.shlex.split(guard.recorded_command(REPO / "benchmarks/results/demo-w4a32-4000"))[2:]
    assert argv[:2] == ["--steps", "4000"]
    for spelling in (argv[2:], ["--steps", "4000"]):  # (the second: into the default folder, benchmarks/results/demo)
        with pytest.raises(Passed):
            demo_seeds.main(spelling)
    assert demo_seeds.main(["--steps", "300", *argv[2:]]) == 2  # (another length: still refused)
    assert "other settings" in capsys.readouterr().err


def test_a_recorded_attribute_signal_run_spelled_otherwise_is_the_same_run(monkeypatch, capsys):
    """attribute-signal's recorded run (all 8 concepts by default) re-run with --concepts naming all 8, in any order,
    was refused as 'a run with other settings'."""
    import attribute_signal

    def passed(*args, **kwargs):
        raise Passed

    monkeypatch.setattr(attribute_signal, "relative_args", passed)
    argv = guard.shlex.split(guard.recorded_command(REPO / "benchmarks/results/attribute-signal"))[2:]
    assert "--concepts" not in argv
    from reference import world

    every = [c.name.strip("<>") for c in world.CONCEPTS]
    for concepts in (every, every[::-1]):
        with pytest.raises(Passed):
            attribute_signal.main(argv + ["--concepts", ", ".join(concepts)])
    assert attribute_signal.main(argv + ["--concepts", ",".join(every[:2])]) == 2  # (fewer: still refused)
    assert "other settings" in capsys.readouterr().err

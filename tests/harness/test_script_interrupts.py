"""A Ctrl-C in a benchmark script ends it as it ends the ``zoodip`` CLI: one line ``interrupted: ...`` saying what the
run leaves (exit status 130), not a KeyboardInterrupt traceback; a ZoodipError raised during the work is the one
``error:`` line (exit status 2). The work is replaced by a stand-in that raises, in this process."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
for folder in (REPO, REPO / "benchmarks", REPO / "android_harness"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))


def _raises(exc: BaseException):
    def stand_in(*args, **kwargs):
        raise exc
    return stand_in


def _cases(tmp_path: Path) -> list[tuple[object, str, list[str]]]:
    """(module, the function doing the work that is replaced, its arguments)."""
    import memory
    import problem_dimension
    import threads
    from benchmarks import quality

    world = tmp_path / "world"
    (world / "unet").mkdir(parents=True)
    (world / "unet" / "config.json").write_text("{}")
    out, cache = str(tmp_path / "out"), str(tmp_path / "cache")
    return [(memory, "_prepare_exports", ["--tiny", "--out", out, "--cache", cache]),
            (threads, "measure", ["--model", str(tmp_path), "--out", out]),
            (quality, "prepare_model", ["--smoke", "--out", out, "--cache", cache]),
            (problem_dimension, "measure", ["--models", f"w={world}", "--out", out, "--cache", cache])]


@pytest.mark.parametrize("script", ["memory", "threads", "quality", "problem_dimension"])
@pytest.mark.parametrize("raised, code, start", [(KeyboardInterrupt(), 130, "interrupted: --out was not written"),
                                                (None, 2, "error: the work failed")])
def test_an_interrupted_or_failed_script_is_one_line_and_leaves_no_out(script, raised, code, start, tmp_path, capsys,
                                                                       monkeypatch):
    from zoodip.errors import ZoodipError

    module, work, argv = next(case for case in _cases(tmp_path) if case[0].__name__.endswith(script))
    monkeypatch.setattr(module, work, _raises(raised or ZoodipError("the work failed")))
    if script == "threads":  # (no export to check: the stand-in measures)
        monkeypatch.setattr(module, "checked_export", lambda folder, flag: Path(folder))
    assert module.main(argv) == code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("[")]  # ([...]: progress)
    assert lines and lines[-1].startswith(start) and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()


# Every other script a README tells a user to run: (module, the start of its 'interrupted:' line).
WRAPPED = [("reference.demo", "what the demo finished in --out is kept"),
           ("reference.eval_reference", "--out was not written"), ("reference.train_evaluator", "--out was not written"),
           ("reference.sd_width", "(pack and materialize leave DEST"), ("reference.widen_text", "--out was not written"),
           ("arm_probe", "--out/probe.json was not written"), ("arm_emulated", "--json was not written"),
           ("convert_to_ort", "OUT_DIR was not written"), ("device_run", "--summary holds the run"),
           *((f"benchmarks.{name}", "--out was not written") for name in
             ("attribute_signal", "demo_seeds", "emphasis", "long_prompts", "prompt_editing", "random_lora")),
           *((f"benchmarks.{name}", "nothing was written") for name in
             ("compare_runs", "fd_fidelity", "int4_kernels", "text_free_prefix", "vae_tiles")),
           ("benchmarks.int4_gradient", "--json was not written"),
           ("zoodip_export.export_model", "nothing was written")]  # (it said 'error: interrupted (nothing ...)')


@pytest.mark.parametrize("signum", ["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("name, start", WRAPPED)
def test_a_ctrl_c_in_any_readme_script_is_one_line_saying_what_is_kept(name, start, signum, capsys, monkeypatch):
    """A SIGTERM taken as Ctrl-C (console.Terminated) ends with 128 + its number, 143, as zoodip personalize does (the
    exporter and train_reference said 130 for it)."""
    import importlib
    import signal

    from zoodip.console import OneLineParser, Terminated

    module = importlib.import_module(name)
    interrupt = KeyboardInterrupt() if signum == "SIGINT" else Terminated(signal.SIGTERM)
    # (the Ctrl-C lands as the command line is read: every script reads its own first)
    monkeypatch.setattr(OneLineParser, "parse_known_args", _raises(interrupt))
    if name == "device_run":  # (it reads its own arguments)
        monkeypatch.setattr(module, "progress_file", _raises(interrupt))
        argv = ["--summary", "run.json", "--", "personalize"]
    else:
        argv = ["--help"]
    assert module.main(argv) == 128 + getattr(signal, signum)
    err = capsys.readouterr().err
    assert err.startswith(f"interrupted: {start}") and len(err.splitlines()) == 1 and "Traceback" not in err, err


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_a_real_ctrl_c_at_the_demo_s_start_is_one_line_and_leaves_no_partial_file(tmp_path, sig):
    """A SIGTERM (``timeout``, a process manager) ended the demo without a word, as exit status -15 (the CLI's
    ``zoodip personalize`` says its line and ends 143): it is the Ctrl-C's line, with the status 128 + 15."""
    import signal
    import subprocess
    import time

    out, sig = tmp_path / "out", getattr(signal, sig)
    demo = subprocess.Popen([sys.executable, "-m", "reference.demo", "--out", str(out), "--no-progress"], cwd=REPO,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not out.exists() and demo.poll() is None and time.monotonic() < deadline:  # (made as the demo starts)
        time.sleep(0.02)
    demo.send_signal(sig)
    _, err = demo.communicate(timeout=60)
    # (-SIGINT, ended by the signal, is what a shell reads as 130 too: under `python -m`, a Ctrl-C that lands inside
    # code a C extension evaluates while it is imported sets CPython's "unhandled KeyboardInterrupt" flag, even though
    # the demo handles it, and the interpreter then ends itself by SIGINT (seen now and then). A SIGTERM, raised
    # as a subclass, never sets it.)
    assert demo.returncode in (128 + sig, -sig if sig == signal.SIGINT else None) and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith("interrupted: what the demo finished in --out is kept"), err
    left = [path.name for path in out.rglob("*") if any(word in path.name for word in ("tmp", "partial", "staging"))]
    assert not left, left


def test_an_interrupted_smoke_run_leaves_no_temporary_out(tmp_path, capsys, monkeypatch):
    """quality.py --smoke made its temporary --out before the training: a Ctrl-C left it behind, empty. It is made
    with the results now."""
    import tempfile

    import zoodip.model
    from benchmarks import quality

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(quality, "prepare_model", lambda *args: (tmp_path / "export", None))
    monkeypatch.setattr(zoodip.model.ExportedModel, "load", _raises(KeyboardInterrupt()))  # (the training's start)
    assert quality.main(["--smoke", "--cache", str(tmp_path / "cache")]) == 130
    assert "interrupted: --out was not written" in capsys.readouterr().err
    assert not list(tmp_path.glob("zoodip-quality-smoke-*"))


# Benchmarks whose imports before script_main's main are light (no NumPy): nothing to hold.
LIGHT_IMPORTS = {"text_free_prefix"}
# Scripts that say a signal during their imports in one line (console.interrupts_said_from_here), each run as it
# is (the demo as a module, the benchmarks as files), and the import held until the test's signal lands.
STARTED = {"reference.demo": ("runpy.run_module('reference.demo', run_name='__main__', alter_sys=True)", "zoodip.checkpoint"),
           **{name: (f"runpy.run_path('{name}.py', run_name='__main__')", "numpy") for name in (
               *(f"benchmarks/{path.stem}" for path in sorted((REPO / "benchmarks").glob("[!_]*.py"))
                 if path.stem not in LIGHT_IMPORTS),  # (every benchmark: a new one is held to it too)
               *(f"reference/{name}" for name in ("eval_reference", "train_evaluator", "widen_text")))}}


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("script", list(STARTED))
def test_a_signal_during_a_script_s_imports_is_one_line(script, sig):
    """A Ctrl-C in a script's first moment, while NumPy and the SDK are imported, before script_main's main takes
    over, was a traceback of the imports, and a SIGTERM an end without a word (-15): both are the one 'interrupted'
    line now, 130 or 143. The import (of zoodip.checkpoint, of numpy) is held, and says so on stdout, until the
    signal lands."""
    import signal

    from cli_helpers import held_import, signal_while_importing

    run, held = STARTED[script]
    sig = getattr(signal, sig)
    status, printed, err = signal_while_importing(held_import(held) + f"import runpy\n{run}\n", ["--help"], sig, REPO)
    assert (status, err, printed) == (128 + sig, "interrupted\n", "")

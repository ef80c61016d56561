"""A Ctrl-C in a benchmark script ends it as it ends the ``zoodip`` CLI: one line ``interrupted: ...`` saying what the
run leaves (exit status 130), not a KeyboardInterrupt traceback; a ZoodipError raised during the work is the one
``error:`` line (exit status 2). The work is replaced by a stand-in that raises, in this process."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
for folder in (REPO, REPO / "benchmarks"):
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

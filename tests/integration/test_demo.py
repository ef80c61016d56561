"""The demo (reference/demo.py, what `make demo` runs), shortened: export of the built-in model, a few steps, the report."""
from __future__ import annotations

import json
import os
import signal

import pytest

from reference import demo


@pytest.mark.skipif(not demo.reference_available(), reason="reference/ is not in this checkout")
def test_demo_on_the_reference_model_writes_its_report(tmp_path):
    summary = demo.run_demo(tmp_path, steps=6, threads=1, progress=False,
                            method={"learning_rate": 0.02, "lr_scheduler": "linear", "clip_estimate": 2.0})
    assert summary["model"] == "reference" and summary["steps"] == 6
    config = json.loads((tmp_path / "run" / "config.json").read_text())  # the demo's method flags reached the run
    assert config["learning_rate"] == 0.02 and config["lr_scheduler"] == "linear" and config["clip_estimate"] == 2.0
    assert (tmp_path / "before_after.png").is_file() and (tmp_path / "run" / "learned_embeds.safetensors").is_file()
    assert json.loads((tmp_path / "summary.json").read_text())["grid"] == summary["grid"]
    for name in ("before", "after"):
        accuracy = summary[f"concept_accuracy_{name}"]
        assert set(accuracy) == {"shape", "color", "background", "style", "size"}
        # All five right on an image implies each one right: the joint share is at most every attribute's.
        assert 0.0 <= summary[f"concept_all_five_{name}"] <= min(accuracy.values())


def test_demo_refuses_a_negative_seed_before_any_work(tmp_path, capsys):
    out = tmp_path / "demo"
    code = demo.main(["--out", str(out), "--seed", "-1", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "--seed -1" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and not out.exists()


@pytest.mark.parametrize("flag, value", [("--learning_rate", "-1"), ("--learning_rate", "nan"), ("--learning_rate", "0"),
                                         ("--clip-estimate", "1"), ("--clip-estimate", "inf")])
def test_demo_refuses_a_bad_method_value_before_any_work(tmp_path, capsys, flag, value):
    out = tmp_path / "demo"
    code = demo.main(["--out", str(out), flag, value, "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and flag in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and not out.exists()


def test_demo_refuses_an_unknown_flag_in_one_line(tmp_path, capsys):
    assert demo.main(["--out", str(tmp_path / "demo"), "--no-such-flag"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ") and not (tmp_path / "demo").exists()


def test_demo_refuses_steps_past_the_sdks_limit_before_any_work(tmp_path, capsys):
    """--steps 99999999999 removed the previous finished run (checkpoint, embedding, log), then was refused as the
    SDK's --max_train_steps."""
    out = tmp_path / "demo"
    (out / "run").mkdir(parents=True)
    (out / "run" / "checkpoint.npz").write_bytes(b"an earlier run")
    assert demo.main(["--out", str(out), "--steps", "99999999999", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --steps 99999999999: give 1 to ") and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in (out / "run").iterdir()) == ["checkpoint.npz"]


class _StepRecorder:
    """The demo's progress bar replaced: records the steps it is shown and, at step ``signal_at``, signals the process
    as a Ctrl-C (or an app's SIGTERM) would."""

    def __init__(self, signal_at: int | None, signum: int) -> None:
        self.signal_at, self.signum, self.steps = signal_at, signum, []

    def __call__(self, progress) -> None:
        if progress.event in ("step", "eval"):  # (the demo evaluates every step at this length)
            self.steps.append(progress.step)
            if progress.step == self.signal_at:
                os.kill(os.getpid(), self.signum)

    def close(self) -> None:
        pass


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_demo_stopped_during_training_resumes_at_the_step_it_stopped(tiny_export, photos, tmp_path, capsys,
                                                                       monkeypatch, signum):
    """A Ctrl-C or SIGTERM during the demo's training interrupted the step and kept only the last periodic checkpoint
    (every 2 steps here): the next demo redid the steps since. Now it stops after the current step, saves it, and
    the next demo starts at the step after it, as `zoodip personalize` does."""
    monkeypatch.setattr(demo, "prepare", lambda out, progress: (photos, tiny_export, None))
    argv = ["--out", str(tmp_path / "demo"), "--steps", "10", "--threads", "1", "--no-progress"]
    stopped = _StepRecorder(signal_at=3, signum=signum)
    monkeypatch.setattr(demo, "ProgressBar", lambda total, enabled: stopped)
    assert demo.main(argv) == 128 + signum
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("interrupted: what the demo finished in --out is kept") and stopped.steps == [1, 2, 3]
    resumed = _StepRecorder(signal_at=None, signum=signum)
    monkeypatch.setattr(demo, "ProgressBar", lambda total, enabled: resumed)
    assert demo.main(argv) == 0
    assert resumed.steps == list(range(4, 11)), resumed.steps

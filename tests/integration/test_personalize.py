"""The personalization loop on the tiny INT8 export: it learns, it resumes exactly, it stops cleanly."""
from __future__ import annotations

import dataclasses
import json
import threading

import numpy as np
import pytest

from zoodip.api import PersonalizationJob, progress_to_json
from zoodip.embeddings import load_embedding_file, read_embedding_metadata
from zoodip.errors import ZoodipError
from zoodip.step_inputs import step_rng
from zoodip.trainer import (CHECKPOINT_NAME, EMBEDDING_NAME, LOG_NAME, SNAPSHOT_NAME, PersonalizeConfig, Personalizer,
                            personalize)

TOKEN = "<striped-star>"


def make_config(export, photos, out, **overrides) -> PersonalizeConfig:
    settings = dict(export_dir=export, images=photos, output_dir=out, placeholder_token=TOKEN,
                    initializer_token="star", max_train_steps=12, eval_every=6, eval_timesteps=2,
                    checkpoint_every=4, tau=4, threads=1)
    settings.update(overrides)
    return PersonalizeConfig(**settings)


def test_short_run_lowers_the_evaluation_loss(tiny_export, photos, tmp_path):
    config = make_config(tiny_export, photos, tmp_path / "run", max_train_steps=60, eval_every=30,
                         learning_rate=5e-2, tau=16)
    events = []
    result = personalize(config, on_progress=events.append)
    assert result.status == "done" and result.steps == 60
    assert [s for s, _ in result.eval_history] == [0, 30, 60]
    assert result.final_eval_loss < result.initial_eval_loss
    # The learned vector moved away from the initializer and is what the file holds.
    token, vectors = load_embedding_file(result.embedding_path)
    assert token == TOKEN and vectors.shape == (1, 32)
    log = [json.loads(line) for line in (tmp_path / "run" / LOG_NAME).read_text().splitlines()]
    assert log[0] == {"step": 0, "eval_loss": result.initial_eval_loss}
    assert [r["step"] for r in log[1:]] == list(range(1, 61))
    assert any("kept_dims" in r for r in log)  # Subspace Gradient fitted (tau=16 < 60 steps)
    assert events[-1].event == "done" and events[-1].forwards > 3 * 60
    json.loads(progress_to_json(events[-1]))  # the JSON-lines contract holds for real events


def test_a_run_whose_folder_goes_away_stops_in_one_line_and_does_not_remake_it(tiny_export, photos, tmp_path):
    """The next checkpoint's write made the folder again and the run finished without its config.json, its log
    starting mid-run."""
    import shutil
    config = make_config(tiny_export, photos, tmp_path / "run")

    def remove_at_five(progress):
        if progress.step == 5 and progress.event == "step":
            shutil.rmtree(tmp_path / "run")
    went_away = (r"^the run folder \S+run went away during the run \(removed, moved, or replaced by another\): if you "
                 r"moved it, resume it where it is now with resume=True; else start the run again$")
    with pytest.raises(ZoodipError, match=went_away):
        personalize(config, on_progress=remove_at_five)
    assert not (tmp_path / "run").exists()

    def replace_at_five(progress):  # another folder in its place: the run wrote on there, without its config.json
        if progress.step == 5 and progress.event == "step":
            (tmp_path / "run").rename(tmp_path / "moved")
            (tmp_path / "run").mkdir()
    with pytest.raises(ZoodipError, match=went_away):
        personalize(config, on_progress=replace_at_five)
    assert not (tmp_path / "run").exists()  # nothing written there (the run's start made "run": left as it was, empty)
    personalize(dataclasses.replace(config, output_dir=tmp_path / "moved"), resume=True)  # where it is now


def _final_bytes(out) -> bytes:
    return (out / EMBEDDING_NAME).read_bytes()


@pytest.mark.parametrize("adam_state_dtype,schedule", [
    ("float64", {}), ("float16", {}),
    # The rate depends on the step only: a schedule resumes bit-exactly without storing anything.
    ("float64", {"lr_scheduler": "cosine", "lr_warmup_steps": 3}),
    ("float64", {"lr_scheduler": "linear", "lr_warmup_steps": 5}),
    ("float64", {"num_vectors": 2}),  # the checkpoint holds the two vectors, flattened
    ("float64", {"directions": "orthogonal", "n": 3}),  # the frame is a pure function of the step's draw
    ("float64", {"orthogonal_after": 9, "orthogonal_n": 3}),  # the phase is a pure function of the step
])
def test_interrupted_and_resumed_run_is_bit_identical(tiny_export, photos, tmp_path, adam_state_dtype, schedule):
    straight = make_config(tiny_export, photos, tmp_path / "straight", adam_state_dtype=adam_state_dtype, **schedule)
    personalize(straight)

    # Crash at step 6: the last checkpoint is from step 4, so steps 5-6 are redone after resuming.
    crashing = make_config(tiny_export, photos, tmp_path / "resumed", adam_state_dtype=adam_state_dtype, **schedule)

    class Crash(Exception):
        pass

    def crash_at_six(progress):
        if progress.step == 6 and progress.event in ("step", "eval"):
            raise Crash()

    with pytest.raises(Crash):
        personalize(crashing, on_progress=crash_at_six)
    assert not (tmp_path / "resumed" / EMBEDDING_NAME).exists()
    result = personalize(crashing, resume=True)
    assert result.steps == 12
    assert _final_bytes(tmp_path / "resumed") == _final_bytes(tmp_path / "straight")
    a = np.load(tmp_path / "straight" / CHECKPOINT_NAME)
    b = np.load(tmp_path / "resumed" / CHECKPOINT_NAME)
    assert sorted(a.files) == sorted(b.files)
    for key in a.files:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert a["opt/exp_avg"].dtype == a["opt/exp_avg_sq"].dtype == np.dtype(adam_state_dtype)
    # The log of the resumed run reads like one uninterrupted run.
    log = [json.loads(line) for line in (tmp_path / "resumed" / LOG_NAME).read_text().splitlines()]
    assert [r["step"] for r in log] == [0] + list(range(1, 13))
    if "lr_scheduler" in schedule:  # the log records the rate each step used: warmup from 0, then down to 0 at the end
        rates = [r["lr"] for r in log[1:]]
        assert rates[0] == 0.0 and max(rates) == pytest.approx(straight.learning_rate)
        assert rates[-1] < rates[schedule["lr_warmup_steps"]]


def test_evaluation_mode_defaults_by_unet_size(tiny_export, photos, tmp_path, monkeypatch):
    import zoodip.denoising_loss as denoising_loss

    assert Personalizer(make_config(tiny_export, photos, tmp_path / "small")).loss.batched  # tiny UNet: one batch
    monkeypatch.setattr(denoising_loss, "AUTO_BATCH_MAX_UNET_BYTES", 1000)  # as if the UNet were SD-size
    assert not Personalizer(make_config(tiny_export, photos, tmp_path / "big")).loss.batched
    assert Personalizer(make_config(tiny_export, photos, tmp_path / "asked", batched=True)).loss.batched


def test_sequential_mode_matches_batched_closely(tiny_export, photos, tmp_path):
    batched = personalize(make_config(tiny_export, photos, tmp_path / "b", max_train_steps=4, eval_every=0, batched=True))
    sequential = personalize(make_config(tiny_export, photos, tmp_path / "s", max_train_steps=4, eval_every=0, batched=False))
    _, vb = load_embedding_file(batched.embedding_path)
    _, vs = load_embedding_file(sequential.embedding_path)
    np.testing.assert_allclose(vb, vs, atol=1e-3)


def test_job_api_cancel_then_resume(tiny_export, photos, tmp_path):
    config = make_config(tiny_export, photos, tmp_path / "job", max_train_steps=40, eval_every=0)
    stop_here = threading.Event()

    def on_progress(progress):
        if progress.step >= 5:
            stop_here.set()

    job = PersonalizationJob(config, on_progress=on_progress).start()
    assert stop_here.wait(60)
    job.cancel()
    result = job.wait(60)
    assert result is not None and result.status == "cancelled" and 5 <= result.steps < 40
    assert (tmp_path / "job" / CHECKPOINT_NAME).is_file()
    # A cancelled run still leaves what it learned, named as a --save_steps snapshot of its last step.
    assert result.embedding_path == tmp_path / "job" / SNAPSHOT_NAME.format(step=result.steps)
    assert read_embedding_metadata(result.embedding_path)["steps"] == str(result.steps)
    assert not (tmp_path / "job" / EMBEDDING_NAME).exists()  # the final name is kept for a finished run
    resumed = PersonalizationJob(config, resume=True).run()
    assert resumed.status == "done" and resumed.steps == 40 and resumed.embedding_path.is_file()


def test_early_stopping_keeps_the_best_embedding(tiny_export, photos, tmp_path, monkeypatch):
    config = make_config(tiny_export, photos, tmp_path / "early", max_train_steps=50, eval_every=2,
                         early_stop_patience=2)
    trainer = Personalizer(config)
    planted = iter([5.0, 4.0, 3.0, 3.5, 3.2, 1.0])  # best at the 3rd evaluation (step 4), then 2 worse ones
    seen = {}

    def fake_eval(v):
        seen[trainer.step] = v.copy()
        return next(planted)

    monkeypatch.setattr(trainer, "evaluation_loss", fake_eval)
    result = trainer.run()
    assert result.status == "early-stopped" and result.steps == 8
    assert result.best_eval_loss == 3.0
    _, vectors = load_embedding_file(result.embedding_path)
    np.testing.assert_array_equal(vectors[0], seen[4])


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_checkpoint(tiny_export, photos, tmp_path, monkeypatch):
    config = make_config(tiny_export, photos, tmp_path / "nan", eval_every=0)
    trainer = Personalizer(config)
    original = trainer.loss.__class__.__call__

    def poisoned(self, ids, candidates, x_t, t, target):
        losses = original(self, ids, candidates, x_t, t, target)
        return losses * np.nan if trainer.step >= 5 else losses

    monkeypatch.setattr(trainer.loss.__class__, "__call__", poisoned)
    with pytest.raises(ZoodipError, match="nan at step 5"):
        trainer.run()
    saved = np.load(tmp_path / "nan" / CHECKPOINT_NAME)
    assert int(saved["step"]) == 4 and np.all(np.isfinite(saved["v"]))
    assert not (tmp_path / "nan" / EMBEDDING_NAME).exists()


def test_disk_full_during_checkpoint_keeps_the_previous_one(tiny_export, photos, tmp_path, monkeypatch):
    import os

    config = make_config(tiny_export, photos, tmp_path / "full", eval_every=0)
    trainer = Personalizer(config)
    real_fsync = os.fsync
    calls = {"n": 0}

    def fsync_then_fail(fd):
        calls["n"] += 1
        if calls["n"] >= 2:  # the first checkpoint (step 0) succeeds, the next hits a full disk
            raise OSError(28, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync_then_fail)
    with pytest.raises(ZoodipError, match="disk is full; the previous version is intact: free space and resume with "
                                          "resume=True"):
        trainer.run()
    folder = tmp_path / "full"
    assert int(np.load(folder / CHECKPOINT_NAME)["step"]) == 0
    assert [p.name for p in folder.iterdir() if ".tmp" in p.name] == []


def test_disk_full_at_the_first_checkpoint_says_run_again(tiny_export, photos, tmp_path, monkeypatch):
    """The fresh run's folder is removed: "resume with --resume" would answer "nothing to resume"."""
    import os

    def full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(ZoodipError, match=r"disk is full: free space and run again$"):
        personalize(make_config(tiny_export, photos, tmp_path / "first", eval_every=0))
    assert not (tmp_path / "first").exists()


def test_a_fresh_run_never_replaces_another_tools_embedding(tiny_export, photos, tmp_path):
    """diffusers' textual_inversion.py writes the same file name: an old output folder lost its embedding."""
    out = tmp_path / "diffusers-run"
    out.mkdir()
    (out / "learned_embeds.safetensors").write_bytes(b"someone else's")
    with pytest.raises(ZoodipError, match="already holds learned_embeds.safetensors, which a fresh run would replace: move it"):
        personalize(make_config(tiny_export, photos, out, max_train_steps=2, eval_every=0))
    assert sorted(p.name for p in out.iterdir()) == ["learned_embeds.safetensors"]
    assert (out / "learned_embeds.safetensors").read_bytes() == b"someone else's"


def test_a_folder_that_cannot_take_the_run_is_refused_before_the_model_loads(tiny_export, photos, tmp_path,
                                                                             monkeypatch):
    """Refused only after the model loaded, the photos were encoded and the search space was chosen (minutes of SD)."""
    import zoodip.trainer

    def no_setup(*args, **kwargs):
        raise AssertionError("the run was set up")
    monkeypatch.setattr(zoodip.trainer.Personalizer, "__init__", no_setup)
    out = tmp_path / "r"
    out.mkdir()
    with pytest.raises(ZoodipError, match=r"^nothing to resume: \S+checkpoint\.npz does not exist"):
        personalize(make_config(tiny_export, photos, out), resume=True)
    (out / "checkpoint.npz").mkdir()
    for resume in (True, False):  # (not "pass --resume", which then said "start without --resume")
        with pytest.raises(ZoodipError, match=r"checkpoint \S+ is not a file: remove it and start again without"):
            personalize(make_config(tiny_export, photos, out), resume=resume)
    (out / "checkpoint.npz").rmdir()
    (out / "checkpoint.npz").write_bytes(b"a run's")
    with pytest.raises(ZoodipError, match="already holds a run"):
        personalize(make_config(tiny_export, photos, out))
    (out / "checkpoint.npz").unlink()
    (out / "learned_embeds.safetensors").write_bytes(b"another tool's")
    with pytest.raises(ZoodipError, match="already holds learned_embeds.safetensors"):
        personalize(make_config(tiny_export, photos, out))
    (out / "learned_embeds.safetensors").unlink()
    (out / "striped-star.safetensors").write_bytes(b"an A1111 embedding")  # (--a1111's file: it was replaced)
    with pytest.raises(ZoodipError, match="already holds striped-star.safetensors, which a fresh run would replace"):
        personalize(make_config(tiny_export, photos, out, a1111=True))
    with pytest.raises(ZoodipError, match=r"^output_dir \S+ is an existing file"):  # (not "nothing to resume")
        personalize(make_config(tiny_export, photos, out / "striped-star.safetensors"), resume=True)


def test_a_fresh_start_writes_its_own_config_and_keeps_the_users_links(tiny_export, photos, tmp_path):
    """A config.json link into another run's folder had that run's settings replaced; a failed start deleted the
    user's checkpoint link and named its target, not checkpoint.npz."""
    (tmp_path / "other").mkdir()
    settings = json.dumps({"placeholder_token": "<other>", "export_dir": "m", "seed": 5})  # another run's
    (tmp_path / "other" / "config.json").write_text(settings)
    out = tmp_path / "r"
    out.mkdir()
    (out / "config.json").symlink_to(tmp_path / "other" / "config.json")
    personalize(make_config(tiny_export, photos, out, max_train_steps=2, eval_every=0))
    assert (tmp_path / "other" / "config.json").read_text() == settings
    assert not (out / "config.json").is_symlink() and json.loads((out / "config.json").read_text())["seed"] == 0
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "checkpoint.npz").symlink_to(tmp_path / "no-such-folder" / "c.npz")
    with pytest.raises(ZoodipError, match=r"^\S+linked/checkpoint\.npz links into \S+no-such-folder, a folder this "
                                          r"process cannot write \(or that is not there\)"):  # before the work
        personalize(make_config(tiny_export, photos, linked, max_train_steps=2, eval_every=0))
    assert (linked / "checkpoint.npz").is_symlink() and sorted(p.name for p in linked.iterdir()) == ["checkpoint.npz"]
    project = tmp_path / "project"  # (--output_dir . in a project: its own config.json and log.jsonl were deleted)
    project.mkdir()
    for name, text in (("config.json", '{"name": "my-app"}'), ("log.jsonl", "server started\n"),
                       ("config.json", '{"export_dir": "build", "app": "my-site"}'), ("log.jsonl", "\nserver up\n")):
        (project / name).write_text(text)
        with pytest.raises(ZoodipError, match=rf"already holds {name}, which is not a zoodip run's"):
            personalize(make_config(tiny_export, photos, project, max_train_steps=2, eval_every=0))
        (project / name).unlink()
    killed = tmp_path / "killed"  # a start killed before its first checkpoint: its own files, started anew
    personalize(make_config(tiny_export, photos, killed, max_train_steps=2, eval_every=0))
    (killed / "checkpoint.npz").unlink()
    (killed / "learned_embeds.safetensors").unlink()
    assert personalize(make_config(tiny_export, photos, killed, max_train_steps=2, eval_every=0)).status == "done"
    (killed / "checkpoint.npz").unlink()
    (killed / "learned_embeds.safetensors").unlink()
    (killed / "config.json").write_text('{\n  "export_d')  # torn by a power cut mid-write, as its log
    (killed / "log.jsonl").write_bytes(b'{"st')
    assert personalize(make_config(tiny_export, photos, killed, max_train_steps=2, eval_every=0)).status == "done"


def test_resume_refuses_other_settings_and_fresh_run_refuses_existing(tiny_export, photos, tmp_path):
    out = tmp_path / "r"
    personalize(make_config(tiny_export, photos, out, max_train_steps=2, eval_every=0))
    with pytest.raises(ZoodipError, match="already holds a run"):
        personalize(make_config(tiny_export, photos, out, max_train_steps=2, eval_every=0))
    with pytest.raises(ZoodipError, match=r"other settings \(mu differs\)"):  # named, from the folder's config.json
        personalize(make_config(tiny_export, photos, out, max_train_steps=4, eval_every=0, mu=2e-3), resume=True)
    with pytest.raises(ZoodipError, match=r"other settings \(learning_rate, seed differ\)"):
        personalize(make_config(tiny_export, photos, out, max_train_steps=4, eval_every=0, seed=5, learning_rate=0.5),
                    resume=True)
    # The default settings keep the fingerprint the code made before the Adam state dtype existed,
    # so older checkpoints still resume.
    assert make_config(tiny_export, photos, out).fingerprint() == "1f0a1d039f6b4c2d"
    with pytest.raises(ZoodipError, match=r"other settings \(adam_state_dtype differs\)"):  # part of the run
        personalize(make_config(tiny_export, photos, out, max_train_steps=4, eval_every=0,
                                adam_state_dtype="float16"), resume=True)
    with pytest.raises(ZoodipError, match=r"other settings \(memory_budget_mb differs\)"):  # not "batched"
        personalize(make_config(tiny_export, photos, out, max_train_steps=4, eval_every=0, memory_budget_mb=4000),
                    resume=True)
    linear = make_config(tiny_export, photos, tmp_path / "linear", max_train_steps=2, eval_every=0, lr_scheduler="linear")
    personalize(linear)  # its rates follow the run's length: a longer resume is another run, and the refusal says why
    with pytest.raises(ZoodipError, match=r"\(max_train_steps \(which lr_scheduler='linear' follows\) differs\)"):
        personalize(dataclasses.replace(linear, max_train_steps=4), resume=True)
    with pytest.raises(ZoodipError, match=r"\(lr_warmup_steps differs\)"):  # not "lr_scheduler", which is the same
        personalize(dataclasses.replace(linear, lr_warmup_steps=1), resume=True)
    with pytest.raises(ZoodipError, match=r"\(lr_scheduler differs\)"):  # not max_train_steps, which is the same
        personalize(dataclasses.replace(linear, lr_scheduler="constant"), resume=True)
    with pytest.raises(ZoodipError, match="nothing to resume"):
        personalize(make_config(tiny_export, photos, tmp_path / "none", eval_every=0), resume=True)


def test_a_second_run_in_a_folder_in_use_is_refused_and_leaves_the_first_runs_files(tiny_export, photos, tmp_path):
    # Two runs in one folder would delete each other's in-flight temp files and interleave checkpoints.
    import signal
    import subprocess
    import sys

    from zoodip.paths import RUN_LOCK_NAME, run_folder_lock

    out = tmp_path / "busy"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys; from pathlib import Path; from zoodip.paths import run_folder_lock\n"
        f"with run_folder_lock(Path({str(out)!r})):\n    print('held', flush=True); sys.stdin.read()")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        in_flight = out / f".{CHECKPOINT_NAME}.tmp-{holder.pid}-abc"
        in_flight.write_bytes(b"the other run's half-written checkpoint")
        with pytest.raises(ZoodipError, match="is in use by another zoodip run: wait for it to end, or choose"):
            personalize(make_config(tiny_export, photos, out, max_train_steps=2, eval_every=0))
        assert in_flight.exists() and not (out / CHECKPOINT_NAME).exists()
        (out / RUN_LOCK_NAME).unlink()  # taken for a killed run's leftover: the folder's own lock still holds
        with pytest.raises(ZoodipError, match="is in use by another zoodip run"):
            personalize(make_config(tiny_export, photos, out, max_train_steps=2, eval_every=0))
    finally:
        holder.send_signal(signal.SIGKILL)  # the lock dies with its process: never stale
        holder.wait()
    personalize(make_config(tiny_export, photos, out, max_train_steps=2, eval_every=0))
    assert (out / EMBEDDING_NAME).is_file() and not (out / RUN_LOCK_NAME).exists()
    # A run that fails before writing anything leaves no folder behind, the lock's included.
    empty = tmp_path / "never"
    with pytest.raises(ZoodipError):
        personalize(make_config(tiny_export, photos, empty, max_train_steps=2, eval_every=0), resume=True)
    assert not empty.exists()
    with run_folder_lock(empty):  # and the lock is free again after it
        assert (empty / RUN_LOCK_NAME).exists()


def test_captions_are_used_and_checked(tiny_export, photos, tmp_path):
    names = sorted(p.name for p in photos.iterdir())
    good = tmp_path / "captions.json"
    good.write_text(json.dumps({name: f"a photo of {TOKEN} on blue" for name in names}))
    result = personalize(make_config(tiny_export, photos, tmp_path / "cap", max_train_steps=2, eval_every=2, captions=good))
    assert result.status == "done"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({names[0]: "a photo without the token"}))
    with pytest.raises(ZoodipError):
        personalize(make_config(tiny_export, photos, tmp_path / "cap2", captions=bad))


def test_diffusers_loads_the_learned_embedding(tiny_sd_folder, tiny_export, photos, tmp_path):
    """The output is a diffusers textual-inversion file: load_textual_inversion accepts it unchanged."""
    diffusers = pytest.importorskip("diffusers")
    result = personalize(make_config(tiny_export, photos, tmp_path / "ti", max_train_steps=3, eval_every=0))
    _, learned = load_embedding_file(result.embedding_path)
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(tiny_sd_folder, safety_checker=None)
    pipe.load_textual_inversion(str(result.embedding_path))
    token_id = pipe.tokenizer.convert_tokens_to_ids(TOKEN)
    row = pipe.text_encoder.get_input_embeddings().weight[token_id].detach().numpy()
    np.testing.assert_array_equal(row, learned[0])
    assert pipe.tokenizer(f"a photo of {TOKEN}").input_ids[4] == token_id


def test_sigkilled_cli_run_resumes_to_the_same_bytes(tiny_export, photos, tmp_path):
    """A real kill -9 in the middle of a CLI run, then --resume: same embedding as a clean run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    def args(out):
        return [sys.executable, "-m", "zoodip.cli", "personalize", "--model", str(tiny_export),
                "--train_data_dir", str(photos), "--output_dir", str(out), "--placeholder_token", TOKEN,
                "--initializer_token", "star", "--max_train_steps", "160", "--eval-every", "80",
                "--tau", "16", "--checkpointing_steps", "7", "--threads", "1", "--no-progress"]

    subprocess.run(args(tmp_path / "clean"), check=True, capture_output=True)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(args(killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    log = killed / LOG_NAME
    while time.monotonic() < deadline and proc.poll() is None:
        if log.is_file() and log.read_text().count("\n") >= 40:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the run finished before it could be killed; make it longer"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / EMBEDDING_NAME).exists()
    resumed = subprocess.run(args(killed) + ["--resume"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert _final_bytes(killed) == _final_bytes(tmp_path / "clean")


def test_subspace_history_wider_than_the_embedding_warns(tiny_export, photos, tmp_path):
    with pytest.warns(UserWarning, match="embedding width 32"):
        Personalizer(make_config(tiny_export, photos, tmp_path / "w", tau=64))


def test_vocabulary_subspace_keeps_the_embedding_in_the_vocabularys_span(tiny_export, photos, tmp_path):
    from zoodip.vocabulary import VocabularySubspace

    plain = make_config(tiny_export, photos, tmp_path / "p")
    # ZO-SGD: its update is the estimate itself, so v stays in the span (ZO-Adam's per-coordinate
    # scaling lets its updates leave it a little).
    config = make_config(tiny_export, photos, tmp_path / "v", vocabulary_variance=0.5, subspace=False,
                         optimizer="sgd", learning_rate=1.0, eval_every=0, checkpoint_every=0)
    assert plain.fingerprint() != make_config(tiny_export, photos, tmp_path / "p", vocabulary_variance=0.5).fingerprint()
    personalizer = Personalizer(config)
    sub = VocabularySubspace.fit(personalizer.model.token_embeddings, 0.5)
    assert 1 <= sub.k < 32 and personalizer.estimator.search_dim == sub.k
    personalizer.run()
    moved = personalizer.v.astype(np.float64) - personalizer.v_init
    assert np.linalg.norm(moved) > 0
    np.testing.assert_allclose(sub.basis @ (sub.basis.T @ moved), moved, atol=1e-5 * np.linalg.norm(moved) + 1e-7)
    with pytest.raises(ZoodipError, match="vocabulary_variance must be a variance fraction"):
        Personalizer(make_config(tiny_export, photos, tmp_path / "bad", vocabulary_variance=1.5))


def test_vocabulary_subspace_with_subspace_gradient_normalizes_by_the_projected_basis(tiny_export, photos, tmp_path):
    """The estimate's dimension is E||P B u||^2 of the directions actually drawn, not k - removed_dims."""
    # nu = 0.2: the fits of an 8-step history remove directions (nu = 1e-3 keeps them all here).
    config = make_config(tiny_export, photos, tmp_path / "vs", vocabulary_variance=0.5, eval_every=0,
                         checkpoint_every=0, learning_rate=5e-2, tau=8, nu=0.2, max_train_steps=20)
    personalizer = Personalizer(config)
    basis, projector = personalizer.estimator.basis.astype(np.float64), personalizer.projector
    estimate = personalizer.estimator.estimate
    seen = []

    def recording_estimate(loss0, losses, z, effective_dim=None):
        drawn = sum(float(np.sum(np.square(projector.project(b)))) for b in basis.T)  # sum_j ||P b_j||^2
        seen.append((projector.removed_dims, effective_dim, max(1.0, drawn)))
        return estimate(loss0, losses, z, effective_dim=effective_dim)

    personalizer.estimator.estimate = recording_estimate
    personalizer.run()
    fitted = [(removed, used, drawn) for removed, used, drawn in seen if removed > 0]
    assert fitted, "Subspace Gradient never removed a direction: the test has no power"
    for _, used, drawn in seen:
        assert used == pytest.approx(drawn, rel=1e-6)


def test_save_steps_snapshots_carry_their_run_in_the_header(tiny_export, photos, tmp_path):
    out = tmp_path / "snap"
    result = personalize(make_config(tiny_export, photos, out, save_steps=5, eval_every=0))
    names = sorted(p.name for p in out.glob("learned_embeds-steps-*.safetensors"))
    assert names == ["learned_embeds-steps-10.safetensors", "learned_embeds-steps-5.safetensors"]
    final_token, final = load_embedding_file(result.embedding_path)
    token, snapshot = load_embedding_file(out / "learned_embeds-steps-10.safetensors")
    assert token == final_token == TOKEN and not np.array_equal(snapshot, final)  # 2 steps apart
    meta = read_embedding_metadata(result.embedding_path)
    assert meta["steps"] == "12" and int(meta["forwards"]) == 12 * 3  # n=2: 3 forwards a step
    assert meta["model"] == Personalizer(make_config(tiny_export, photos, tmp_path / "x")).model_id
    settings = json.loads(meta["settings"])
    assert settings["n"] == 2 and settings["tau"] == 4 and settings["lr_scheduler"] == "constant"
    assert read_embedding_metadata(out / "learned_embeds-steps-5.safetensors")["steps"] == "5"


def test_other_tools_read_the_embedding_and_ignore_the_metadata(tiny_export, photos, tmp_path):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    result = personalize(make_config(tiny_export, photos, tmp_path / "o", max_train_steps=2, eval_every=0))
    tensors = safetensors_numpy.load_file(str(result.embedding_path))
    _, learned = load_embedding_file(result.embedding_path)
    assert list(tensors) == [TOKEN]
    np.testing.assert_array_equal(tensors[TOKEN], learned)


def test_schedule_settings_are_part_of_the_run(tiny_export, photos, tmp_path):
    base = make_config(tiny_export, photos, tmp_path / "f")
    cosine = make_config(tiny_export, photos, tmp_path / "f", lr_scheduler="cosine", lr_warmup_steps=2)
    assert base.fingerprint() != cosine.fingerprint()
    longer = make_config(tiny_export, photos, tmp_path / "f", lr_scheduler="cosine", lr_warmup_steps=2, max_train_steps=99)
    assert longer.fingerprint() != cosine.fingerprint()  # cosine's rates depend on the run's length
    with pytest.warns(UserWarning, match="no effect with lr_scheduler='constant'"):
        Personalizer(make_config(tiny_export, photos, tmp_path / "w", lr_warmup_steps=3))
    with pytest.raises(ZoodipError, match="lr_scheduler must be one of"):
        make_config(tiny_export, photos, tmp_path / "bad", lr_scheduler="step").validate()


def test_vae_sampling_per_step_draws_a_fresh_posterior_sample(tiny_export, photos, tmp_path):
    """--vae-sampling per-step (the authors' and diffusers' way): latents hold the posterior means, each step adds
    its own sample of the posterior noise, drawn after the step's other draws (which keep their order)."""
    once = Personalizer(make_config(tiny_export, photos, tmp_path / "once"))
    fresh = Personalizer(make_config(tiny_export, photos, tmp_path / "fresh", vae_sampling="per-step"))
    assert once.latent_std is None and fresh.latent_std.shape == fresh.latents.shape
    assert np.all(fresh.latent_std > 0)
    # The cached "once" latent is one posterior sample: within a few stds of the mean, not equal to it.
    z_score = (once.latents - fresh.latents) / fresh.latent_std
    assert 0.5 < float(np.std(z_score)) < 2.0
    a, b = (fresh.draw_inputs(step_rng(0, 7)) for _ in range(2))
    c = once.draw_inputs(step_rng(0, 7))
    np.testing.assert_array_equal(a.x_t, b.x_t)  # a pure function of (seed, step): resumes redraw it
    assert (a.photo, a.view, a.t, a.prompt) == (c.photo, c.view, c.t, c.prompt)
    np.testing.assert_array_equal(a.noise, c.noise)
    assert not np.allclose(a.x_t, c.x_t, atol=1e-3)  # same draws, another sample of the photo's posterior
    assert once.config.fingerprint() != fresh.config.fingerprint()
    with pytest.raises(ZoodipError, match="vae_sampling must be one of once, per-step"):
        make_config(tiny_export, photos, tmp_path / "bad", vae_sampling="always").validate()


def test_two_phase_run_spends_the_forwards_its_schedule_says(tiny_export, photos, tmp_path):
    config = make_config(tiny_export, photos, tmp_path / "two", orthogonal_after=9)
    trainer = Personalizer(config)
    k = trainer.estimator.search_dim
    assert trainer.estimator.basis is not None and trainer.estimators.switch_step == 3 and trainer.estimators.late.n == k
    result = trainer.run()
    assert result.forwards == 3 * 3 + 9 * (k + 1)  # 3 Gaussian steps of n = 2, then 9 orthogonal frames of k
    settings = json.loads(read_embedding_metadata(result.embedding_path)["settings"])
    assert settings["orthogonal_after"] == 9 and settings["orthogonal_n"] == k
    assert "orthogonal_after" not in json.loads(read_embedding_metadata(
        personalize(make_config(tiny_export, photos, tmp_path / "one")).embedding_path)["settings"])
    # A different phase is a different run: its checkpoint does not resume the one-phase run.
    assert config.fingerprint() != make_config(tiny_export, photos, tmp_path / "two").fingerprint()


def test_warmup_with_the_constant_rate_warns_at_the_callers_line(tiny_export, photos, tmp_path):
    with pytest.warns(UserWarning, match="lr_warmup_steps=3 has no effect with lr_scheduler='constant'") as caught:
        Personalizer(make_config(tiny_export, photos, tmp_path / "w", lr_warmup_steps=3))
    assert [w.filename for w in caught if "lr_warmup" in str(w.message)] == [__file__]
    config = make_config(tiny_export, photos, tmp_path / "long", lr_scheduler="linear", lr_warmup_steps=50,
                         max_train_steps=4)
    with pytest.warns(UserWarning, match=r"lr_warmup_steps=50 is longer than the run \(max_train_steps=4\): the "
                                         "learning rate never reaches learning_rate"):
        Personalizer(config)


@pytest.mark.parametrize("settings, words", [
    ({"subspace": False, "tau": 8, "nu": 0.01}, "tau=8 and nu=0.01 change nothing: subspace=False turns Subspace "
                                                "Gradient off"),
    ({"eval_every": 0, "early_stop_patience": 3}, "early_stop_patience=3 changes nothing: eval_every=0 turns the "
                                                  "evaluation loss off"),
    ({"validation_steps": 5}, "validation_steps=5 changes nothing: previews need a validation_prompt"),
])
def test_settings_another_setting_turns_off_are_said(tiny_export, photos, tmp_path, settings, words):
    """Found by a sweep: accepted and ignored without a word."""
    with pytest.warns(UserWarning, match=words):
        Personalizer(make_config(tiny_export, photos, tmp_path / "w", **settings))


def test_numpy_numbers_in_the_config_are_the_numbers_they_equal(tiny_export, photos, tmp_path):
    """np.int64 / np.float32 settings (an app's habit) ran every step, then failed to write the embedding's JSON
    header, leaving a run folder that neither a fresh run nor a resume accepted."""
    plain = make_config(tiny_export, photos, tmp_path / "plain", max_train_steps=2, eval_every=0, seed=3,
                        learning_rate=0.01, t_range=(500, 900))
    numpy = make_config(tiny_export, photos, tmp_path / "numpy", max_train_steps=np.int64(2), eval_every=0,
                        seed=np.int64(3), learning_rate=np.float32(0.01), t_range=(np.int64(500), np.int64(900)))
    result = personalize(numpy)
    assert result.status == "done" and result.embedding_path.is_file()
    assert numpy.fingerprint() == make_config(tiny_export, photos, tmp_path / "x", max_train_steps=2, eval_every=0,
                                              seed=3, learning_rate=float(np.float32(0.01)),
                                              t_range=(500, 900)).fingerprint()
    assert type(numpy.seed) is int and plain.seed == numpy.seed
    with pytest.raises(ZoodipError, match="threads must be an integer from 0"):
        personalize(make_config(tiny_export, photos, tmp_path / "t", threads=10**6))
    assert not (tmp_path / "t").exists()


def test_job_api_misuse_is_one_clear_error(tiny_export, photos, tmp_path):
    """An app's mistakes: each a ZoodipError now, not an AttributeError later, nor a job that sets up to cancel."""
    config = make_config(tiny_export, photos, tmp_path / "job", max_train_steps=2, eval_every=0)
    with pytest.raises(ZoodipError, match="config must be a PersonalizeConfig"):
        PersonalizationJob(None)
    with pytest.raises(ZoodipError, match="on_progress must be callable"):
        PersonalizationJob(config, on_progress=5)
    job = PersonalizationJob(config)
    with pytest.raises(ZoodipError, match="nothing to cancel"):
        job.cancel()
    with pytest.raises(ZoodipError, match="resume must be True or False, got 'yes'"):
        PersonalizationJob(config, resume="yes")
    assert PersonalizationJob(config, resume=np.bool_(False)).resume is False  # NumPy's bool is a bool
    job.start()
    # NaN reached Thread.join, whose error left the running thread marked as ended (then a bare AssertionError)
    for timeout in ("1", float("nan"), -1):
        with pytest.raises(ZoodipError, match="timeout must be a number of seconds"):
            job.wait(timeout=timeout)
    with pytest.raises(ZoodipError, match="already started"):  # a second run would share the folder, replace the outcome
        job.run()
    assert job.wait(float("inf")).status == "done" and job.wait(10**30).status == "done"  # past the OS's longest wait
    with pytest.raises(ZoodipError, match="already started"):
        job.start()
    ran = PersonalizationJob(make_config(tiny_export, photos, tmp_path / "ran", max_train_steps=2, eval_every=0))
    assert ran.run().status == "done"
    for again in (ran.start, ran.run):
        with pytest.raises(ZoodipError, match="already started"):
            again()
    with pytest.raises(ZoodipError, match="ran in the caller's thread"):
        ran.wait()
    assert ran.result.status == "done"


def test_an_on_progress_that_raises_stops_the_job_as_cancel_does(tiny_export, photos, tmp_path):
    """The app's callback error stopped the run where it was (the steps since the last checkpoint lost), and one
    raised at the last event turned a finished run into a failed job with no result."""
    class AppBug(Exception):
        pass

    def fails_at(event, step=0):
        def on_progress(progress):
            if progress.event == event and progress.step >= step:
                raise AppBug(event)
        return on_progress

    config = make_config(tiny_export, photos, tmp_path / "mid", max_train_steps=30, eval_every=0, checkpoint_every=50)
    job = PersonalizationJob(config, on_progress=fails_at("step", 5)).start()
    with pytest.raises(AppBug):
        job.wait(60)
    assert job.result.status == "cancelled" and job.result.steps == 5 and job.callback_error is not None
    assert PersonalizationJob(config, resume=True).run().steps == 30  # its checkpoint is the step it stopped at
    done = PersonalizationJob(make_config(tiny_export, photos, tmp_path / "end", max_train_steps=3, eval_every=0),
                              on_progress=fails_at("done")).start()
    with pytest.raises(AppBug):
        done.wait(60)
    assert done.result.status == "done" and done.result.embedding_path.is_file()
    early = PersonalizationJob(make_config(tiny_export, photos, tmp_path / "setup", eval_every=0),
                               on_progress=fails_at("setup")).start()
    with pytest.raises(AppBug):
        early.wait(60)
    with pytest.raises(ZoodipError, match="cancelled before its first step and learned nothing"):
        early.generate("a photo of " + TOKEN)


def test_config_fields_of_the_wrong_kind_are_one_clear_error(tiny_export, photos, tmp_path):
    for field, value, needle in (("initializer_token", 5, "initializer_token must be a string"),
                                 ("validation_prompt", 5, "validation_prompt must be a string"),
                                 ("export_dir", None, "export_dir must be a path"),
                                 ("output_dir", 3, "output_dir must be a path")):
        with pytest.raises(ZoodipError, match=needle):
            make_config(tiny_export, photos, tmp_path / "o", **{field: value})


def test_a_tokenizer_holding_tokens_added_before_trains_as_one_without(tiny_export, photos, tmp_path):
    import shutil

    from zoodip.model import ExportedModel

    copy = tmp_path / "export"
    shutil.copytree(tiny_export, copy)
    base = ExportedModel.load(tiny_export).token_embeddings.shape[0]
    (copy / "tokenizer" / "added_tokens.json").write_text(json.dumps({"<cat>": base}))  # a saved TI pipeline's
    plain = personalize(make_config(tiny_export, photos, tmp_path / "plain", max_train_steps=3, eval_every=3))
    added = personalize(make_config(copy, photos, tmp_path / "added", max_train_steps=3, eval_every=3))
    assert added.eval_history == plain.eval_history  # the placeholder's id is another; nothing else is
    assert np.array_equal(load_embedding_file(added.embedding_path)[1], load_embedding_file(plain.embedding_path)[1])


def test_run_files_linked_to_one_file_or_into_another_run_are_refused_before_the_work(tiny_export, photos, tmp_path):
    """An embedding and an --a1111 file linked to one file kept only the last written (exit 0); a folder copied as
    links (cp -rs) resumed into the original run's checkpoint, embedding and log."""
    store, out = tmp_path / "store", tmp_path / "r"
    store.mkdir(), out.mkdir()
    (out / "learned_embeds.safetensors").symlink_to(store / "same.safetensors")
    (out / "striped-star.safetensors").symlink_to(store / "same.safetensors")
    with pytest.raises(ZoodipError, match=r"learned_embeds.safetensors and striped-star.safetensors in \S+ are links "
                                          r"to one file \(\S+same.safetensors\)"):
        personalize(make_config(tiny_export, photos, out, max_train_steps=2, eval_every=0, a1111=True))
    assert not (store / "same.safetensors").exists()
    original = tmp_path / "original"
    personalize(make_config(tiny_export, photos, original, max_train_steps=2, eval_every=0))
    before = {path.name: path.read_bytes() for path in original.iterdir() if path.is_file()}
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in original.iterdir():
        (copy / path.name).symlink_to(path)
    with pytest.raises(ZoodipError, match=r"checkpoint.npz is a link into another run's folder \(\S+original\)"):
        personalize(make_config(tiny_export, photos, copy, max_train_steps=4, eval_every=0), resume=True)
    assert {path.name: path.read_bytes() for path in original.iterdir() if path.is_file()} == before
    stored, run = tmp_path / "storage", tmp_path / "linked-run"  # a checkpoint kept elsewhere, of the same name
    stored.mkdir(), run.mkdir()
    (run / "checkpoint.npz").symlink_to(stored / "checkpoint.npz")
    personalize(make_config(tiny_export, photos, run, max_train_steps=2, eval_every=0))
    assert personalize(make_config(tiny_export, photos, run, max_train_steps=3, eval_every=0), resume=True).steps == 3


def test_a_job_keeps_its_folders_when_the_host_changes_its_working_folder(tiny_export, photos, tmp_path, monkeypatch):
    """A relative output_dir followed the host's os.chdir: the run stopped as if its folder had gone, or wrote anew
    wherever the host had moved."""
    start, elsewhere = tmp_path / "start", tmp_path / "elsewhere"
    start.mkdir(), elsewhere.mkdir()
    monkeypatch.chdir(start)
    config = make_config(tiny_export, photos, "rel_out", max_train_steps=5, eval_every=0)
    job = PersonalizationJob(config)
    config.max_train_steps = 2  # the config as start() finds it
    job.start()
    monkeypatch.chdir(elsewhere)
    result = job.wait()
    assert result.status == "done" and result.steps == 2 and (start / "rel_out" / EMBEDDING_NAME).is_file()
    for value, said in (("", "^output_dir is empty"), (None, "output_dir must be a path")):  # refused as before
        config.output_dir = value
        with pytest.raises(ZoodipError, match=said):
            PersonalizationJob(config).start()
    assert not (elsewhere / "rel_out").exists() and result.embedding_path == start / "rel_out" / EMBEDDING_NAME


def test_an_a1111_file_named_as_a_word_is_warned_of_before_the_work(tiny_export, photos, tmp_path):
    """--placeholder_token '<star>' --a1111 wrote star.safetensors: A1111's trigger 'star', every star taken over,
    said nowhere (a warning, not a refusal: the default '<concept>' is such a word, and a run may be resumed)."""
    events = []
    with pytest.warns(UserWarning, match=r"a1111=True: A1111 calls the embedding by its file's name, 'star', a word of "
                                         r"the vocabulary.*e\.g\. '<my-star>'"):
        personalize(make_config(tiny_export, photos, tmp_path / "r", placeholder_token="<star>", a1111=True,
                                max_train_steps=1, eval_every=0), on_progress=events.append)
    assert (tmp_path / "r" / "star.safetensors").is_file()


def test_a_templated_run_resumes_from_another_folder(tiny_export, photos, tmp_path, monkeypatch):
    """The template file named relative to where the run started: a resume from elsewhere names it by another path
    (it was refused as "template_file differs"); config.json records absolute paths, the same files from anywhere."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "tmpl.txt").write_text("a photo of [name]\na picture of [name]\n")
    monkeypatch.chdir(tmp_path / "a")
    config = make_config(tiny_export, photos, tmp_path / "run", template_file="tmpl.txt", max_train_steps=4)
    personalize(config)
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())
    assert recorded["template_file"] == str(tmp_path / "a" / "tmpl.txt")
    assert recorded["images"] == str(photos.absolute())
    monkeypatch.chdir(tmp_path / "b")
    result = personalize(dataclasses.replace(config, template_file="../a/tmpl.txt", max_train_steps=8), resume=True)
    assert result.status == "done" and result.steps == 8


def test_a_checkpoint_from_before_text_files_were_named_still_resumes(tiny_export, photos, tmp_path, monkeypatch):
    """A run started with --template_file sub/tmpl.txt before the fingerprint held the file's name: its checkpoint
    holds the path as typed ("sub/tmpl.txt"); the same command with --resume was refused as "belongs to a run with
    other settings" after the upgrade."""
    from zoodip.config import PersonalizeConfig

    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "tmpl.txt").write_text("a photo of [name]\na picture of [name]\n")
    monkeypatch.chdir(tmp_path)
    config = make_config(tiny_export, photos, tmp_path / "run", template_file="sub/tmpl.txt", max_train_steps=2)
    named = PersonalizeConfig.fingerprint_payload
    with monkeypatch.context() as older:  # the writer of that time: the path as typed
        older.setattr(PersonalizeConfig, "fingerprint_payload",
                      lambda self: {**named(self), "template_file": str(self.template_file)})
        personalize(config)
    result = personalize(dataclasses.replace(config, max_train_steps=4), resume=True)
    assert result.status == "done" and result.steps == 4

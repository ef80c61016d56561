"""A PersonalizationJob as an app backend lives with it: interrupted waits, waits from its own callback, several
threads generating at once, an interpreter that exits while it trains."""
from __future__ import annotations

import signal
import subprocess
import sys
import threading

import numpy as np
import pytest

from test_personalize import make_config
from zoodip.api import PersonalizationJob
from zoodip.embeddings import load_embedding_file
from zoodip.errors import ZoodipError
from zoodip.generate import generate
from zoodip.model import ExportedModel


class Interrupted(Exception):
    pass


def _raise_interrupted(signum, frame):
    raise Interrupted()


def test_an_interrupted_wait_leaves_the_job_running_and_waitable(tiny_export, photos, tmp_path):
    """A Ctrl-C in wait() (Thread.join) marked the job's thread as ended while it trained on: `running` said False,
    and the next wait() failed with a bare AssertionError instead of waiting."""
    previous = signal.signal(signal.SIGALRM, _raise_interrupted)
    job = PersonalizationJob(make_config(tiny_export, photos, tmp_path / "run", max_train_steps=100_000,
                                         eval_every=0, checkpoint_every=0)).start()
    try:
        signal.setitimer(signal.ITIMER_REAL, 1.0)
        with pytest.raises(Interrupted):
            job.wait()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert job.running
    job.cancel()
    result = job.wait()
    assert result.status == "cancelled" and not job.running


def test_wait_from_the_jobs_own_callback_is_one_line(tiny_export, photos, tmp_path):
    """It raised Thread.join's RuntimeError (start()), or said that run() had returned while it ran."""
    holder: list[PersonalizationJob] = []

    def waits(progress):
        if progress.event == "step":
            holder[0].wait()
    for how in ("start", "run"):
        job = PersonalizationJob(make_config(tiny_export, photos, tmp_path / how, max_train_steps=3, eval_every=0),
                                 on_progress=waits)
        holder[:] = [job]
        with pytest.raises(ZoodipError, match=r"^wait\(\) was called from the job's own thread \(its on_progress\): it "
                                              r"would wait for itself; wait from another thread$"):
            job.start().wait() if how == "start" else job.run()
        assert job.result.status == "cancelled"  # stopped as on_progress' error stops it: its checkpoint kept


def test_generate_from_several_threads_loads_one_model(tiny_export, photos, tmp_path, monkeypatch):
    """Each thread loaded a model of its own: a job's memory budget held four times over."""
    import zoodip.api

    job = PersonalizationJob(make_config(tiny_export, photos, tmp_path / "run", max_train_steps=2, eval_every=0))
    job.start().wait()
    loads = []
    real_load = zoodip.api.ExportedModel.load

    def counted(*args, **kwargs):
        loads.append(1)
        return real_load(*args, **kwargs)
    monkeypatch.setattr(zoodip.api.ExportedModel, "load", counted)
    images: list = []
    threads = [threading.Thread(target=lambda: images.append(job.generate("a photo of <striped-star>", steps=2)))
               for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(loads) == 1 and len(images) == 3
    assert all(np.array_equal(np.asarray(images[0][0]), np.asarray(other[0])) for other in images[1:])


def test_generate_takes_more_embeddings_beside_the_learned_token(tiny_export, photos, tmp_path):
    """added_embeddings= (another learned token in the same prompt) was Python's TypeError 'got multiple values for
    keyword argument', and so was model=."""
    job = PersonalizationJob(make_config(tiny_export, photos, tmp_path / "run", max_train_steps=2, eval_every=0))
    result = job.start().wait()
    token, vectors = load_embedding_file(result.embedding_path)
    other = {"<other>": np.zeros_like(vectors)}
    both = job.generate(f"a photo of {token} and <other>", steps=2, added_embeddings=other)
    alone = generate(ExportedModel.load(tiny_export), f"a photo of {token} and <other>", steps=2,
                     added_embeddings={token: vectors, **other}, clip_skip=job.config.clip_skip)
    assert np.array_equal(np.asarray(both[0]), np.asarray(alone[0]))
    with pytest.raises(ZoodipError, match=f"names {token!r}, the token this job learned"):
        job.generate(f"a photo of {token}", steps=2, added_embeddings={token: vectors})
    with pytest.raises(ZoodipError, match="added_embeddings must be a dict"):
        job.generate(f"a photo of {token}", steps=2, added_embeddings=[vectors])
    with pytest.raises(ZoodipError, match="uses the job's own model"):
        job.generate(f"a photo of {token}", steps=2, model=None)


def test_a_job_closes_its_model_and_refuses_use_after(tiny_export, photos, tmp_path):
    """job.generate() loaded a model that only dropping the job released (ExportedModel and ZoodipPipeline have
    close() and with-blocks): a job now has them too; a closed job's generate() is one line, its result kept."""
    with PersonalizationJob(make_config(tiny_export, photos, tmp_path / "run", max_train_steps=2,
                                        eval_every=0)) as job:
        result = job.start().wait()
        job.generate("a photo of <striped-star>", steps=1)
        model = job._model
    assert model.closed and job.result is result  # the with-block closed it; the outcome stays
    with pytest.raises(ZoodipError, match=r"^this job was closed \(close\(\)\): .*result.embedding_path"):
        job.generate("a photo of <striped-star>", steps=1)
    with pytest.raises(ZoodipError, match="this job was closed"):
        job.start()
    job.close()  # a second close: nothing
    running = PersonalizationJob(make_config(tiny_export, photos, tmp_path / "long", max_train_steps=100_000,
                                             eval_every=0, checkpoint_every=0)).start()
    running.close()  # a running job is cancelled and waited for: nothing left training in the background
    assert not running.running and running.result.status == "cancelled"


def test_close_waits_for_a_generate_in_progress(tiny_export, photos, tmp_path):
    """close() from another thread during a job.generate() closed the model under it: that generate() failed with
    'this model was closed (close()): open the export again (ExportedModel.load ...)', a model the job's user never
    opened. close() now lets the generations in progress end (from one's own callback: released as it returns)."""
    job = PersonalizationJob(make_config(tiny_export, photos, tmp_path / "run", max_train_steps=2, eval_every=0))
    job.start().wait()
    job.generate("a photo of <striped-star>", steps=1)  # (the model loaded)
    model, stepping, outcome = job._model, threading.Event(), {}

    def generating():
        try:
            outcome["images"] = job.generate("a photo of <striped-star>", steps=8,
                                             callback=lambda step, total, latents: stepping.set())
        except ZoodipError as exc:
            outcome["error"] = str(exc)
    thread = threading.Thread(target=generating)
    thread.start()
    assert stepping.wait(60)
    job.close()
    thread.join()
    assert "error" not in outcome and len(outcome["images"]) == 1 and model.closed
    again = PersonalizationJob(make_config(tiny_export, photos, tmp_path / "run", max_train_steps=2, eval_every=0),
                               resume=True)
    again.run()
    images = again.generate("a photo of <striped-star>", steps=2, callback=lambda step, total, latents: again.close())
    assert len(images) == 1 and again._model is None  # closed from its own callback: released once it returned


@pytest.mark.parametrize("launch", ["job.start()", "threading.Thread(target=job.run, daemon=True).start()"])
def test_an_interpreter_that_exits_mid_job_cancels_it_and_keeps_its_checkpoint(tiny_export, photos, tmp_path, launch):
    """The job's daemon thread died under a running onnxruntime session: the process aborted (status 134), the steps
    since the last checkpoint lost and the lock file left. The same for job.run() in a daemon thread of the app's own
    (a server's worker), which was not stopped at exit as start()'s job was."""
    out = tmp_path / "run"
    script = f"""
import threading, time
from zoodip.api import PersonalizationJob
from zoodip.trainer import PersonalizeConfig
config = PersonalizeConfig(export_dir={str(tiny_export)!r}, images={str(photos)!r}, output_dir={str(out)!r},
                           placeholder_token="<s>", initializer_token="star", max_train_steps=100000, eval_every=0,
                           checkpoint_every=0, tau=4, threads=1)
job = PersonalizationJob(config)
{launch}
while job.latest is None or job.latest.step < 3:
    time.sleep(0.05)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(np.load(out / "checkpoint.npz")["step"]) >= 3
    assert not (out / ".zoodip-run.lock").exists()


def test_a_job_started_from_two_threads_at_once_runs_once(tiny_export, photos, tmp_path, monkeypatch):
    """start() from two threads at once both passed the 'already started' check: two runs in one folder, the second
    refused by the folder lock, and wait() raised that refusal ('in use by another zoodip run') for a run that went on
    (and `running` said False while it did). One start() now runs it; the other is the one line."""
    import zoodip.api

    both_checking = threading.Barrier(2)
    real_replace = zoodip.api.replace

    def slow_replace(*args, **kwargs):  # holds each start() between its check and its claim until the other arrives
        try:
            both_checking.wait(timeout=1)
        except threading.BrokenBarrierError:
            pass
        return real_replace(*args, **kwargs)
    monkeypatch.setattr(zoodip.api, "replace", slow_replace)
    job = PersonalizationJob(make_config(tiny_export, photos, tmp_path / "run", max_train_steps=2, eval_every=0))
    refused: list[str] = []

    def start() -> None:
        try:
            job.start()
        except ZoodipError as exc:
            refused.append(str(exc))
    threads = [threading.Thread(target=start) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(refused) == 1 and refused[0].startswith("this job was already started")
    assert job.wait(60).status == "done"


def test_an_exit_does_not_wait_forever_for_a_callback_that_waits_on_the_main_thread(tiny_export, photos, tmp_path):
    """An on_progress that waits for the main thread (a queue its UI loop serves) never returns once the main thread
    exits, and the exit waited for it (the job stops only between steps): the process hung. Now the exit waits a
    bounded time for the callback, then says in one line that the run stays at its last checkpoint, and how to resume."""
    out = tmp_path / "run"
    script = f"""
import queue, sys
import zoodip.api
from zoodip.api import PersonalizationJob
from zoodip.trainer import PersonalizeConfig
zoodip.api.EXIT_CALLBACK_WAIT_S = 0.5
requests, replies = queue.Queue(), queue.Queue()
def on_progress(progress):
    if progress.event == "step" and progress.step >= 3:
        requests.put(progress)
        replies.get()  # served by the main thread, which exits instead
config = PersonalizeConfig(export_dir={str(tiny_export)!r}, images={str(photos)!r}, output_dir={str(out)!r},
                           placeholder_token="<s>", initializer_token="star", max_train_steps=100000, eval_every=0,
                           checkpoint_every=2, eval_timesteps=2, tau=4, threads=1)
PersonalizationJob(config, on_progress=on_progress).start()
requests.get()
sys.exit(0)
"""
    done = subprocess.run([sys.executable, "-W", "ignore", "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stderr.strip() == (f"zoodip: exited without waiting for a job's on_progress, still running after 0.5 s: "
                                   f"the run in {out} stays at its last checkpoint (step 2); continue it with "
                                   f"PersonalizationJob(config, resume=True)")
    assert int(np.load(out / "checkpoint.npz")["step"]) == 2
    resumed = PersonalizationJob(make_config(tiny_export, photos, out, placeholder_token="<s>", max_train_steps=4,
                                             eval_every=0, checkpoint_every=2), resume=True).run()
    assert resumed.status == "done" and resumed.start_step == 2


def test_an_exit_held_before_the_first_checkpoint_says_to_start_again(tiny_export, photos, tmp_path):
    """Held in its "setup" callback, before the run's first checkpoint, the exit's line pointed to "its last
    checkpoint", which did not exist (nor did the run's folder)."""
    out = tmp_path / "run"
    script = f"""
import queue, sys
import zoodip.api
from zoodip.api import PersonalizationJob
from zoodip.trainer import PersonalizeConfig
zoodip.api.EXIT_CALLBACK_WAIT_S = 0.5
requests, replies = queue.Queue(), queue.Queue()
def on_progress(progress):
    if progress.event == "setup":
        requests.put(progress)
        replies.get()  # served by the main thread, which exits instead
config = PersonalizeConfig(export_dir={str(tiny_export)!r}, images={str(photos)!r}, output_dir={str(out)!r},
                           placeholder_token="<s>", initializer_token="star", max_train_steps=4, eval_every=0, tau=4)
PersonalizationJob(config, on_progress=on_progress).start()
requests.get()
sys.exit(0)
"""
    done = subprocess.run([sys.executable, "-W", "ignore", "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stderr.strip().endswith(f"the run in {out} has no checkpoint yet; start the run again"), done.stderr
    assert not out.exists()

def test_a_callback_cannot_change_what_job_latest_reports(tiny_export, photos, tmp_path):
    """The Progress a callback received was the object job.latest held: a callback that changed it (or kept it)
    changed what latest reported to the rest of the app. Each event is now frozen."""
    from dataclasses import FrozenInstanceError

    refused: list[int] = []

    def changes(progress):
        try:
            progress.loss = -1.0
        except FrozenInstanceError:
            refused.append(progress.step)
    job = PersonalizationJob(make_config(tiny_export, photos, tmp_path / "run", max_train_steps=2, eval_every=0),
                             on_progress=changes)
    job.run()
    assert job.latest.event == "done" and job.latest.loss != -1.0 and refused

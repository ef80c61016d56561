"""The interface an app backend embeds: start a job, watch it, cancel it, resume it.

    job = PersonalizationJob(PersonalizeConfig(export_dir, photos, out_dir), on_progress=print)
    job.start()            # runs in a background thread
    ...
    job.cancel()           # stops after the current step: a checkpoint and learned_embeds-steps-N.safetensors
    result = job.wait()    # PersonalizeResult (status, embedding path, eval losses)
    images = job.generate("a photo of <my-dog> on a beach")   # within the job's memory budget, if it has one

A cancelled or killed job continues with ``PersonalizationJob(same_config, resume=True).start()``. An interpreter
that exits while a job runs cancels it and waits for its checkpoint first (``atexit``): ended under a running
onnxruntime session, the process would abort and lose the steps since the last checkpoint. That wait ends with the
job's current step, or at a Ctrl-C. An ``on_progress`` call still running ``EXIT_CALLBACK_WAIT_S`` seconds into it (one
that waits on the exiting thread, say) is not waited for: the run stays at its last checkpoint, said in one line on
stderr with how to continue it.
Progress can also be streamed as JSON lines (one object per event) for a process boundary, e.g.
an Android app that runs the CLI with ``--progress-jsonl``.
"""
from __future__ import annotations

import atexit
import json
import math
import numbers
import os
import sys
import threading
import time
import weakref
from collections.abc import Mapping
from dataclasses import asdict, replace
from pathlib import Path
from typing import IO, Any, Callable

from .checkpoint import CHECKPOINT_NAME, checkpoint_step
from .embeddings import load_embedding_file
from .errors import ZoodipError
from .generate import generate
from .model import ExportedModel
from .run_checks import check_run_arguments
from .trainer import PersonalizeConfig, PersonalizeResult, Progress, personalize

__all__ = ["PersonalizationJob", "progress_to_json", "jsonl_progress_writer", "EXIT_CALLBACK_WAIT_S"]
_STARTED: weakref.WeakSet[PersonalizationJob] = weakref.WeakSet()  # the jobs an exiting interpreter stops first
# How long an exiting interpreter lets a job's on_progress call run on. A job is only stopped between steps, so a
# callback that waits on the thread now exiting (a queue its UI loop served) never returns: waiting for it hung the exit.
EXIT_CALLBACK_WAIT_S = 5.0


@atexit.register
def _stop_running_jobs() -> None:
    """Cancel the jobs still running and wait for their checkpoints (atexit runs before the daemon threads die). Only
    this process's (a forked child has none of their threads); a Ctrl-C while it waits exits at once. A job held in its
    on_progress past EXIT_CALLBACK_WAIT_S is left at its last checkpoint (its thread is in Python, not onnxruntime)."""
    running = [job for job in list(_STARTED) if job.running and job._pid == os.getpid()]
    for job in running:
        job._cancel.set()
    asked = time.monotonic()
    try:
        for job in running:
            while not job._finished.wait(0.1):  # (short waits: a Ctrl-C is seen between them)
                since = job._in_callback_since
                if since is not None and time.monotonic() - max(since, asked) >= EXIT_CALLBACK_WAIT_S:
                    job._say_left_at_exit()
                    break
    except KeyboardInterrupt:
        pass


def progress_to_json(progress: Progress) -> str:
    """One progress event as a single JSON line (the contract of ``--progress-jsonl``)."""
    return json.dumps({"type": "progress", **asdict(progress)}, allow_nan=False, default=float)


def jsonl_progress_writer(stream: IO[str]) -> Callable[[Progress], None]:
    """A progress callback that writes each event as one flushed JSON line."""
    if not callable(getattr(stream, "write", None)) or not callable(getattr(stream, "flush", None)):
        raise ZoodipError(f"jsonl_progress_writer needs a text stream open for writing (sys.stdout, open(path, 'w')), "
                          f"got {type(stream).__name__}")
    def write(progress: Progress) -> None:
        stream.write(progress_to_json(progress) + "\n")
        stream.flush()
    return write


class PersonalizationJob:
    """A personalization run in a background thread, with progress callback and cancellation.

    ``on_progress(progress)`` is called in the job's thread with each event. If it raises, the job stops as on
    ``cancel()`` (checkpoint and the embedding so far saved) and ``wait()`` raises that error; ``result`` keeps what
    the run ended with (a callback that raises at the last event leaves a finished run finished). One job runs
    once (``start()`` or ``run()``): a new ``PersonalizationJob(config, resume=True)`` continues it. The run takes
    ``config`` as ``start()`` finds it, its folders as absolute then, so that the host may change its working folder.
    ``close()`` (or a ``with`` block) releases the model ``generate()`` loaded, as ``ExportedModel.close()`` does.
    """

    def __init__(self, config: PersonalizeConfig, on_progress: Callable[[Progress], None] | None = None,
                 resume: bool = False) -> None:
        check_run_arguments(config, on_progress, resume)
        self.config = config
        self._run_config = config  # what it runs: the config as start() or run() found it, its folders absolute
        self.on_progress = on_progress
        self.resume = bool(resume)
        self.latest: Progress | None = None
        self.result: PersonalizeResult | None = None
        self.error: BaseException | None = None
        self.callback_error: BaseException | None = None  # what on_progress raised: it stopped the job
        self._cancel = threading.Event()
        self._thread: threading.Thread | None = None
        self._running_here = False  # run(): in the caller's thread
        self._model: ExportedModel | None = None  # generate()'s, loaded on first use
        self._model_lock = threading.Condition()  # (generate() from several threads: one model, one memory budget)
        self._generating: list[int] = []  # the threads in generate() now: close() releases the model once they end
        self._closed = False  # close(): generate()'s model released, the job not to be used again
        # Set when the run ends, however it ends. Not Thread.is_alive(): a Ctrl-C in Thread.join marks the thread
        # ended while it runs on (CPython 3.11), and wait() then read a result not there yet.
        self._finished = threading.Event()
        self._runner: int | None = None  # the thread running it, which must not wait() for itself
        self._pid: int | None = None  # the process that started it (a forked child has none of its threads)
        self._in_callback_since: float | None = None  # when the on_progress call now running began

    def _progress(self, progress: Progress) -> None:
        self.latest = progress
        if self.on_progress is None or self.callback_error is not None:
            return
        self._in_callback_since = time.monotonic()  # (an exiting interpreter waits only so long for it)
        try:
            self.on_progress(progress)
        except BaseException as exc:  # the app's error, not the run's: stop as cancel() does, keeping the steps
            self.callback_error = exc
            self._cancel.set()
        finally:
            self._in_callback_since = None

    def _say_left_at_exit(self) -> None:
        """One line on stderr: the exit did not wait for this job's on_progress, and how to continue its run."""
        folder = self._run_config.output_dir
        step = checkpoint_step(Path(folder) / CHECKPOINT_NAME)
        left = (f"stays at its last checkpoint (step {step}); continue it with PersonalizationJob(config, resume=True)"
                if step is not None else  # (held in its first callbacks, before the run's first checkpoint)
                "has no checkpoint yet; " + ("remove the folder and " if Path(folder).exists() else "") +
                "start the run again")
        print(f"zoodip: exited without waiting for a job's on_progress, still running after {EXIT_CALLBACK_WAIT_S:g} s: "
              f"the run in {folder} {left}", file=sys.stderr, flush=True)

    def _target(self) -> None:
        self._runner = threading.get_ident()
        try:
            self.result = personalize(self._run_config, self._progress, resume=self.resume, cancel_event=self._cancel)
        except BaseException as exc:  # reported through wait(); never lost in the thread
            self.error = exc
        finally:
            self._finished.set()

    def _claim(self, in_thread: bool) -> None:
        """One run per job: a second would share the run folder with the first, or replace its outcome. The run's
        folders are taken as absolute now (links and '..' kept): a host that changes its working folder while the job
        runs in a thread would send its reads and writes elsewhere (it stopped as if its folder had gone, or wrote a
        new one)."""
        # Checked and claimed under one lock: two start()s from two threads at once both passed the check, and the
        # second run, refused by the folder lock, became the job's outcome while the first trained on unwatched.
        with self._model_lock:
            if self._closed:
                raise ZoodipError("this job was closed (close()): create a new PersonalizationJob to run again "
                                  "(resume=True continues its run)")
            if self._thread is not None or self._running_here:
                raise ZoodipError("this job was already started: create a new PersonalizationJob to run again "
                                  "(resume=True continues its run)")
            folders = {name: getattr(self.config, name) for name in ("export_dir", "images", "output_dir")}
            self._run_config = replace(self.config, **{  # (no path, or an empty one: refused as the config's)
                name: Path(value).absolute() if isinstance(value, (str, os.PathLike)) and str(value).strip() else value
                for name, value in folders.items()})
            if in_thread:
                self._thread = threading.Thread(target=self._target, name="zoodip-personalize", daemon=True)
            else:
                self._running_here = True
            # Either way an exiting interpreter stops it first: run() in a daemon thread of the app's own died there
            # under onnxruntime as start()'s did (the process aborted, its steps and lock file left).
            self._pid = os.getpid()
            _STARTED.add(self)

    def start(self) -> PersonalizationJob:
        self._claim(in_thread=True)
        self._thread.start()
        return self

    def run(self) -> PersonalizeResult:
        """Run in the calling thread (blocking; another thread may cancel() it)."""
        self._claim(in_thread=False)
        self._target()
        return self._outcome()

    def cancel(self) -> None:
        """Ask the job to stop after the current step; it saves a checkpoint and the embedding so far
        (``result.embedding_path``, a ``learned_embeds-steps-N.safetensors``) and returns 'cancelled'. Before
        ``start()`` there is nothing to stop: refused, so that a later start does not set up only to cancel. A cancel
        during the setup takes effect when it ends (the model loaded, the photos encoded, the first evaluation)."""
        if self._thread is None and not self._running_here:
            raise ZoodipError("the job was not started: there is nothing to cancel (start() runs it)")
        self._cancel.set()

    @property
    def running(self) -> bool:
        return (self._thread is not None or self._running_here) and not self._finished.is_set()

    def wait(self, timeout: float | None = None) -> PersonalizeResult | None:
        """Wait for the job; returns the result, None on timeout, or raises the job's error."""
        if self._runner == threading.get_ident() and not self._finished.is_set():
            raise ZoodipError("wait() was called from the job's own thread (its on_progress): it would wait for "
                              "itself; wait from another thread")
        if self._thread is None:
            raise ZoodipError("the job was not run in a thread: start() it first" if not self._running_here else
                              "the job ran in the caller's thread: run() returned its result")
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, numbers.Real)
                                    or math.isnan(timeout) or timeout < 0):
            raise ZoodipError(f"timeout must be a number of seconds >= 0 (or None to wait to the end), got {timeout!r}")
        # Past the OS's longest wait (infinity included) the wait raises
        if not self._finished.wait(None if timeout is None or timeout >= threading.TIMEOUT_MAX else float(timeout)):
            return None
        return self._outcome()

    def close(self) -> None:
        """Release the model ``generate()`` loaded (its onnxruntime sessions) now, rather than when the job is dropped.
        A running job is cancelled and waited for first (its checkpoint and the embedding so far saved), so that
        nothing trains on unseen; from the job's own thread (its on_progress) it is only cancelled. ``result`` and the
        run's files stay. A generate() in progress ends first (closed from its callback: the model is released as it
        returns). ``generate()``, ``start()`` and ``run()`` are refused afterwards (generate with
        ``result.embedding_path`` on a model of your own). A second close() does nothing."""
        with self._model_lock:  # (first: a start() in another thread now is refused, or has claimed the run it stops)
            self._closed = True
        if self.running:
            self._cancel.set()
            if self._runner != threading.get_ident():
                self._finished.wait()
        with self._model_lock:
            # Generations in progress end first (a model closed under them failed them); one in this thread (close()
            # from its callback) cannot: the model is then released as it returns.
            me = threading.get_ident()
            self._model_lock.wait_for(lambda: all(thread == me for thread in self._generating))
            self._release_model()

    def _release_model(self) -> None:
        """Close generate()'s model if no generate() uses it (under _model_lock)."""
        if self._model is not None and not self._generating:
            self._model.close()
            self._model = None

    def __enter__(self) -> PersonalizationJob:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def generate(self, prompt: str, **options: Any) -> list:
        """Images of ``prompt`` with the token this job learned (``zoodip.generate.generate``'s ``options``).

        The model is loaded with the job's runtime settings (``PersonalizeConfig.runtime_options``): a job
        with a memory budget generates within the same budget. Generation and training would share that
        budget, so a running job must finish (or be cancelled) first. ``clip_skip`` defaults to the job's own (the
        layer the token learned); ``added_embeddings`` adds other learned tokens to the job's own.
        """
        self._refuse_if_closed()
        if self.running:
            raise ZoodipError("the job is still running: wait() for it (or cancel() it) before generating, "
                              "since generation and training share the memory budget")
        if self.result is not None and self.result.embedding_path is None:
            raise ZoodipError("this job was cancelled before its first step and learned nothing: continue it with "
                              "PersonalizationJob(config, resume=True)")
        if self.result is None:
            raise ZoodipError("this job has no learned embedding: start() it and wait() for it first (a job that "
                              "failed has none)")
        if "model" in options:
            raise ZoodipError("job.generate() uses the job's own model: drop model= (zoodip.generate.generate(model, "
                              "prompt, ...) runs another)")
        token, vectors = load_embedding_file(self.result.embedding_path)
        added = options.pop("added_embeddings", None)  # more learned tokens beside the job's own
        if isinstance(added, Mapping) and token in added:
            raise ZoodipError(f"added_embeddings names {token!r}, the token this job learned: rename the other one")
        if added is None or isinstance(added, Mapping):  # (anything else: generate's own refusal)
            added = {token: vectors, **(added or {})}
        with self._model_lock:
            self._refuse_if_closed()  # (again: a close() since, which a model loaded now would outlive)
            if self._model is None:
                self._model = ExportedModel.load(self._run_config.export_dir, self._run_config.runtime_options())
            model = self._model
            self._generating.append(threading.get_ident())
        options.setdefault("clip_skip", self._run_config.clip_skip)
        try:
            return generate(model, prompt, added_embeddings=added, **options)
        finally:
            with self._model_lock:
                self._generating.remove(threading.get_ident())
                if self._closed:
                    self._release_model()
                self._model_lock.notify_all()

    def _refuse_if_closed(self) -> None:
        if self._closed:
            raise ZoodipError("this job was closed (close()): generate with its embedding (result.embedding_path) on a "
                              "model of your own (zoodip.generate.generate), or before closing the job")

    def _outcome(self) -> PersonalizeResult:
        for error in (self.error, self.callback_error):
            if error is not None:
                raise error
        assert self.result is not None
        return self.result

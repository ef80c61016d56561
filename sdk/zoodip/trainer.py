"""The personalization loop: textual inversion by forward passes only (ZOODiP).

One step, as the paper describes it:

    pick a photo, a noise and a timestep t ~ PUTS          (the same for every evaluation below)
    z_1..z_n ~ N(0, I)                                      (random directions)
    L_0 = L(v),  L_i = L(v + mu z_i)                        (n+1 text-encoder + UNet forwards)
    g = RandomGradientEstimator(L_0, L_i, z_i)              (finite differences)
    g = SubspaceProjector.project(g)                        (drop low-variance directions of v's history)
    v = ZOAdam.step(v, g)

where L(v) = mean((unet(x_t, t, text_encoder(prompt with v)) - target)^2); with --num_vectors K, v is the token's K
vectors flattened into one (token_vectors.py). The randomness of step k is a pure function of (seed, k), so a run
resumed from a checkpoint repeats exactly the steps an uninterrupted run would have taken, bit for bit.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np

from .checkpoint import CHECKPOINT_NAME, checkpoint_vector, read_checkpoint, write_checkpoint
from .config import PersonalizeConfig, default_tau  # noqa: F401 (zoodip.trainer.PersonalizeConfig stays public)
from .denoising_loss import DenoisingLoss, auto_batched, loss_batched  # noqa: F401 (trainer.DenoisingLoss: public)
from .embeddings import a1111_file_name, save_a1111_embedding, save_learned_embeds, warn_of_a1111_trigger
from .errors import ZoodipError
from .generate_settings import check_clip_skip
from .gradient_estimate import EstimatorSchedule, RandomGradientEstimator
from .images import list_images, load_images
from .limits import check_image_size, check_photo_count
from .lr_schedule import lr_at
from .memory_plan import check_training, memory_budget_mb
from .method_parts import LossFactory, OptimizerFactory, ProjectorFactory, default_optimizer, default_projector
from .model import ExportedModel, RuntimeOptions
from .runtime_options import check_trainable
from .paths import check_output_dir, run_folder_lock, write_failure
from .previews import check_preview_prompt, preview_due, preview_path, previews_in, write_preview
from .progress import PersonalizeResult, Progress  # noqa: F401 (zoodip.trainer.Progress stays public)
from .prompts import FILEWORDS_WORD, PromptSampler, caption_files, load_captions, load_filewords, load_template_file
from .run_checks import append_log, check_outcome, check_run_arguments, sha256_of_files, truncate_log
from .run_folder import (CONFIG_NAME, EMBEDDING_NAME, LOG_NAME, RUN_FILES, SNAPSHOT_NAME,  # noqa: F401 (public here)
                         VALIDATION_NAME, check_folder_kept, check_run_folder, folder_identity,
                         remove_stale_run_temp_files)
from .search_space import choose_search_space
from .setting_warnings import warn_about_settings
from .step_inputs import EVAL_STREAM, StepInputs, draw_step_inputs, encode_photo_views, evaluation_items, step_rng
from .timesteps import PartialUniformTimesteps
from .token_vectors import add_placeholder_tokens, as_matrix, check_prompts_fit, initial_vector
from .json_text import parse_json


class Personalizer:
    """Sets up a run (model, photos, placeholder, method pieces) and runs its steps.

    The method's parts (the loss, the optimizer, the Subspace Gradient projector) are the config's unless ``make_loss``,
    ``make_optimizer`` or ``make_projector`` build others: they are called once the model and its width are known,
    which is why they are factories rather than objects. ``runtime`` replaces the onnxruntime settings built from the
    config's threads and memory budget (the benchmarks' levers).
    """

    def __init__(self, config: PersonalizeConfig, on_progress: Callable[[Progress], None] | None = None,
                 cancel_event: threading.Event | None = None, *, make_loss: LossFactory = DenoisingLoss,
                 make_optimizer: OptimizerFactory = default_optimizer,
                 make_projector: ProjectorFactory = default_projector, runtime: RuntimeOptions | None = None) -> None:
        check_run_arguments(config, on_progress, cancel_event=cancel_event)
        config.validate()
        check_output_dir(config.output_dir)  # before any work: a run must be able to write its result
        self.on_progress = on_progress
        self.cancel_event = cancel_event or threading.Event()
        self._folder_identity: tuple[int, int] | None = None  # the run folder's, once the run has taken it
        self.config = config  # (completed below, once the model's width is known)
        self._created = time.monotonic()
        self._phase("loading the model")
        self.model = ExportedModel.load(config.export_dir, runtime or config.runtime_options())
        check_trainable(self.model.manifest)  # (a dynamic-int8 export's finite differences are noise)
        # The optimized vector: the placeholder's num_vectors vectors of the model's width, flattened.
        self.width = self.model.hidden_size
        self.dim = dim = config.num_vectors * self.width
        if config.tau is None:
            config = dataclasses.replace(config, tau=default_tau(dim))
        self.config = config
        if config.n > dim:
            # n >= d Gaussian directions already determine the whole gradient; more only cost forwards.
            raise ZoodipError(f"n={config.n} is more than the {dim} numbers this run learns: use at most {dim} (reference 2)")
        self.resolution = config.resolution or self.model.default_resolution
        self.model.check_resolution(self.resolution)
        check_clip_skip(self.model, config.clip_skip)  # within the text encoder's layers
        check_image_size(self.resolution, self.resolution, self.model.vae_scale_factor, f"resolution={self.resolution}",
                         memory_budget_mb=config.memory_budget_mb, multiple=self.model.side_multiple)
        # Before any work: the steps' phase (a step's candidates encoded at once; None: at most every dimension).
        candidates = 1 + max(config.n, (config.orthogonal_n or dim) if config.orthogonal_after is not None else 0)
        check_training(self.model, self.resolution, candidates, loss_batched(self.model, config.batched),
                       memory_budget_mb(self.model))
        self.timesteps = PartialUniformTimesteps.of_setting(config.t_range, self.model.schedule.num_train_timesteps)
        self._add_placeholder()
        check_preview_prompt(self.model, config, as_matrix(self.v_init, self.width))  # now, not at the first preview
        self._encode_photos()
        self._compose_method(make_loss, make_optimizer, make_projector)
        eval_prompts = [self.prompts.eval_prompt_for(name) for name in self.image_names]
        self._eval_items = evaluation_items(self.latents, eval_prompts, self.model.tokenizer, self.model.schedule,
                                            config.t_range, config.eval_timesteps, config.seed)
        self.model.session("text_encoder")  # opened now: a damaged graph is refused before anything is written
        self.model.session("unet")  # (the state that a checkpoint holds:)
        self.v = self.v_init.copy()
        self.step = 0
        self.best_v = self.v.copy()
        self.best_eval: float | None = None
        self.eval_history: list[tuple[int, float]] = []
        self.evals_without_improvement = 0
        self.train_forwards = 0

    def _add_placeholder(self) -> None:
        """The placeholder token and its initial value: the initializer word's embedding row."""
        config, tokenizer = self.config, self.model.tokenizer
        init_ids = tokenizer.token_ids_for_word(config.initializer_token)
        if len(init_ids) != 1:
            raise ZoodipError(
                f"initializer_token {config.initializer_token!r} is {len(init_ids)} tokens, it must be a single "
                "token: pick one common word close to the concept (e.g. 'dog', 'toy', 'painting')"
            )
        if tokenizer.is_known_word(config.placeholder_token):  # (the tokenizer's words name no setting)
            raise ZoodipError(f"placeholder_token {config.placeholder_token!r} is already a word of the vocabulary, "
                              "whose meaning the run would change: pick a new word, e.g. '<my-dog>'")
        self.placeholder_ids = add_placeholder_tokens(tokenizer, config.placeholder_token, config.num_vectors)
        if config.a1111:  # (said before the work, not after it; after a placeholder that is a word is refused)
            warn_of_a1111_trigger(config.placeholder_token, tokenizer)
        self.placeholder_id = self.placeholder_ids[0]
        self.v_init = initial_vector(self.model.token_embeddings[init_ids[0]], config.num_vectors)

    def _encode_photos(self) -> None:
        """Load the photos and their prompts, encode them once (and their mirror images with flips), free the encoder."""
        config, model = self.config, self.model
        photo_files = list_images(config.images)
        check_photo_count(len(photo_files), self.resolution, 2 if config.flip else 1, config.memory_budget_mb)
        templates = load_template_file(config.template_file) if config.template_file else None
        filewords = (load_filewords(photo_files) if templates and any(FILEWORDS_WORD in t for t in templates)
                     else None)
        self.image_names, images = load_images(photo_files, self.resolution, config.center_crop)
        # What the run learns from and with: a checkpoint resumes only with the same photos and model.
        text_files = ([config.captions] if config.captions else []) + (
            [config.template_file, *caption_files(photo_files).values()] if templates else [])
        self.photos_id = sha256_of_files(photo_files + text_files)
        self.model_id = model.identity
        captions = load_captions(config.captions, self.image_names, config.placeholder_token) if config.captions else None
        self.prompts = PromptSampler(config.placeholder_token, config.learnable_property, captions, templates, filewords)
        self.captions = captions or {}
        check_prompts_fit(model.tokenizer, self.prompts.every_prompt(self.image_names), self.placeholder_ids,
                          config.placeholder_token)

        self._phase(f"encoding {len(photo_files)} photo{'s' if len(photo_files) != 1 else ''}")
        encode_rng = np.random.default_rng([config.seed, EVAL_STREAM, 1])
        views = [images, images[..., ::-1]] if config.flip else [images]
        # [N, views, C, h, w]; with --vae-sampling per-step the posterior means, and their stds.
        self.latents, self.latent_std = encode_photo_views(model, views, config.vae_sampling, encode_rng)
        model.release("vae_encoder")

    def _compose_method(self, make_loss: LossFactory, make_optimizer: OptimizerFactory,
                        make_projector: ProjectorFactory) -> None:
        """The search space, the estimator, the optimizer, the projector and the loss of this run."""
        model, dim = self.model, self.dim
        config, self.vocabulary, self.curvature, basis = choose_search_space(model, self.config)
        self.config = config
        self.estimator = RandomGradientEstimator(dim, n=config.n, mu=config.mu, basis=basis, directions=config.directions)
        self.estimators = (EstimatorSchedule(self.estimator) if config.orthogonal_after is None else
                           EstimatorSchedule.two_phase(self.estimator, config.orthogonal_after, config.orthogonal_n))
        if basis is not None:
            self._phase(f"searching {basis.shape[1]} of {dim} dimensions (the model's "
                        f"{'curvature' if self.curvature is not None else 'vocabulary'} subspace)")
        self.optimizer = make_optimizer(dim, config)
        self.projector = make_projector(dim, config, self.estimator.basis)
        warn_about_settings(config, dim, self.model.default_resolution)
        batched = config.batched if config.batched is not None else auto_batched(model)
        # One vector: its id, as loss factories have always been given; several: their ids in prompt order.
        ids = self.placeholder_id if config.num_vectors == 1 else tuple(self.placeholder_ids)
        self.loss = make_loss(model, ids, batched, config.clip_skip)

    # -- evaluation ----------------------------------------------------------------------------
    def evaluation_loss(self, v: np.ndarray) -> float:
        """The deterministic evaluation loss of embedding v (mean over the fixed items)."""
        total = sum(float(self.loss(ids, v[None], x_t, t, target)[0]) for ids, t, x_t, target in self._eval_items)
        return total / len(self._eval_items)

    # -- one step ------------------------------------------------------------------------------
    def train_step(self) -> float:
        """One ZOODiP step; returns L(v) of this step's sample."""
        rng = step_rng(self.config.seed, self.step)
        sample = self.draw_inputs(rng)
        estimator = self.estimators.at(self.step)
        z = estimator.directions(rng)

        candidates = np.concatenate([self.v[None], estimator.perturbations(self.v, z)]).astype(np.float32)
        losses = self.loss(self.prompt_ids(sample), candidates, sample.x_t, sample.t, sample.target)
        self.train_forwards += len(candidates)
        if not np.all(np.isfinite(losses)):
            # Not "resume with a lower rate": a checkpoint resumes only the settings it was written with.
            raise ZoodipError(
                f"the loss became {losses[np.isfinite(losses) == 0][0]} at step {self.step}: the model or the "
                "embedding diverged; start again with a lower learning_rate or mu in a new output_dir"
            )
        # As in the authors' code, the estimate is normalized by the dimension that survives the
        # subspace projection (the searched dimension until the first fit).
        effective_dim = None if self.projector is None else self.projector.effective_dim
        g = estimator.estimate(float(losses[0]), losses[1:], z, effective_dim=effective_dim)
        if self.projector is not None:
            g = self.projector.project(g)
        self.optimizer.lr = self.learning_rate_now()
        self.v = np.asarray(self.optimizer.step(self.v, g), dtype=np.float32)
        if self.projector is not None:
            self.projector.observe(self.v)
        self.step += 1
        return float(losses[0])

    def draw_inputs(self, rng: np.random.Generator) -> StepInputs:
        """This run's sample for a step (zoodip.step_inputs: the same draws for every method)."""
        return draw_step_inputs(rng, self.latents, self.timesteps, self.model.schedule,
                                lambda photo, r: self.prompts.prompt_for(self.image_names[photo], r), self.latent_std)

    def prompt_ids(self, sample: StepInputs) -> np.ndarray:
        return self.model.tokenizer(sample.prompt)[0]

    def learning_rate_now(self) -> float:
        """The learning rate of the next step (a pure function of the step: resumes need no state)."""
        config = self.config
        return lr_at(self.step, config.learning_rate, config.lr_scheduler, config.lr_warmup_steps, config.max_train_steps)

    # -- embeddings ----------------------------------------------------------------------------
    def embedding_metadata(self) -> dict[str, str]:
        """What a saved embedding's header records about its run (read back by read_embedding_metadata)."""
        late_n = self.estimators.late.n if self.config.orthogonal_after is not None else None
        settings = self.config.recorded_settings(self.resolution, late_n)
        return {"steps": str(self.step), "forwards": str(self.train_forwards), "model": self.model_id,
                "model_name": self.config.export_dir.name, "settings": json.dumps(settings, sort_keys=True)}

    def save_embedding(self, path: Path, v: np.ndarray, save: Callable[..., Path] = save_learned_embeds) -> Path:
        """The flat vector ``v`` as the token's [num_vectors, width] embedding file (diffusers' layout by default)."""
        return save(path, self.config.placeholder_token, as_matrix(v, self.width), self.embedding_metadata(),
                    then="resume with resume=True (the checkpoint is saved)")

    def snapshot_path(self) -> Path:
        return self.config.output_dir / SNAPSHOT_NAME.format(step=self.step)

    # -- checkpoints ---------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.config.output_dir / CHECKPOINT_NAME

    def state_dict(self) -> dict[str, np.ndarray]:
        state: dict[str, np.ndarray] = {
            "fingerprint": np.array(self.config.fingerprint()),
            "photos": np.array(self.photos_id),
            "model": np.array(self.model_id),
            "step": np.array(self.step, np.int64),
            "v": self.v,
            "best_v": self.best_v,
            "best_eval": np.array(np.nan if self.best_eval is None else self.best_eval, np.float64),
            "eval_history": np.array(self.eval_history, np.float64).reshape(-1, 2),
            "evals_without_improvement": np.array(self.evals_without_improvement, np.int64),
            "train_forwards": np.array(self.train_forwards, np.int64),
        }
        for prefix, part in (("opt/", self.optimizer), ("sg/", self.projector)):
            if part is not None:
                for key, value in part.state_dict().items():
                    state[prefix + key] = np.asarray(value)
        return state

    def save_checkpoint(self) -> Path:  # (into the folder the run's start made: one removed since is not remade)
        check_folder_kept(self.config.output_dir, self._folder_identity)
        return write_checkpoint(self.checkpoint_path, self.state_dict())

    def load_checkpoint(self) -> None:
        path = self.checkpoint_path
        state = read_checkpoint(path, self.config.fingerprints(), self.photos_id, self.model_id,
                                (self.config.num_vectors, self.width), self._changed_settings)
        try:
            self._load_state(state)
        except ZoodipError as exc:
            raise ZoodipError(f"checkpoint {path} is damaged ({exc}): delete it and start again without resume=True") from None
        except (KeyError, ValueError, TypeError, IndexError) as exc:
            what = f"no {exc}" if isinstance(exc, KeyError) else str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ZoodipError(f"checkpoint {path} is damaged ({what}): delete it and start again without resume=True") from None

    def _changed_settings(self) -> list[str]:
        """The settings of this run that differ from those its folder's config.json recorded (none if unreadable)."""
        try:
            return self.config.settings_differing_from(parse_json((self.config.output_dir / CONFIG_NAME).read_text()))
        except (OSError, ValueError, TypeError, ZoodipError):  # only a hint for the message: never its own error
            return []

    def _load_state(self, state: dict[str, np.ndarray]) -> None:
        """Restore the run state; a missing key or a wrong shape raises (KeyError, ValueError, ZoodipError)."""
        dim = self.dim
        step = int(state["step"])
        if step < 0:
            raise ValueError(f"step {step} is negative")
        self.step = step
        self.v = checkpoint_vector(state, "v", dim)
        self.best_v = checkpoint_vector(state, "best_v", dim)
        best = float(state["best_eval"])
        self.best_eval = None if math.isnan(best) else best
        self.eval_history = [(int(s), float(e)) for s, e in np.asarray(state["eval_history"]).reshape(-1, 2)]
        self.evals_without_improvement = int(state["evals_without_improvement"])
        self.train_forwards = int(state["train_forwards"])
        for prefix, part in (("opt/", self.optimizer), ("sg/", self.projector)):
            if part is not None:
                part.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})

    # -- the run -------------------------------------------------------------------------------
    def _log(self, record: dict, then: str | None = None) -> None:
        check_folder_kept(self.config.output_dir, self._folder_identity)  # (the append would remake a removed one)
        append_log(self.config.output_dir / LOG_NAME, record, *([then] if then else []))

    def _start_fresh(self) -> None:
        """Write config.json, the step-0 evaluation and the first checkpoint, or nothing at all."""
        out = self.config.output_dir
        missing = [p for p in [out, *out.parents] if not p.exists()]
        linked = os.path.lexists(out / CHECKPOINT_NAME)  # (a link to a file not there yet: the user's, kept)
        try:
            out.mkdir(parents=True, exist_ok=True)
            self._folder_identity = folder_identity(out)
            for name in (LOG_NAME, CONFIG_NAME):  # anew (a link into another run's folder: the link, not its file)
                (out / name).unlink(missing_ok=True)
            (out / CONFIG_NAME).write_text(json.dumps(self.config.to_json(), indent=2, default=str))
            if self.config.eval_every:
                self._phase(f"first evaluation ({len(self._eval_items)} forwards)")
                value = self._record_eval()
                self._log({"step": 0, "eval_loss": value}, "run again")  # (a failed start removes its folder)
            self.save_checkpoint()
        except BaseException as exc:
            for name in (CONFIG_NAME, LOG_NAME, *(() if linked else (CHECKPOINT_NAME,))):
                try:
                    (out / name).unlink(missing_ok=True)
                except OSError:
                    pass
            for folder in missing:  # innermost first; only folders this run created
                try:
                    folder.rmdir()
                except OSError:
                    pass
            if isinstance(exc, OSError):
                reason, fix = write_failure(exc)
                raise ZoodipError(f"cannot start the run in {out} ({reason}): {fix} or choose another output_dir") from None
            raise

    def _record_eval(self) -> float:
        value = self.evaluation_loss(self.v)
        self.eval_history.append((self.step, value))
        if self.best_eval is None or value < self.best_eval:
            self.best_eval, self.best_v, self.evals_without_improvement = value, self.v.copy(), 0
        else:
            self.evals_without_improvement += 1
        return value

    def run(self, resume: bool = False) -> PersonalizeResult:
        with run_folder_lock(self.config.output_dir):
            return self._run(resume)

    def _run(self, resume: bool) -> PersonalizeResult:
        self._prepare_output(resume)
        self._start_step = self.step  # (a result's steps are the run's; its time is this session's)
        started = time.monotonic()
        forwards_at_start = self.loss.forwards
        self._step_seconds, self._forwards_timed = 0.0, 0  # the ETA's basis: steps, by their forwards,
        self._preview_seconds, self._previews_timed = 0.0, 0  # and previews (a preview may cost 100 steps' forwards)
        status = "done"
        loss: float | None = None
        if resume and preview_due(self.config, self.step) and not preview_path(self.config, self.step).exists():
            # Its write failed after the step's checkpoint (a full disk): the step is not run again, so it is written now
            self._preview(None, None, started, forwards_at_start)
        while self.step < self.config.max_train_steps:
            if self.cancel_event.is_set():
                status = "cancelled"
                break
            step_started = time.monotonic()
            loss = self.train_step()
            if self._after_step(loss, step_started, started, forwards_at_start):
                status = "early-stopped"
                break
        return self._finish(status, loss, started, forwards_at_start)

    def _prepare_output(self, resume: bool) -> None:
        """Clean stale temp files, then load the checkpoint (resume) or start the run's files afresh."""
        out = self.config.output_dir
        remove_stale_run_temp_files(self.config)
        check_run_folder(self.config, resume)  # (again: checked before the model loaded, now under the lock)
        self._folder_identity = folder_identity(out)  # (a fresh run's: once its start has made the folder)
        if resume:
            self._phase("loading the checkpoint")
            self.load_checkpoint()
            if self.step > self.config.max_train_steps:  # a run does not go back: its embedding would be step's
                raise ZoodipError(f"the checkpoint is at step {self.step}, past max_train_steps "
                                  f"{self.config.max_train_steps}: resume with at least {self.step}, or start a new run")
            truncate_log(self.config.output_dir / LOG_NAME, self.step)
        else:
            self._start_fresh()

    def _after_step(self, loss: float, step_started: float, started: float, forwards_at_start: int) -> bool:
        """Log, evaluate, checkpoint, snapshot, report and preview after a step; True: stop early."""
        config, total = self.config, self.config.max_train_steps
        record: dict = {"step": self.step, "loss": loss}
        if self.projector is not None and self.projector.kept_dims is not None:
            record["kept_dims"] = int(self.projector.kept_dims)
        if config.lr_scheduler != "constant":
            record["lr"] = float(self.optimizer.lr)  # the rate this step used
        event = "step"
        if config.eval_every and (self.step % config.eval_every == 0 or self.step == total):
            record["eval_loss"] = self._record_eval()
            event = "eval"
        self._log(record)
        stop_early = bool(config.early_stop_patience) and self.evals_without_improvement >= config.early_stop_patience
        saved = bool(config.checkpoint_every and self.step % config.checkpoint_every == 0) or self.step == total
        if saved or stop_early:
            self.save_checkpoint()
        if config.save_steps and self.step % config.save_steps == 0:
            self.save_embedding(self.snapshot_path(), self.v)
        self._step_seconds += time.monotonic() - step_started
        self._forwards_timed += self.estimators.forwards_for(self.step) - self.estimators.forwards_for(self.step - 1)
        self._report(event, loss, record.get("eval_loss"), started, forwards_at_start)
        if preview_due(config, self.step):
            preview_started = time.monotonic()
            self._preview(loss, record.get("eval_loss"), started, forwards_at_start, saved or stop_early)
            self._preview_seconds, self._previews_timed = (self._preview_seconds + time.monotonic() - preview_started,
                                                           self._previews_timed + 1)
        return stop_early

    def _preview(self, loss: float | None, eval_loss: float | None, started: float, forwards_at_start: int,
                 saved: bool = True) -> None:
        preview = write_preview(self.model, self.config, as_matrix(self.v, self.width), self.step, self.resolution,
                                self.loss.batched, keep=None if saved else self.save_checkpoint)
        self._report("validation", loss, eval_loss, started, forwards_at_start, path=str(preview))

    def _finish(self, status: str, loss: float | None, started: float, forwards_at_start: int) -> PersonalizeResult:
        """The last checkpoint and the embedding file (the best one if stopped early); the run's result."""
        out = self.config.output_dir
        self.save_checkpoint()
        # Early stopping keeps the best evaluated embedding; otherwise the last one (as diffusers' script does).
        final = self.best_v if status == "early-stopped" else self.v
        embedding_path = None
        if status == "done" and self.step > 0:
            check_outcome(final, self.v_init, self.model.max_token_norm(), self.width)
        if status != "cancelled":
            embedding_path = self.save_embedding(out / EMBEDDING_NAME, final)
            if self.config.a1111:
                self.save_embedding(out / a1111_file_name(self.config.placeholder_token), final, save_a1111_embedding)
        elif self.step > 0:  # what a cancelled run learned so far, usable before it is resumed
            embedding_path = self.save_embedding(self.snapshot_path(), self.v)
        self._report(status, loss, self.eval_history[-1][1] if self.eval_history else None, started, forwards_at_start)
        return PersonalizeResult(
            status=status,
            steps=self.step,
            embedding_path=embedding_path,
            checkpoint_path=self.checkpoint_path,
            log_path=out / LOG_NAME,
            initial_eval_loss=self.eval_history[0][1] if self.eval_history else None,
            final_eval_loss=self.eval_history[-1][1] if self.eval_history else None,
            best_eval_loss=self.best_eval,
            eval_history=list(self.eval_history),
            forwards=self.train_forwards,
            wall_s=time.monotonic() - self._created,
            start_step=self._start_step,
        )

    def _report(self, event: str, loss: float | None, eval_loss: float | None, started: float, forwards_at_start: int,
                path: str | None = None) -> None:
        if self.on_progress is None:
            return
        elapsed = time.monotonic() - started
        done = self.loss.forwards - forwards_at_start
        rate = done / elapsed if elapsed > 0 else 0.0
        remaining = self.estimators.forwards_for(self.config.max_train_steps) - self.estimators.forwards_for(self.step)
        # Mean time per training forward of this session's steps (evaluations and checkpoints included, previews
        # not): counting forwards, not steps, keeps it right when a two-phase run's steps change cost.
        eta = remaining * self._step_seconds / self._forwards_timed if self._forwards_timed else None
        if eta is not None and self._previews_timed:  # (the previews still to come, once one has been timed)
            to_come = previews_in(self._start_step, self.config.max_train_steps, self.config.validation_steps)
            eta += (to_come - self._previews_timed) * self._preview_seconds / self._previews_timed
        kept = self.projector.kept_dims if self.projector is not None else None
        self.on_progress(Progress(event, self.step, self.config.max_train_steps, loss, eval_loss,
                                  None if kept is None else int(kept), self.loss.forwards, elapsed, rate, eta, path=path))

    def _phase(self, phase: str) -> None:
        """A setup phase (before the first step), so that a slow model load is not silence."""
        if self.on_progress is not None:
            forwards = self.loss.forwards if hasattr(self, "loss") else 0
            self.on_progress(Progress("setup", 0, self.config.max_train_steps, None, None, None, forwards,
                                      time.monotonic() - self._created, 0.0, None, phase=phase))


def personalize(config: PersonalizeConfig, on_progress: Callable[[Progress], None] | None = None,
                resume: bool = False, cancel_event: threading.Event | None = None) -> PersonalizeResult:
    """Run (or resume) a personalization and write ``learned_embeds.safetensors`` into the output folder."""
    check_run_arguments(config, on_progress, resume, cancel_event)
    check_run_folder(config, resume)  # before the model loads
    return Personalizer(config, on_progress, cancel_event).run(resume=resume)

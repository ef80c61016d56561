"""The training methods the quality benchmark compares, on one shared "job" description.

A *job* is one personalization problem: photos of a concept (or, for the optimization-only check, a
planted target embedding), a placeholder and an initializer word. Every method gets the same jobs,
the same seed, and the same budget of UNet forward passes, and returns snapshots of the learned
embedding at fixed fractions of that budget (the benchmark scores the snapshots afterwards).

Methods (see :data:`METHODS`):

    init         the initializer word's embedding (no training: the floor)
    ti-backprop  textual inversion by backpropagation, torch fp32 (the ceiling); 1 step = 1 forward
                 (+ its backward)
    zo-naive     ZO-Adam, n=2, mu=1e-3, no Subspace Gradient, uniform timesteps [0, T)
    zo-sg        + Subspace Gradient, uniform timesteps
    zo-puts      PUTS timesteps, no Subspace Gradient
    zoodip       Subspace Gradient + PUTS (the paper's reference hyperparameters)
    es           OpenAI-ES (antithetic, rank-shaped fitness, Adam) on the embedding, forward-only

ZO methods and ES run the SDK's own :class:`zoodip.trainer.Personalizer` loop on the INT8 export (ES
replaces only ``train_step``); the backprop baseline runs diffusers' torch modules with the same
photos, prompts, noise/timestep draws and loss. A variant changes hyperparameters with
``name[key=value,...]``, e.g. ``zoodip[t=300-700]``, ``zoodip[adam16=1]`` (ZO-Adam's state in fp16, as the
authors' code keeps it), ``zoodip[flip=1]``, ``zoodip[templates=ti]``, ``zoodip[vae=per-step]`` (where the
SDK's defaults differ from the authors' code), ``es[pop=16,sigma=0.05]``, or the diagnostics ``ti-backprop[t=500-900]`` and
``ti-backprop[curvature=0.999,coords=1]`` (exact gradients confined to the SDK's curvature subspace),
``default[ortho_after=1800,ortho_n=30]`` (Gaussian directions for 1800 forwards, then orthogonal frames of 30), and
``default[num_vectors=2]`` (two vectors per token, as diffusers' ``--num_vectors``; forward-only methods only,
on the world task: the snapshots then hold the vectors flattened), ``ti-backprop[draws=1]`` (the same method
rerun with other training draws: noise, timesteps, photo order and directions; the job's photos and its scoring
stay, so the benchmark's own repeat noise can be measured against the stored run), and ``default[res=16]`` (training
at another resolution than the model's own, e.g. a coarse one; the snapshots are scored as any other, at the
model's resolution).
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from benchmarks._quality_backprop import run_backprop, torch_source  # noqa: F401 (qm.torch_source stays)
from benchmarks._quality_snapshots import Job, Snapshot, checkpoint_steps  # noqa: F401 (qm.Job etc. stay)
from zoodip.model import ExportedModel
from zoodip.step_inputs import StepInputs, draw_step_inputs, step_rng
from zoodip.trainer import DenoisingLoss, PersonalizeConfig, Personalizer
from zoodip.config import VAE_SAMPLING
from zoodip.errors import ZoodipError
from zoodip.gradient_estimate import EstimatorSchedule, RandomGradientEstimator
from zoodip.image_side import side_problem
from zoodip.lr_schedule import LR_SCHEDULERS
from zoodip.prompts import TEXTUAL_INVERSION_TEMPLATE_FILES
from zoodip.zo import ZOAdam

REFERENCE_PUTS = (500, 900)
# ``draws=K`` shifts a job's training seed by this much per K: far above any run's training seeds (0, 1, 2, ...),
# so a rerun never trains on another job's draws.
DRAWS_STRIDE = 1000


@dataclass(frozen=True)
class MethodSpec:
    """One method with its hyperparameters."""

    name: str  # label in the results (includes the variant suffix)
    kind: str  # "init", "zo", "es", "backprop"
    subspace: bool = False
    t_range: tuple[int, int] | None = None  # None: uniform [0, T)
    lr: float | None = None  # None: the kind's default
    n: int = 2
    directions: str = "gaussian"  # zoodip.gradient_estimate.DIRECTIONS (PersonalizeConfig.directions)
    # Two phases (PersonalizeConfig.orthogonal_after / orthogonal_n): Gaussian directions for ortho_after forwards,
    # then orthogonal frames of ortho_n directions (given here: the budget's step count depends on it).
    ortho_after: int | None = None
    ortho_n: int | None = None
    mu: float = 1e-3
    tau: int | None = 128  # None: the SDK's default_tau for the model's width
    nu: float = 1e-3
    mode: str = "history-span"  # SubspaceProjector mode: the authors' code, or "principal"
    vocab: float | None = None  # ZO directions in the token table's principal subspace holding this variance
    curvature: float | None = 0.0  # curvature subspace fraction (zoodip.curvature); 0: off, None: the SDK's automatic
    adam_state: str = "float64"  # ZO-Adam's moment dtype; "float16" is the authors' code (zoodip.zo.ZOAdam)
    adam_eps: float = 1e-3  # ZO-Adam's eps (PersonalizeConfig.adam_eps; the paper's 1e-3)
    clip: float | None = None  # ZO-Adam's estimate clipping, x RMS norm (PersonalizeConfig.clip_estimate)
    schedule: str = "constant"  # learning-rate schedule (zoodip.lr_schedule.LR_SCHEDULERS)
    pop: int = 8  # ES population (antithetic pairs * 2); one generation costs pop forwards
    sigma: float = 0.1  # ES perturbation, relative to the RMS of the initial embedding
    weight_decay: float = 1e-2  # backprop AdamW (diffusers' textual_inversion default)
    coords: bool = False  # backprop with curvature=F: train the subspace's coordinates (see _backprop_parameters)
    # Where the SDK's defaults differ from the authors' code (ZO methods; PersonalizeConfig's docstring):
    flip: bool = False  # random horizontal flips with p=0.5 (theirs: always)
    templates: str = "builtin"  # "builtin" (the SDK's lists) or "ti" (the textual-inversion paper's, theirs)
    vae: str = "once"  # VAE posterior sampled "once" per photo or "per-step" (theirs)
    num_vectors: int = 1  # vectors per token (PersonalizeConfig.num_vectors); forward-only methods
    draws: int = 0  # which set of training draws: 0 is the job's own; K > 0 trains on seed + DRAWS_STRIDE * K
    res: int | None = None  # training resolution in px (PersonalizeConfig.resolution); None: the model's own

    @property
    def forwards_per_step(self) -> int:
        return {"zo": self.n + 1, "es": self.pop, "backprop": 1, "init": 1}[self.kind]

    def two_phase_schedule(self) -> EstimatorSchedule:
        """A two-phase run's forwards per step (EstimatorSchedule's arithmetic: only the direction counts matter)."""
        return EstimatorSchedule.two_phase(RandomGradientEstimator(self.ortho_n, n=self.n), self.ortho_after, self.ortho_n)

    def budget_steps(self, budget: int) -> int:
        """The steps a budget of ``budget`` forwards pays for (at least one)."""
        if self.ortho_after is None:
            return max(1, budget // self.forwards_per_step)
        return max(1, self.two_phase_schedule().steps_within(budget))

    def snapshot_steps(self, steps: int, count: int) -> list[int]:
        """Steps at which to snapshot: evenly spaced in steps (one phase, as every stored run) or, for a
        two-phase run, whose steps change cost, evenly spaced in forwards."""
        if self.ortho_after is None:
            return checkpoint_steps(steps, count)
        schedule = self.two_phase_schedule()  # checkpoint_steps' points in forwards, as steps
        return sorted({schedule.steps_within(forwards) for forwards in checkpoint_steps(schedule.forwards_for(steps), count)})

    def learning_rate(self) -> float:
        if self.lr is not None:
            return self.lr
        return {"zo": 1e-2, "es": 1e-2, "backprop": 5e-3, "init": 0.0}[self.kind]

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "lr": self.learning_rate()}
        if self.kind == "zo":
            out.update(n=self.n, mu=self.mu, subspace=self.subspace, tau=self.tau, nu=self.nu, mode=self.mode,
                       t_range=list(self.t_range) if self.t_range else "uniform", optimizer="ZO-Adam")
            if self.vocab is not None:
                out["vocabulary_variance"] = self.vocab
            if self.curvature != 0:
                out["curvature_fraction"] = "automatic" if self.curvature is None else self.curvature
            if self.schedule != "constant":
                out["lr_scheduler"] = self.schedule
            if self.adam_state != "float64":
                out["adam_state_dtype"] = self.adam_state
            if self.clip is not None:
                out["clip_estimate"] = self.clip
            if self.adam_eps != MethodSpec.adam_eps:
                out["adam_eps"] = self.adam_eps
            if self.directions != "gaussian":
                out["directions"] = self.directions
            if self.ortho_after is not None:
                out.update(orthogonal_after=self.ortho_after, orthogonal_n=self.ortho_n)
            for key, default in (("flip", False), ("templates", "builtin"), ("vae", "once")):
                if getattr(self, key) != default:
                    out[key] = getattr(self, key)
        elif self.kind == "es":
            out.update(pop=self.pop, sigma_rel=self.sigma, t_range=list(self.t_range) if self.t_range else "uniform",
                       optimizer="Adam on the ES estimate", fitness="centered ranks, antithetic")
        elif self.kind == "backprop":
            out.update(optimizer="AdamW", weight_decay=self.weight_decay,
                       t_range=list(self.t_range) if self.t_range else "uniform", precision="torch fp32")
            if self.curvature:
                out["curvature_subspace"] = self.curvature
                out["in_subspace"] = "coordinates" if self.coords else "projected gradient"
        if self.num_vectors != 1:
            out["num_vectors"] = self.num_vectors
        if self.res is not None:
            out["training_resolution"] = self.res
        if self.draws:
            out["training_draws"] = f"seed + {DRAWS_STRIDE} x {self.draws}"
        return out


_SDK_DEFAULTS = PersonalizeConfig(export_dir=Path(), images=Path(), output_dir=Path())


def base_methods(puts: tuple[int, int] = REFERENCE_PUTS) -> dict[str, MethodSpec]:
    return {
        "init": MethodSpec("init", "init"),
        "ti-backprop": MethodSpec("ti-backprop", "backprop"),
        "zo-naive": MethodSpec("zo-naive", "zo", subspace=False, t_range=None),
        "zo-sg": MethodSpec("zo-sg", "zo", subspace=True, t_range=None),
        "zo-puts": MethodSpec("zo-puts", "zo", subspace=False, t_range=puts),
        "zoodip": MethodSpec("zoodip", "zo", subspace=True, t_range=puts),
        "paper": MethodSpec("paper", "zo", subspace=True, t_range=puts),  # = zoodip: issue 16's name for it
        "es": MethodSpec("es", "es", t_range=None),
        # The SDK's default configuration (PersonalizeConfig's defaults), whatever they are today.
        "default": MethodSpec("default", "zo", subspace=_SDK_DEFAULTS.subspace, t_range=_SDK_DEFAULTS.t_range,
                              lr=_SDK_DEFAULTS.learning_rate, n=_SDK_DEFAULTS.n, mu=_SDK_DEFAULTS.mu,
                              tau=_SDK_DEFAULTS.tau, nu=_SDK_DEFAULTS.nu, curvature=_SDK_DEFAULTS.curvature_fraction,
                              schedule=_SDK_DEFAULTS.lr_scheduler),
    }


METHODS = tuple(base_methods())
_OVERRIDE = re.compile(r"^([a-z0-9-]+)(?:\[(.*)\])?$")


def _is_on(value: str) -> bool:
    """A method setting's boolean: ``1``, ``true``, ``on`` or ``yes`` (any case) is on, anything else off."""
    return value.lower() in ("1", "true", "on", "yes")


def timestep_range(text: str, what: str, num_train: int = 1000) -> tuple[int, int]:
    """``LOW-HIGH`` as timesteps 0 <= LOW < HIGH <= ``num_train`` (the worlds' schedules, and SD's, have 1000);
    else a ValueError naming ``what``."""
    low, _, high = str(text).partition("-")
    try:
        pair = (int(low), int(high))
    except ValueError:
        pair = (0, -1)
    if not 0 <= pair[0] < pair[1] <= num_train:
        raise ValueError(f"{what} {text!r}: give a timestep range LOW-HIGH with 0 <= LOW < HIGH <= {num_train}, "
                         "e.g. 500-900")
    return pair


def _number(kind: type, key: str, value: str, text: str) -> Any:
    """A method setting's number, or a ValueError naming the setting (not Python's 'invalid literal')."""
    try:
        number = kind(value)
    except ValueError:
        raise ValueError(f"method {text!r}: {key}={value!r} is not {'a whole number' if kind is int else 'a number'}") from None
    if not np.isfinite(number):
        raise ValueError(f"method {text!r}: {key}={value!r} is not finite")
    return number


def parse_method(text: str, puts: tuple[int, int] = REFERENCE_PUTS) -> MethodSpec:
    """``zoodip`` or ``zoodip[t=300-700,tau=64,lr=0.02]`` -> MethodSpec."""
    match = _OVERRIDE.match(text.strip())
    methods = base_methods(puts)
    if not match or match.group(1) not in methods:
        raise ValueError(f"unknown method {text!r}: use one of {', '.join(methods)} (optionally name[key=value,...])")
    spec = methods[match.group(1)]
    changes: dict[str, Any] = {"name": text.strip()}
    for item in filter(None, (match.group(2) or "").split(",")):
        key, _, value = item.partition("=")
        key = key.strip()
        if key == "t":
            changes["t_range"] = None if value in ("uniform", "all") else timestep_range(value, f"method {text!r}: t")
        elif key in ("n", "tau", "pop", "num_vectors", "ortho_after", "ortho_n", "draws", "res"):
            changes[key] = _number(int, key, value, text)
        elif key in ("lr", "mu", "nu", "sigma", "weight_decay", "vocab", "curvature", "clip", "eps"):
            changes["adam_eps" if key == "eps" else key] = _number(float, key, value, text)
        elif key == "mode":
            if value not in ("history-span", "principal"):
                raise ValueError(f"method {text!r}: mode must be history-span or principal")
            changes["mode"] = value
        elif key == "sg":
            changes["subspace"] = _is_on(value)
        elif key == "sched":
            if value not in LR_SCHEDULERS:
                raise ValueError(f"method {text!r}: sched must be one of {', '.join(LR_SCHEDULERS)}")
            changes["schedule"] = value
        elif key == "ortho":  # ortho=1: orthogonal directions
            changes["directions"] = "orthogonal" if _is_on(value) else "gaussian"
        elif key == "coords":
            changes["coords"] = _is_on(value)
        elif key == "adam16":  # adam16=1: ZO-Adam's state in fp16, as the authors' code keeps it
            changes["adam_state"] = "float16" if _is_on(value) else "float64"
        elif key == "flip":
            changes["flip"] = _is_on(value)
        elif key in ("templates", "vae"):
            choices = ("builtin", "ti") if key == "templates" else VAE_SAMPLING
            if value not in choices:
                raise ValueError(f"method {text!r}: {key} must be one of {', '.join(choices)}")
            changes[key] = value
        else:
            raise ValueError(f"method {text!r}: unknown setting {key!r}")
    spec = replace(spec, **changes)
    if (spec.ortho_after is None) != (spec.ortho_n is None) or (spec.ortho_after is not None and spec.kind != "zo"):
        raise ValueError(f"method {text!r}: ortho_after=FORWARDS and ortho_n=N go together, on ZO methods")
    if spec.coords and not (spec.kind == "backprop" and spec.curvature):
        raise ValueError(f"method {text!r}: coords applies to ti-backprop with curvature=F only")
    if spec.draws < 0 or (spec.draws and spec.kind == "init"):
        raise ValueError(f"method {text!r}: draws=K takes K >= 0, on a method that trains")
    if spec.res is not None:
        res_problem = side_problem(spec.res)  # the SDK's --resolution rule
        if res_problem or spec.kind == "init":
            raise ValueError(f"method {text!r}: res=PX {res_problem or 'applies to a method that trains'}")
    if spec.num_vectors != 1 and spec.kind not in ("zo", "es"):
        raise ValueError(f"method {text!r}: num_vectors applies to the forward-only methods (the SDK's loop) only")
    return spec


# --------------------------------------------------------------------------------------------
# Forward-only methods (SDK loop)
# --------------------------------------------------------------------------------------------


class PlantedLoss(DenoisingLoss):
    """The denoising loss whose target is the UNet's own prediction under a planted embedding v*.

    The target is recomputed for each (x_t, t, prompt) with the same graphs (not counted as a
    forward of the method), so L(v*) = 0 exactly and every method chases the same optimum.
    """

    def __init__(self, model: ExportedModel, placeholder_id: int, v_star: np.ndarray, batched: bool = True,
                 clip_skip: int = 0) -> None:
        super().__init__(model, placeholder_id, batched, clip_skip)
        self.v_star = np.asarray(v_star, np.float32)

    def planted_target(self, ids: np.ndarray, x_t: np.ndarray, t: int) -> np.ndarray:
        cond = self.text_states(self.text_inputs(ids, self.v_star[None]))
        return self.model.unet(x_t[None], np.full(1, t, np.float32), cond)[0]

    def __call__(self, ids, candidates, x_t, t, target):  # type: ignore[override]
        return super().__call__(ids, candidates, x_t, t, self.planted_target(ids, x_t, t))


class ESPersonalizer(Personalizer):
    """OpenAI-ES (Salimans et al. 2017) in the SDK loop: one step = one generation of ``pop`` forwards.

    All members of a generation are scored on the same photo, noise, timestep and prompt (common
    random numbers, as the ZO estimator does); fitness is replaced by centered ranks; the estimate
    ``sum_i rank_i eps_i / (pop sigma)`` drives Adam. ``sigma`` is relative to the RMS of the
    initial embedding so one setting fits models with different embedding scales.
    """

    def __init__(self, config: PersonalizeConfig, pop: int, sigma_rel: float, **kwargs: Any) -> None:
        if pop < 2 or pop % 2:
            raise ValueError("ES population must be an even number >= 2")
        # ES's own parts: Adam with the usual eps on its estimate, and no Subspace Gradient.
        super().__init__(config, make_optimizer=lambda dim, config: ZOAdam(dim, lr=config.learning_rate, eps=1e-8),
                         make_projector=lambda dim, config, basis: None, **kwargs)
        self.pop = pop
        self.sigma = float(sigma_rel) * float(np.sqrt(np.mean(np.square(self.v_init, dtype=np.float64))))

    def draw_inputs(self, rng: np.random.Generator) -> StepInputs:
        # The photo itself, never its mirror image: one view, whose draw takes nothing from rng.
        return draw_step_inputs(rng, self.latents[:, :1], self.timesteps, self.model.schedule,
                                lambda photo, r: self.prompts.prompt_for(self.image_names[photo], r))

    def train_step(self) -> float:
        rng = step_rng(self.config.seed, self.step)
        sample = self.draw_inputs(rng)
        half = rng.standard_normal((self.pop // 2, len(self.v))).astype(np.float32)
        eps = np.concatenate([half, -half])
        candidates = (self.v[None].astype(np.float64) + self.sigma * eps).astype(np.float32)
        losses = self.loss(self.prompt_ids(sample), candidates, sample.x_t, sample.t, sample.target)
        self.train_forwards += len(candidates)
        ranks = np.empty(len(losses))
        ranks[np.argsort(losses)] = np.arange(len(losses))
        shaped = ranks / (len(losses) - 1) - 0.5  # low loss -> negative weight: g points uphill
        g = (shaped @ eps.astype(np.float64)) / (len(losses) * self.sigma)
        self.v = np.asarray(self.optimizer.step(self.v, g), dtype=np.float32)
        self.step += 1
        return float(np.mean(losses))


def zo_method_settings(spec: MethodSpec, num_train_timesteps: int = 1000) -> dict[str, Any]:
    """A ZO method's PersonalizeConfig settings (checked before a run with ``PersonalizeConfig.check_method_settings``)."""
    return dict(
        learning_rate=spec.learning_rate(), n=spec.n, directions=spec.directions, orthogonal_after=spec.ortho_after,
        orthogonal_n=spec.ortho_n, mu=spec.mu, subspace=spec.subspace, t_range=spec.t_range or (0, num_train_timesteps),
        **({"tau": spec.tau, "nu": spec.nu, "subspace_mode": spec.mode} if spec.subspace else {}),  # (else unused)
        vocabulary_variance=spec.vocab, curvature_fraction=spec.curvature, adam_state_dtype=spec.adam_state,
        adam_eps=spec.adam_eps, clip_estimate=spec.clip, lr_scheduler=spec.schedule, num_vectors=spec.num_vectors,
        flip=spec.flip, vae_sampling=spec.vae, resolution=spec.res)


def checked_method(text: str, puts: tuple[int, int] = REFERENCE_PUTS) -> MethodSpec:
    """``parse_method``, a ZO method's settings also checked as the SDK checks them: before any method trains (a
    worker's traceback lost the methods before it)."""
    spec = parse_method(text, puts)
    if spec.kind == "zo":
        try:
            PersonalizeConfig.check_method_settings(**zo_method_settings(spec))
        except ZoodipError as exc:
            raise ValueError(f"method {text!r}: {exc}") from None
    return spec


def _zo_config(spec: MethodSpec, job: Job, export_dir: Path, out_dir: Path, steps: int, seed: int,
               num_train_timesteps: int) -> PersonalizeConfig:
    return PersonalizeConfig(
        export_dir=export_dir, images=Path(job.photos), output_dir=out_dir, placeholder_token=job.placeholder,
        initializer_token=job.initializer, max_train_steps=steps, seed=seed, eval_every=0, checkpoint_every=0,
        threads=1, template_file=TEXTUAL_INVERSION_TEMPLATE_FILES["object"] if spec.templates == "ti" else None,
        **zo_method_settings(spec, num_train_timesteps))


def run_forward_only(spec: MethodSpec, job: Job, export_dir: Path, work: Path, budget: int, checkpoints: int,
                     seed: int) -> list[Snapshot]:
    """ZO methods and ES through the SDK's Personalizer.run(); snapshots of v along the run."""
    if job.planted is not None and spec.num_vectors != 1:
        raise ValueError(f"method {spec.name}: the planted check plants one vector; num_vectors needs the world task")
    num_t = int(ExportedModel.load(export_dir).schedule.num_train_timesteps)
    steps = spec.budget_steps(budget)
    out_dir = work / f"{job.name}"
    if out_dir.exists():
        import shutil

        shutil.rmtree(out_dir)
    config = _zo_config(spec, job, export_dir, out_dir, steps, seed, num_t)
    wanted = set(spec.snapshot_steps(steps, checkpoints))
    snaps: list[Snapshot] = []

    def on_progress(progress: Any) -> None:  # steps only: `trainer` is bound by then
        if progress.event in ("step", "eval") and trainer.step in wanted:
            snaps.append(Snapshot(trainer.step, trainer.train_forwards, time.perf_counter() - started, trainer.v.copy()))

    parts: dict[str, Any] = {"on_progress": on_progress}
    if job.planted is not None:
        v_star, planted_batched = np.asarray(job.planted), bool(config.batched)
        # The planted loss evaluates candidates one by one unless the config says batched (as it always has:
        # the results of earlier planted runs stay reproducible).
        parts["make_loss"] = lambda model, placeholder_id, batched, clip_skip: PlantedLoss(
            model, placeholder_id, v_star, planted_batched, clip_skip)
    if spec.kind == "es":
        trainer: Personalizer = ESPersonalizer(config, pop=spec.pop, sigma_rel=spec.sigma, **parts)
    else:
        trainer = Personalizer(config, **parts)
    snaps.append(Snapshot(0, 0, 0.0, trainer.v.copy()))
    started = time.perf_counter()
    trainer.run()
    return snaps


def run_method(spec: MethodSpec, job: Job, export_dir: Path, work: Path, budget: int, checkpoints: int, seed: int,
               torch_model: Path | None = None) -> list[Snapshot]:
    seed = job.training_seed(seed) + DRAWS_STRIDE * spec.draws  # the draws only: photos and scoring keep the job's
    if spec.kind == "init":
        model = ExportedModel.load(export_dir)
        ids = model.tokenizer.token_ids_for_word(job.initializer)
        return [Snapshot(0, 0, 0.0, np.asarray(model.token_embeddings[ids[0]], np.float32))]
    if spec.kind == "backprop":
        return run_backprop(spec, job, export_dir, torch_source(export_dir, torch_model), budget, checkpoints, seed)
    return run_forward_only(spec, job, export_dir, work, budget, checkpoints, seed)


def peak_memory_mb() -> dict[str, float]:
    """This process's peak resident memory: VmHWM (Linux) and ru_maxrss, in MiB."""
    import resource

    out = {"ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                out["vmhwm_mb"] = int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return out


def train_all(spec: MethodSpec, jobs: list[Job], export_dir: Path, work: Path, budget: int, checkpoints: int,
              seed: int, torch_model: Path | None = None,
              log: Callable[[str], None] = lambda message: None) -> dict[str, Any]:
    """Run one method on every job; returns {job: [snapshot dicts]} plus timing and memory."""
    runs: dict[str, Any] = {}
    started = time.perf_counter()
    for job in jobs:
        t0 = time.perf_counter()
        snaps = run_method(spec, job, export_dir, work / spec.name, budget, checkpoints, seed, torch_model)
        runs[job.name] = [{"step": s.step, "forwards": s.forwards, "wall_s": round(s.wall_s, 3), "v": s.v.tolist()}
                          for s in snaps]
        log(f"{spec.name} / {job.name}: {snaps[-1].step} steps, {snaps[-1].forwards} forwards, "
            f"{time.perf_counter() - t0:.1f}s")
    return {"method": spec.name, "spec": spec.describe(), "runs": runs, "wall_s": time.perf_counter() - started,
            "memory": peak_memory_mb()}

"""PersonalizeConfig: every setting of a personalization run, its checks and its fingerprint."""
from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import types
import typing
import unicodedata
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np

from . import validation
from .embeddings import MAX_VECTORS, a1111_file_name
from .emphasis import check_prompt_weighting
from .errors import Given, ZoodipError
from .generate_settings import MAX_IMAGES
from .gradient_estimate import DIRECTIONS, check_mu
from .image_side import check_side
from .curvature import DEFAULT_CURVATURE_FRACTION
from .lr_schedule import LENGTH_DEPENDENT, LR_SCHEDULERS
from .model import DEFAULT_SPIN_WAIT, RuntimeOptions
from .paths import lies_within
from .prompt_checks import unreadable_token_problems
from .prompts import LEARNABLE_PROPERTIES
from .timesteps import PAPER_T_RANGE
from .zo import ADAM_STATE_DTYPES, PAPER_NU, PAPER_TAU, PROJECTION_MODES

OPTIMIZERS = ("adam", "sgd")  # ZO-Adam (the paper's) or ZO-SGD
# The smallest finite-difference step a run takes: below it float32 rounding takes the model's loss differences over
# (benchmarks/README.md, "fd_fidelity.py": correlation with autograd against mu). The estimator itself (exact
# functions in float64) has no such floor.
MU_MIN = 1e-5
MAX_LEARNING_RATE = 100.0  # far past any useful step (the paper's is 1e-2): a typo such as 1e308 overflows the step
# A photo's latent: one sample of its VAE posterior drawn once and cached ("once"), or a fresh sample every
# step from the cached mean and std ("per-step", as the authors' code and diffusers' script encode each batch).
VAE_SAMPLING = ("once", "per-step")
MAX_TOKEN_CHARS = 100  # a placeholder's name: a word in a prompt and (--a1111) a file name
# Upper bounds past any useful run (the paper's is 30,000 steps, evaluations read 3 timesteps per photo): a typo
# such as 10**30 otherwise passes and fails later (a checkpoint's counts past 10^12 are refused as damaged).
MAX_TRAIN_STEPS = 10**9
MAX_EVAL_TIMESTEPS = 100  # each held in memory as a noised latent per photo, each evaluation a forward apiece


def _unwritable(ch: str) -> bool:
    """A character a placeholder cannot hold: a control character (NUL, an escape), half a surrogate pair (a byte the
    terminal's encoding could not read: no file can store it), or an invisible format character a typed prompt never
    holds (a zero-width space, a direction override), but for the joiner of emoji sequences."""
    return unicodedata.category(ch) in ("Cc", "Cs") or (unicodedata.category(ch) == "Cf" and ch != "\u200d")


def positive_int(name: str, value: object, minimum: int = 1) -> None:
    """Refuse a setting that is not an integer >= minimum, by its name (validation.positive_int's check)."""
    validation.positive_int(name, value, minimum)


_UNION_ORIGINS = (typing.Union, getattr(types, "UnionType", typing.Union))  # X | Y is types.UnionType from 3.10
_OPTIONAL_BOOL_SPELLINGS = {"bool|None", "None|bool", "Optional[bool]", "Union[bool,None]", "Union[None,bool]"}


def _switch_kind(annotation: object) -> bool | None:
    """None if ``annotation`` is not an on/off type; else whether it allows None (``bool | None``).

    Read from the annotation's meaning, not one spelling: ``bool``, ``bool | None``, ``Optional[bool]``,
    ``typing.Union[None, bool]`` alike, as strings (postponed annotations; not evaluated, since Python 3.9
    cannot evaluate ``bool | None``) or as types."""
    if isinstance(annotation, str):
        spelled = annotation.replace(" ", "").replace("typing.", "")
        is_bool, is_optional_bool = spelled == "bool", spelled in _OPTIONAL_BOOL_SPELLINGS
    else:
        union = typing.get_origin(annotation) in _UNION_ORIGINS
        members = set(typing.get_args(annotation)) if union else {annotation}
        is_bool, is_optional_bool = members == {bool}, members == {bool, type(None)}
    return True if is_optional_bool else False if is_bool else None


@functools.cache
def _switch_fields(cls: type) -> dict[str, bool]:
    """The on/off fields of a dataclass: {name: whether None is allowed}."""
    return {field.name: kind for field in fields(cls) if (kind := _switch_kind(field.type)) is not None}


@dataclass
class PersonalizeConfig:
    """Everything that defines a personalization run.

    The method's defaults are the paper's reference values (n=2, mu=1e-3, ZO-Adam lr 1e-2 eps 1e-3,
    Subspace Gradient tau=128 nu=1e-3, PUTS [500, 900)), except where this SDK differs from the authors'
    code (ignoww/ZOODiP train_zoodip.py/.sh) on purpose; each difference has an option that does as they
    do, and README.md ("Where the defaults differ from the authors' code") has what each measured:

    - search space: the export's curvature subspace (``curvature_fraction``), theirs the whole space
      (``curvature_fraction=0``): the one difference that changes how many forwards a run needs;
    - run length: ``max_train_steps`` 1000, theirs 30000;
    - horizontal flips: off (``flip``), theirs p=0.5;
    - prompt templates: the SDK's own lists (prompts.TEMPLATES), theirs the textual-inversion paper's
      (``template_file=prompts.TEXTUAL_INVERSION_TEMPLATE_FILES[...]``);
    - VAE posterior: one sample per photo, cached (``vae_sampling``), theirs a fresh one every step;
    - ZO-Adam's state: float64, theirs fp16 (``adam_state_dtype``);
    - Subspace Gradient keeps out the zero-variance padding direction their PCA also removes (zo.SubspaceProjector;
      tests/integration/test_authors_port.py compares the two updates).
    """

    export_dir: Path
    images: Path
    output_dir: Path
    placeholder_token: str = "<concept>"
    initializer_token: str = "object"
    # Vectors per token (diffusers' --num_vectors): the token stands for this many learned vectors,
    # all initialized from the initializer word; the searched dimension grows by the same factor.
    num_vectors: int = 1
    learnable_property: str = "object"  # "object" or "style": which prompt templates are used
    resolution: int | None = None  # default: the model's native resolution
    max_train_steps: int = 1000
    learning_rate: float = 1e-2
    seed: int = 0
    n: int = 2  # random directions per step (a step costs n+1 forwards)
    directions: str = "gaussian"  # gradient_estimate.DIRECTIONS: "orthogonal" draws the n directions as one orthogonal frame
    # Two phases (gradient_estimate.EstimatorSchedule): Gaussian directions until this many forwards are spent,
    # then orthogonal frames of orthogonal_n directions (None: the searched dimension). None: one phase.
    orthogonal_after: int | None = None
    orthogonal_n: int | None = None
    mu: float = 1e-3  # finite-difference perturbation
    optimizer: str = "adam"  # "adam" (ZO-Adam) or "sgd" (ZO-SGD)
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-3
    # "float16": ZO-Adam's moments stored and updated in fp16 as the authors' code does (zo.ZOAdam).
    adam_state_dtype: str = "float64"
    # Not in the paper: clip each estimate's norm to this many times the RMS norm of the estimates so far
    # (zo.ZOAdam's clip; float64 Adam state only). None: off.
    clip_estimate: float | None = None
    subspace: bool = True  # Subspace Gradient on/off
    # SG history length and refit period. None: the paper's 128 where the embedding is wider than
    # 256, else half the width (the method needs tau < width; see default_tau).
    tau: int | None = None
    nu: float = PAPER_NU  # SG: variance fraction dropped
    subspace_mode: str = "history-span"  # or "principal"
    # Not in the paper: draw the ZO directions inside the principal subspace of the token table that
    # holds this fraction of its variance (vocabulary.VocabularySubspace), e.g. 0.9. None: the whole space.
    vocabulary_variance: float | None = None
    # Not in the paper: draw the ZO directions inside the export's curvature subspace, the leading block
    # holding this fraction of its stored spectrum (curvature.CurvatureSubspace). None: automatic, i.e.
    # DEFAULT_CURVATURE_FRACTION where the export has one and no vocabulary subspace is asked for; 0: off.
    curvature_fraction: float | None = None
    t_range: tuple[int, int] = PAPER_T_RANGE  # PUTS; (0, T) is uniform sampling
    # Condition on the text encoder's k-th layer from the end (diffusers' clip_skip; A1111's "Clip skip" k + 1), as
    # for models made to be prompted so, which A1111 also trains embeddings with. 0: its last layer.
    clip_skip: int = 0
    captions: Path | None = None
    # A1111-style captions: a template file ([name], [filewords]) and a .txt beside each photo.
    template_file: Path | None = None
    center_crop: bool = True  # False: squash the whole photo into the square (diffusers without --center_crop)
    flip: bool = False  # random horizontal flips (both versions' latents are cached)
    vae_sampling: str = "once"  # VAE_SAMPLING
    # n+1 UNet evaluations as one batch or one by one. None (default): one batch for small UNets,
    # where per-call overhead dominates; one by one for SD-size ones, where a batch is no faster
    # and holds n+1 times the activations (measured at SD1.5 scale in benchmarks/README.md).
    batched: bool | None = None
    eval_every: int = 50
    eval_timesteps: int = 3  # fixed (noise, t) pairs per photo in the evaluation loss
    checkpoint_every: int = 50
    save_steps: int = 0  # an embedding snapshot every this many steps (0: none), as diffusers' --save_steps
    # Also write the final embedding in A1111's layout, NAME.safetensors with NAME the token without its
    # brackets (A1111's trigger word is the file name): embeddings.save_a1111_embedding.
    a1111: bool = False
    lr_scheduler: str = "constant"  # lr_schedule.LR_SCHEDULERS
    lr_warmup_steps: int = 0
    # Preview images of the current embedding, as diffusers' --validation_* flags (no prompt: none).
    validation_prompt: str | None = None
    num_validation_images: int = 4
    validation_steps: int = 100
    validation_prompt_weighting: str = "none"  # how the preview prompt is read: generate's prompt_weighting
    early_stop_patience: int = 0  # evaluations without improvement before stopping; 0 = never
    threads: int = 0
    spin_wait: bool = DEFAULT_SPIN_WAIT  # onnxruntime's idle threads poll instead of sleeping (model.RuntimeOptions)
    memory_budget_mb: int | None = None  # low-memory mode: sequential evaluations, low-memory sessions

    def __post_init__(self) -> None:
        for name in ("export_dir", "images", "output_dir", "captions", "template_file"):
            value = getattr(self, name)
            if not (value is None and name in ("captions", "template_file")) and not isinstance(value, (str, os.PathLike)):
                raise ZoodipError(f"{name} must be a path, got {value!r}")
        for name in ("placeholder_token", "initializer_token", "learnable_property", "validation_prompt"):
            value = getattr(self, name)
            if not (value is None and name == "validation_prompt") and not isinstance(value, str):
                raise ZoodipError(f"{name} must be a string, got {value!r}")
        for flag, value, example in (("output_dir", self.output_dir, "my-run"), ("images", self.images,
                                     "my-photos"), ("export_dir", self.export_dir, "sd15-int8")):
            if isinstance(value, str) and not value.strip():
                # Path("") is ".": an empty flag would silently read or write the current folder.
                raise ZoodipError(f"{flag} is empty: name the folder, e.g. {flag}={example}")
        for name, kind in (("captions", "JSON file"), ("template_file", "template file")):
            validation.optional_path(name, getattr(self, name), kind)
        if self.memory_budget_mb is not None:
            self.batched = False  # n+1 evaluations one by one: a third of the activations
        self.export_dir = Path(self.export_dir)
        self.images = Path(self.images)
        self.output_dir = Path(self.output_dir)
        self.captions = Path(self.captions) if self.captions else None
        self.template_file = Path(self.template_file) if self.template_file else None
        self.t_range = _pair("t_range (T_MIN, T_MAX)", self.t_range, int)
        self.adam_betas = _pair("adam_betas (beta1, beta2)", self.adam_betas, float)
        self._check_switches()

    def _check_switches(self) -> None:
        """On/off settings must be True or False (or None where the field allows it): 'yes' or 1 would read as
        True without a word (an API user's mistake; the CLI's flags are booleans already)."""
        for name, allows_none in _switch_fields(type(self)).items():
            value = getattr(self, name)
            if not (isinstance(value, bool) or (value is None and allows_none)):
                raise ZoodipError(f"{name} must be True or False, got {value!r}")

    @classmethod
    def check_method_settings(cls, **settings: object) -> None:
        """Check method settings (PersonalizeConfig fields, e.g. ``learning_rate``) before a run exists, with
        :meth:`validate`'s checks and messages: a front end refuses a bad value before any long work."""
        config = cls(export_dir=".", images=".", output_dir=".", **settings)
        config._plain_numbers()
        config._validate_counts()  # (n, tau, num_vectors, ...: the rest stay their valid defaults)
        config._validate_method()

    def validate(self) -> None:
        """Check the hyperparameters that need no model (the model-dependent ones are checked later)."""
        self._plain_numbers()
        self._validate_counts()
        self._validate_method()
        self._validate_inputs()
        self._validate_places()

    def _plain_numbers(self) -> None:
        """NumPy scalars (``np.int64(3)``, ``np.float32(0.01)``, also inside a pair) as the Python numbers they equal:
        a run records its settings as JSON (config.json, the embedding's header, the fingerprint)."""
        def plain(value: object) -> object:
            return value.item() if isinstance(value, np.generic) else value

        for item in fields(self):
            value = getattr(self, item.name)
            setattr(self, item.name, type(value)(plain(v) for v in value) if isinstance(value, (tuple, list))
                    else plain(value))

    def _validate_counts(self) -> None:
        """The integer settings: steps, intervals, sizes."""
        positive_int("n", self.n)
        count = self.num_vectors
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_VECTORS:
            raise ZoodipError(f"num_vectors must be an integer from 1 to {MAX_VECTORS} (a prompt holds {MAX_VECTORS} "
                              f"tokens), got {self.num_vectors!r}")
        positive_int("seed", self.seed, 0)
        if self.tau is not None:
            positive_int("tau", self.tau, 2)
        positive_int("max_train_steps", self.max_train_steps)  # 0 would save the initializer as a learned word
        for name, value, most in (("max_train_steps", self.max_train_steps, MAX_TRAIN_STEPS),
                                  ("eval_timesteps", self.eval_timesteps, MAX_EVAL_TIMESTEPS)):
            if isinstance(value, (int, np.integer)) and value > most:
                raise ZoodipError(f"{name} must be at most {most:,}, got {value:,}")
        positive_int("eval_every", self.eval_every, 0)
        validation.positive_int("eval_timesteps", self.eval_timesteps)  # the API's only: no flag sets it
        validation.positive_int("checkpoint_every", self.checkpoint_every, 0)
        positive_int("save_steps", self.save_steps, 0)
        positive_int("lr_warmup_steps", self.lr_warmup_steps, 0)
        if self.lr_scheduler not in LR_SCHEDULERS:
            raise ZoodipError(f"lr_scheduler must be one of {', '.join(LR_SCHEDULERS)}, got {self.lr_scheduler!r}")
        positive_int("early_stop_patience", self.early_stop_patience, 0)
        positive_int("threads", self.threads, 0)
        positive_int("validation_steps", self.validation_steps)
        positive_int("num_validation_images", self.num_validation_images)
        if self.num_validation_images > MAX_IMAGES:
            raise ZoodipError(f"num_validation_images must be at most {MAX_IMAGES} (one UNet batch), got {self.num_validation_images}")
        if self.resolution is not None:
            check_side("resolution", self.resolution)  # the model's VAE factor is checked when it is loaded

    def _validate_method(self) -> None:
        """The method's hyperparameters and choices."""
        # The same checks as the method's own constructors (zo.py), under the API's names (the CLI says its flags).
        if check_mu(self.mu, "mu") < MU_MIN:
            raise ZoodipError(f"mu {self.mu:g} is too small: below {MU_MIN:g} the loss differences of a float32 "
                              "model drown in its rounding and the estimate is noise; the paper uses 1e-3")
        validation.finite_float("nu", self.nu, low=0.0, high=1.0, high_open=True)
        validation.finite_float("learning_rate", self.learning_rate, low=0.0, high=MAX_LEARNING_RATE)
        for name, beta in zip(("adam_betas[0] (beta1)", "adam_betas[1] (beta2)"), self.adam_betas):  # as ZOAdam's
            validation.finite_float(name, beta, low=0.0, low_open=False, high=1.0, high_open=True)
        validation.finite_float("adam_eps", self.adam_eps, low=0.0)
        if self.optimizer not in OPTIMIZERS:
            raise ZoodipError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.directions not in DIRECTIONS:
            raise ZoodipError(f"directions must be one of {', '.join(DIRECTIONS)}, got {self.directions!r}")
        self._validate_phases()
        if self.adam_state_dtype not in ADAM_STATE_DTYPES:
            raise ZoodipError(f"adam_state_dtype must be one of {', '.join(ADAM_STATE_DTYPES)}, got {self.adam_state_dtype!r}")
        if self.optimizer != "adam" and self.adam_state_dtype != "float64":
            raise ZoodipError("adam_state_dtype applies to optimizer='adam' only; drop it or use optimizer='adam'")
        if self.clip_estimate is not None:
            validation.finite_float("clip_estimate", self.clip_estimate, low=1.0)
            if self.optimizer != "adam" or self.adam_state_dtype != "float64":
                raise ZoodipError("clip_estimate clips against ZO-Adam's float64 second moment: use it with "
                                  "optimizer='adam' and adam_state_dtype='float64' (the defaults)")
        if self.subspace_mode not in PROJECTION_MODES:
            raise ZoodipError(f"subspace_mode must be one of {', '.join(PROJECTION_MODES)}, got {self.subspace_mode!r}")

    def _validate_phases(self) -> None:
        """--orthogonal-after and --orthogonal-n (the two-phase estimate)."""
        if self.orthogonal_n is not None:
            validation.positive_int("orthogonal_n", self.orthogonal_n)
            if self.orthogonal_after is None:
                raise ZoodipError("orthogonal_n sets the directions of the steps after orthogonal_after: "
                                  "add orthogonal_after=FORWARDS, or use directions='orthogonal' and n=N for one phase")
        if self.orthogonal_after is None:
            return
        validation.positive_int("orthogonal_after (forwards)", self.orthogonal_after, minimum=0)
        if self.directions != "gaussian":
            raise ZoodipError("orthogonal_after switches Gaussian directions to orthogonal ones; with "
                              "directions='orthogonal' every step already draws them: drop one of the two")

    def _validate_places(self) -> None:
        """The run folder apart from what the run reads: in the photos folder its previews would be the next run's
        photos (and a resume refused for other photos); in the export folder its files would mix with the model's."""
        for flag, source in (("images", self.images), ("export_dir", self.export_dir)):
            if Path(source).is_dir() and lies_within(self.output_dir, source):
                raise ZoodipError(f"output_dir {self.output_dir} lies in {flag}={source}: the run's previews, "
                                  "checkpoint and embedding would land among what it reads; choose a folder outside it")

    def _validate_inputs(self) -> None:
        """The words, prompts and captions, and the search-subspace options."""
        check_prompt_weighting(self.validation_prompt_weighting)
        if self.validation_prompt is not None and self.placeholder_token not in self.validation_prompt:
            raise ZoodipError(f"validation_prompt {self.validation_prompt!r} does not contain {self.placeholder_token}: "
                              f"put the token in it, e.g. 'a photo of {self.placeholder_token} on the beach'")
        unreadable = unreadable_token_problems([self.placeholder_token])
        if unreadable and self.validation_prompt is not None and self.validation_prompt_weighting == "a1111":
            raise ZoodipError(f"{unreadable[0]}; the previews, read as A1111 reads them (validation_prompt_weighting='a1111'), "
                              "would lack it")
        if self.captions is not None and self.template_file is not None:
            raise ZoodipError("captions and template_file are two ways to caption the photos: use one")
        for flag, path, kind in (("captions", self.captions, "JSON"), ("template_file", self.template_file, "text")):
            if path is not None and path.is_dir():  # (read later, where the error could not name the flag)
                raise ZoodipError(f"{flag} ", Given(path), f" is a folder: name the {kind} file itself")
        if self.vae_sampling not in VAE_SAMPLING:
            raise ZoodipError(f"vae_sampling must be one of {', '.join(VAE_SAMPLING)}, got {self.vae_sampling!r}")
        if self.learnable_property not in LEARNABLE_PROPERTIES:
            raise ZoodipError(f"learnable_property must be one of {', '.join(LEARNABLE_PROPERTIES)}, got {self.learnable_property!r}")
        fraction = lambda x: not isinstance(x, bool) and isinstance(x, (int, float)) and 0 <= x <= 1  # noqa: E731
        if self.vocabulary_variance is not None and not (fraction(self.vocabulary_variance) and self.vocabulary_variance):
            raise ZoodipError(f"vocabulary_variance must be a variance fraction in (0, 1], e.g. 0.9, got {self.vocabulary_variance!r}")
        if self.curvature_fraction is not None and not fraction(self.curvature_fraction):  # 0: the whole space
            raise ZoodipError(f"curvature_fraction must be a fraction in [0, 1] (0: the whole "
                              f"space), e.g. {DEFAULT_CURVATURE_FRACTION}, got {self.curvature_fraction!r}")
        if isinstance(self.clip_skip, bool) or not isinstance(self.clip_skip, (int, np.integer)) or self.clip_skip < 0:
            raise ZoodipError(f"clip_skip must be a whole number of layers, 0 or more, got {self.clip_skip!r}")
        if self.curvature_fraction and self.vocabulary_variance is not None:
            raise ZoodipError("vocabulary_variance and curvature_fraction are two search subspaces: use one "
                              "(add curvature_fraction=0 to search the vocabulary's)")
        token = self.placeholder_token
        if not token or any(ch.isspace() or _unwritable(ch) for ch in token):
            raise ZoodipError(f"placeholder_token must be one word without spaces, control or invisible characters, "
                              f"e.g. '<my-dog>', got {token!r:.80}")
        if len(token) > MAX_TOKEN_CHARS:  # a word in a prompt, and (--a1111) a file's name
            raise ZoodipError(f"placeholder_token has {len(token)} characters, more than {MAX_TOKEN_CHARS}: "
                              "choose a short name, e.g. '<my-dog>'")
        if not self.initializer_token or any(ch.isspace() for ch in self.initializer_token.strip()):
            raise ZoodipError(f"initializer_token must be a single word, got {self.initializer_token!r}")
        if self.a1111:
            a1111_file_name(self.placeholder_token)  # refuses a token that makes no usable file name

    def fingerprint(self) -> str:
        """Hash of everything that shapes the trajectory; a checkpoint only resumes the same run."""
        return _digest(self.fingerprint_payload())

    def fingerprints(self) -> tuple[str, ...]:
        """The fingerprints a checkpoint of this run may hold: ``fingerprint``, and the one of a checkpoint written
        when the caption and template files were held as typed ("sub/tmpl.txt", not "tmpl.txt"), so that a run of
        that time resumes with the same command."""
        payload = self.fingerprint_payload()
        typed = {key: str(getattr(self, key)) for key in ("captions", "template_file") if key in payload and payload[key]}
        return tuple(dict.fromkeys((_digest(payload), _digest({**payload, **typed}))))

    def settings_differing_from(self, recorded: dict[str, object]) -> list[str]:
        """The settings that make this run's fingerprint differ from that of a run whose config.json is ``recorded``,
        by the names the user gave (a memory budget runs the evaluations one by one: not "batched" then)."""
        before, now = replace(self, **recorded).fingerprint_payload(), self.fingerprint_payload()
        same = lambda a, b: json.dumps(a, default=str) == json.dumps(b, default=str)  # noqa: E731
        names = sorted(key for key in set(now) | set(before) if not same(now.get(key), before.get(key)))
        if "batched" in names and recorded.get("memory_budget_mb") != self.memory_budget_mb:
            names[names.index("batched")] = "memory_budget_mb"
        if "lr_scheduler" in names and recorded.get("lr_scheduler") == self.lr_scheduler:  # the pair's other half
            names[names.index("lr_scheduler")] = "lr_warmup_steps"
        if "max_train_steps" in names and recorded.get("max_train_steps") == self.max_train_steps:  # recorded only
            names.remove("max_train_steps")  # for a schedule that follows it: the schedule is what changed
        if "max_train_steps" in names and self.lr_scheduler in LENGTH_DEPENDENT:  # not said by the name alone
            names[names.index("max_train_steps")] = f"max_train_steps (which lr_scheduler='{self.lr_scheduler}' follows)"
        # By the API's names (the command line says its flags): switches with their value, a name of their own.
        said = {"batched": f"batched={self.batched}", "subspace": f"subspace={self.subspace}",
                "orthogonal_phase": "orthogonal_after and orthogonal_n"}
        return [said.get(name, name) for name in names]

    def fingerprint_payload(self) -> dict:
        """The settings ``fingerprint`` hashes (where two runs' differ, a checkpoint of one does not resume the other)."""
        keys = ("placeholder_token", "initializer_token", "learnable_property", "resolution", "learning_rate",
                "seed", "n", "mu", "optimizer", "adam_betas", "adam_eps", "subspace", "tau", "nu",
                "subspace_mode", "t_range", "flip", "batched", "eval_timesteps")
        payload = {k: getattr(self, k) for k in keys}
        # A text file by its name, not its path: the path depends on the folder the run was started from (a resume
        # from another folder names the same file otherwise), and the content is in the photos' identity already.
        payload["captions"] = self.captions.name if self.captions else None
        if self.vocabulary_variance is not None:  # absent by default: older checkpoints keep their fingerprint
            payload["vocabulary_variance"] = float(self.vocabulary_variance)
        if self.curvature_fraction:  # the trainer resolves None (automatic) to a fraction or 0 (off)
            payload["curvature_fraction"] = float(self.curvature_fraction)
        if self.directions != "gaussian":  # likewise
            payload["directions"] = self.directions
        if self.orthogonal_after is not None:  # likewise
            payload["orthogonal_phase"] = (self.orthogonal_after, self.orthogonal_n)
        if self.adam_state_dtype != "float64":  # likewise
            payload["adam_state_dtype"] = self.adam_state_dtype
        if self.clip_estimate is not None:  # likewise
            payload["clip_estimate"] = float(self.clip_estimate)
        if self.template_file is not None:  # likewise
            payload["template_file"] = self.template_file.name
        if self.num_vectors != 1:  # likewise
            payload["num_vectors"] = self.num_vectors
        if not self.center_crop:  # likewise
            payload["center_crop"] = False
        if self.clip_skip:  # likewise
            payload["clip_skip"] = int(self.clip_skip)
        if self.vae_sampling != "once":  # likewise
            payload["vae_sampling"] = self.vae_sampling
        if self.lr_scheduler != "constant":  # likewise; "constant" ignores the warmup (as diffusers)
            payload["lr_scheduler"] = (self.lr_scheduler, self.lr_warmup_steps)
            if self.lr_scheduler in LENGTH_DEPENDENT:  # their rates depend on the run's length
                payload["max_train_steps"] = self.max_train_steps
        return payload

    def recorded_settings(self, resolution: int, orthogonal_n: int | None = None) -> dict:
        """The settings a saved embedding's header records (``zoodip info`` shows them): the run's ``resolution``
        and, for a two-phase run, its late phase's resolved ``orthogonal_n``; settings off by default only when on."""
        settings = {key: getattr(self, key) for key in (
            "initializer_token", "learnable_property", "learning_rate", "lr_scheduler", "lr_warmup_steps", "seed", "n",
            "directions", "mu", "optimizer", "subspace", "tau", "nu", "subspace_mode", "vocabulary_variance",
            "curvature_fraction", "t_range")}
        settings["resolution"] = resolution
        if self.orthogonal_after is not None:  # a two-phase run; absent otherwise, as before
            settings.update(orthogonal_after=self.orthogonal_after, orthogonal_n=orthogonal_n)
        if self.clip_skip:
            settings["clip_skip"] = int(self.clip_skip)
        return settings

    def to_json(self) -> dict:
        """The settings as JSON (config.json), paths absolute: they name the same files from any folder."""
        return {k: (os.path.abspath(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}

    def runtime_options(self) -> RuntimeOptions:
        """The onnxruntime settings of this run's model: its threads, spinning and memory budget. A model
        loaded with them for generation (``PersonalizationJob.generate``) stays within the same budget."""
        return RuntimeOptions(threads=self.threads, memory_budget_mb=self.memory_budget_mb, spin_wait=self.spin_wait)


def default_tau(width: int) -> int:
    """tau when not given: the paper's 128 where that is at most half the width, else half the width.

    The method needs tau < width (a longer history spans the whole space and the projection stalls
    training; benchmarks/README.md has both measured on the 64-wide reference model).
    """
    return PAPER_TAU if 2 * PAPER_TAU <= width else max(2, width // 2)


def _pair(name: str, value: object, kind: type) -> tuple:
    """``value`` as a pair of ``kind`` (int: whole numbers only), else one ZoodipError naming ``name``."""
    items = list(value) if isinstance(value, (tuple, list, np.ndarray)) else []
    ok = len(items) == 2 and all(isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)
                                 and math.isfinite(x) for x in items)
    if ok and kind is int:
        ok = all(float(x).is_integer() for x in items)
    if not ok:
        raise ZoodipError(f"{name} must be two {'integers' if kind is int else 'finite numbers'}, got {value!r}")
    return kind(items[0]), kind(items[1])


def _digest(payload: dict) -> str:
    """A fingerprint payload's hash."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]

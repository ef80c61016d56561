"""Warnings on a run's settings that will not do what they say (``warn_about_settings``): said once, at the start
of a run, since each still runs."""
from __future__ import annotations

import warnings
from dataclasses import fields

from .config import PersonalizeConfig, default_tau
from .prompt_checks import unreadable_token_problems


def warn_about_settings(config: PersonalizeConfig, width: int, native: int | None = None) -> None:
    """One warning each for settings that will not do what they say: a placeholder that A1111's reading cannot read
    whole (it holds AND, BREAK, brackets, a backslash or a tag), settings another one turns off, a resolution past twice the model's ``native`` one, Subspace Gradient's history at least ``width``, the length of the learned vector (the
    embedding width times num_vectors; only an explicit tau gets there), and a warmup with the constant
    learning rate or longer than the run.

    Called from Personalizer._compose_method: the warnings name the line that built the Personalizer.
    """
    for problem in unreadable_token_problems([config.placeholder_token]):
        warnings.warn(problem, stacklevel=4)
    if native and config.resolution and config.resolution > 2 * native:  # diffusers' script defaults to 512
        warnings.warn(f"resolution={config.resolution} is more than twice the model's native {native} px: each "
                      f"forward costs about {(config.resolution / native) ** 2:.0f}x the native one's, on images larger than "
                      f"the model's own; use resolution={native} (or leave it out)", stacklevel=4)
    if config.lr_scheduler != "constant" and config.lr_warmup_steps > config.max_train_steps:
        warnings.warn(f"lr_warmup_steps={config.lr_warmup_steps} is longer than the run (max_train_steps="
                      f"{config.max_train_steps}): the learning rate never reaches learning_rate", stacklevel=4)
    if config.lr_scheduler == "constant" and config.lr_warmup_steps:
        warnings.warn(f"lr_warmup_steps={config.lr_warmup_steps} has no effect with lr_scheduler='constant' (as in "
                      "diffusers); use constant_with_warmup, linear or cosine to warm up", stacklevel=4)
    for problem in _settings_turned_off(config, width):
        warnings.warn(problem, stacklevel=4)
    if config.subspace and config.tau is not None and config.tau >= width:
        # The method assumes tau < d (128 < 768 on SD1.5): a history of >= d steps spans the whole
        # space and the projection then removes directions everywhere (config.default_tau).
        size = (f"embedding width {width}" if config.num_vectors == 1
                else f"{width} numbers learned ({config.num_vectors} vectors)")
        warnings.warn(f"tau={config.tau} >= {size}: Subspace Gradient will restrict the whole "
                      f"space and can stall training; use a tau below {width} (e.g. tau={default_tau(width)})",
                      stacklevel=4)


# Settings that another one turns off, by why: (is it off?, the settings it turns off). Said in the API's names
# with their values (tau=64), which the CLI says as its flags (cli_flags.in_flag_words).
_TURNED_OFF = {
    "subspace=False turns Subspace Gradient off": (lambda c: not c.subspace, ("tau", "nu", "subspace_mode")),
    "eval_every=0 turns the evaluation loss off": (lambda c: not c.eval_every, ("early_stop_patience",)),
    "previews need a validation_prompt": (lambda c: c.validation_prompt is None, (
        "num_validation_images", "validation_steps", "validation_prompt_weighting")),
}


def _settings_turned_off(config: PersonalizeConfig, width: int) -> list[str]:
    """One message per switch whose settings were given though it turns them off (they change nothing); a value
    that is its default, or the trainer's resolved default (tau's for ``width``), counts as not given."""
    unset = {item.name: [item.default] for item in fields(config)}
    unset["tau"].append(default_tau(width))
    problems = []
    for why, (off, names) in _TURNED_OFF.items():
        given = [f"{name}={getattr(config, name)!r}" for name in names if getattr(config, name) not in unset[name]]
        if off(config) and given:
            problems.append(f"{' and '.join(given)} change{'s' if len(given) == 1 else ''} nothing: {why}")
    return problems

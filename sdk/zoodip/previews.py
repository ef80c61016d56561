"""A training run's previews (diffusers' ``--validation_prompt``): images of the prompt with the token's current
vectors every ``validation_steps``, as a PNG grid beside the run, and the prompt checked before the run starts."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable

import numpy as np

from .config import PersonalizeConfig
from .generate import check_prompt, generate
from .images import image_grid, save_images
from .infotext import infotext
from .run_folder import VALIDATION_NAME


def check_preview_prompt(model, config: PersonalizeConfig, vectors: np.ndarray) -> None:
    """The preview prompt as ``generate`` reads it: refused (or warned about) before training, not at the first
    preview, after the steps before it."""
    if config.validation_prompt:
        check_prompt(model, config.validation_prompt, prompt_weighting=config.validation_prompt_weighting,
                     added_embeddings={config.placeholder_token: vectors}, clip_skip=config.clip_skip)


def previews_in(after: int, total: int, every: int) -> int:
    """How many previews a run writes at the steps in (``after``, ``total``]: every ``every`` steps and at the last."""
    if total <= after:
        return 0
    return total // every - after // every + (1 if total % every else 0)


def preview_due(config: PersonalizeConfig, step: int) -> bool:
    """Whether the run writes a preview after ``step``: every ``validation_steps`` and at the last step."""
    return bool(config.validation_prompt) and step > 0 and (
        step % config.validation_steps == 0 or step == config.max_train_steps)


def preview_path(config: PersonalizeConfig, step: int) -> Path:
    return config.output_dir / VALIDATION_NAME.format(step=step)


def write_preview(model, config: PersonalizeConfig, vectors: np.ndarray, step: int, resolution: int,
                  batch_cfg: bool, keep: Callable[[], object] | None = None) -> Path:
    """The preview of ``step`` with the token's ``vectors`` [K, d] (``generate``'s defaults, diffusers' settings; the
    run's seed, so previews of different steps compare). On a model with a memory budget it is generated within it,
    as ``generate`` does. ``keep``: where ``step`` has no checkpoint yet, what saves one should the preview fail."""
    try:
        return _write_preview(model, config, vectors, step, resolution, batch_cfg)
    except BaseException:
        # A failed preview (a full disk, an interrupt) must not cost the steps since the last checkpoint: saved now,
        # the resume goes on from this step and writes this preview first. Its own failure leaves the last one intact.
        if keep is not None:
            with contextlib.suppress(Exception):
                keep()
        raise


def _write_preview(model, config: PersonalizeConfig, vectors: np.ndarray, step: int, resolution: int,
                   batch_cfg: bool) -> Path:
    settings = dict(seed=config.seed, height=resolution, width=resolution, num_images=config.num_validation_images,
                    clip_skip=config.clip_skip, prompt_weighting=config.validation_prompt_weighting)
    images = generate(model, config.validation_prompt, added_embeddings={config.placeholder_token: vectors},
                      batch_cfg=batch_cfg, **settings)
    model.release("vae_decoder")  # training does not need it: keep its memory free between previews
    # The grid says its first image's settings, as A1111's grids (the token's vectors are the run's at this step).
    text = infotext(config.validation_prompt, settings, images[0].size, model)
    return save_images([(image_grid([images]), preview_path(config, step))],
                       "validation_prompt preview", texts=[text],
                       then="and resume with resume=True (its last checkpoint is intact)")[0]

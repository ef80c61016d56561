"""The parts a training method is composed of, and the SDK's default for each.

zoodip.trainer.Personalizer takes a factory for each part (it calls them once the model and its width
are known): the benchmarks compose their baselines (a planted-target loss, ES's optimizer) by passing
their own, not by replacing a built Personalizer's attributes.
"""
from __future__ import annotations

from typing import Callable, Union

import numpy as np

from .config import PersonalizeConfig
from .denoising_loss import DenoisingLoss
from .model import ExportedModel
from .zo import SubspaceProjector, ZOAdam, ZOSGD

Optimizer = Union[ZOAdam, ZOSGD]
# (model, placeholder id (or the ids of its vectors with --num_vectors), batched, clip_skip) -> loss
LossFactory = Callable[[ExportedModel, Union[int, tuple[int, ...]], bool, int], DenoisingLoss]
OptimizerFactory = Callable[[int, PersonalizeConfig], Optimizer]  # (width, config) -> optimizer
ProjectorFactory = Callable[[int, PersonalizeConfig, Union[np.ndarray, None]], Union[SubspaceProjector, None]]


def default_optimizer(dim: int, config: PersonalizeConfig) -> ZOAdam | ZOSGD:
    """The config's optimizer: ZO-Adam (the paper's) or ZO-SGD."""
    if config.optimizer == "adam":
        return ZOAdam(dim, lr=config.learning_rate, betas=config.adam_betas, eps=config.adam_eps,
                      state_dtype=config.adam_state_dtype, clip=config.clip_estimate)
    return ZOSGD(dim, lr=config.learning_rate)


def default_projector(dim: int, config: PersonalizeConfig, search_basis: np.ndarray | None) -> SubspaceProjector | None:
    """Subspace Gradient where the config turns it on (it projects within the searched basis)."""
    if not config.subspace:
        return None
    return SubspaceProjector(dim, tau=config.tau, nu=config.nu, mode=config.subspace_mode, search_basis=search_basis)

"""Where a run draws its random directions: the whole space, the vocabulary's subspace or the curvature's."""
from __future__ import annotations

import dataclasses
import warnings

import numpy as np

from .config import PersonalizeConfig
from .curvature import CURVATURE_FILE, DEFAULT_CURVATURE_FRACTION, CurvatureSubspace
from .errors import ZoodipError
from .model import ExportedModel
from .vocabulary import VocabularySubspace


def choose_search_space(model: ExportedModel, config: PersonalizeConfig) -> tuple[
        PersonalizeConfig, VocabularySubspace | None, CurvatureSubspace | None, np.ndarray | None]:
    """(config with ``curvature_fraction`` resolved, vocabulary subspace, curvature subspace, basis or None).

    The basis spans the run's flat vector: ``[num_vectors * width, num_vectors * k]``, the chosen per-vector
    subspace for each of the placeholder's vectors (:func:`block_diagonal`).

    ``curvature_fraction`` None (automatic) becomes ``DEFAULT_CURVATURE_FRACTION`` where the export has a
    curvature subspace and no vocabulary subspace is asked for, else 0 (off); an explicit fraction on an
    export without one is refused.
    """
    vocabulary = (VocabularySubspace.fit(model.token_embeddings, config.vocabulary_variance)
                  if config.vocabulary_variance is not None else None)
    curvature = None if config.curvature_fraction == 0 else model.curvature()
    if curvature is None and config.curvature_fraction:
        raise ZoodipError(f"curvature_fraction {config.curvature_fraction}: {config.export_dir} has no curvature "
                          "subspace; re-export the model with 'zoodip export' (it computes one by default) or "
                          "drop curvature_fraction")
    if config.curvature_fraction is None:
        if curvature is None and vocabulary is None:
            warnings.warn(f"{config.export_dir} has no {CURVATURE_FILE}: searching all {model.hidden_size} dimensions, "
                          "which needs many more steps; re-export the model with 'zoodip export' (it computes one by "
                          "default) or give curvature_fraction=0 to silence this", stacklevel=3)
        use = curvature is not None and vocabulary is None
        config = dataclasses.replace(config, curvature_fraction=DEFAULT_CURVATURE_FRACTION if use else 0.0)
    if not config.curvature_fraction:
        curvature = None
    basis = (vocabulary.basis if vocabulary is not None
             else curvature.basis(config.curvature_fraction) if curvature is not None else None)
    return config, vocabulary, curvature, None if basis is None else block_diagonal(basis, config.num_vectors)


def block_diagonal(basis: np.ndarray, copies: int) -> np.ndarray:
    """The search basis of ``copies`` vectors optimized as one flat vector: ``basis`` for each, ``[copies * width,
    copies * k]``.

    The curvature and vocabulary subspaces describe where the loss (or the vocabulary) varies for *a* token
    embedding, whatever its position in the prompt, so each of the placeholder's vectors is searched in the
    same per-vector subspace, independently: the search dimension is ``copies * k``. A direction drawn in this
    basis perturbs all vectors at once. One copy is ``basis`` itself (a one-vector run is unchanged).
    """
    if copies == 1:
        return basis
    width, k = basis.shape
    out = np.zeros((copies * width, copies * k), dtype=basis.dtype)
    for i in range(copies):
        out[i * width : (i + 1) * width, i * k : (i + 1) * k] = basis
    return out

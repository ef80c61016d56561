"""The denoising loss of candidate embeddings: the forward passes a ZO step spends."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .model import ExportedModel

class DenoisingLoss:
    """L(v) for several candidate embeddings v at once, on one fixed (x_t, t, target, prompt).

    All candidates share the photo, noise and timestep: only then is L(v + mu z) - L(v) a finite
    difference of one function rather than the difference of two noisy samples.

    ``placeholder_id``: the placeholder's token id, or the ids of its K vectors in prompt order
    (``--num_vectors``); a candidate is then the K vectors flattened, ``[K * H]``.
    """

    def __init__(self, model: ExportedModel, placeholder_id: int | Sequence[int], batched: bool = True,
                 clip_skip: int = 0) -> None:
        self.model = model
        self.placeholder_ids = (int(placeholder_id),) if np.ndim(placeholder_id) == 0 else tuple(
            int(i) for i in placeholder_id)  # type: ignore[union-attr]
        self.placeholder_id = self.placeholder_ids[0]
        self.batched = batched
        self.clip_skip = int(clip_skip)  # the text encoder's k-th layer from the end (0: its last), as generate's
        self.forwards = 0

    def text_inputs(self, ids: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """Token embeddings [m, 77, H] for one prompt, each placeholder vector's rows set from each candidate."""
        rows = np.asarray(candidates).reshape(len(candidates), len(self.placeholder_ids), -1)  # [m, K, H]
        # The placeholder's positions looked up as id 0 and set below (its ids need not be the first added ones: a
        # tokenizer may hold tokens added before, whose rows a prompt using them was not given: refused).
        plain = np.where(np.isin(ids, self.placeholder_ids), 0, ids)
        base = self.model.embed_tokens(plain[None])[0]
        inputs = np.repeat(base[None], len(candidates), axis=0)
        for k, token_id in enumerate(self.placeholder_ids):
            positions = np.flatnonzero(ids == token_id)
            inputs[:, positions, :] = rows[:, k, None, :].astype(np.float32)
        return inputs

    def text_states(self, inputs: np.ndarray) -> np.ndarray:
        """The text encoder's states of token embeddings ``inputs``, from the layer this loss reads."""
        return self.model.text_encoder(inputs, self.clip_skip) if self.clip_skip else self.model.text_encoder(inputs)

    def __call__(self, ids: np.ndarray, candidates: np.ndarray, x_t: np.ndarray, t: int, target: np.ndarray) -> np.ndarray:
        """Losses [m] (float64) for candidates [m, K * H]; x_t and target are [C, h, w]."""
        inputs = self.text_inputs(ids, candidates)
        m = len(candidates)
        # The text encoder always takes all candidates at once: its activations are small (77 tokens),
        # and one call dequantizes its weights once instead of m times.
        cond = self.text_states(inputs)
        if self.batched:
            pred = self.model.unet(np.broadcast_to(x_t, (m,) + x_t.shape), np.full(m, t, np.float32), cond)
        else:
            pred = np.concatenate([self.model.unet(x_t[None], np.full(1, t, np.float32), cond[i : i + 1]) for i in range(m)])
        self.forwards += m
        # Accumulate in float64: the finite differences are ~mu * |grad| small.
        return np.mean(np.square(pred - target[None], dtype=np.float64), axis=(1, 2, 3))

AUTO_BATCH_MAX_UNET_BYTES = 256 << 20

def auto_batched(model: ExportedModel) -> bool:
    """The default evaluation mode: batched unless the UNet is SD-size (see ``PersonalizeConfig.batched``)."""
    return model.weights_bytes(("unet",)) <= AUTO_BATCH_MAX_UNET_BYTES


def loss_batched(model: ExportedModel, batched: bool | None) -> bool:
    """Whether the loss runs its candidates through the UNet in one batch: ``batched``, or where it is None (as
    ``PersonalizeConfig.batched`` defaults) ``auto_batched``; a memory budget sets it False."""
    return auto_batched(model) if batched is None else bool(batched)

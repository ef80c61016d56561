"""A diffusers SD folder in torch fp32, its text encoder fed token embeddings.

This is the computation the exported graphs reproduce, kept in torch for what needs autograd: the
curvature subspace (``zoodip_export.curvature``), backprop textual inversion and the benchmarks' probes
of the loss. One loader for all of them, so that each conditions the UNet on a placeholder's embedding
``v`` the same way: the prompt's token rows from the table, ``v`` in the placeholder's places, then the
text encoder from embeddings (:class:`~zoodip_export.onnx_export.TextEncoderGraph`).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zoodip.json_text import parse_json
from zoodip.schedule import NoiseSchedule
from zoodip.tokenizer import CLIPTokenizer
from zoodip_export.onnx_export import TextEncoderGraph, load_text_encoder, load_unet, load_vae


@dataclass(frozen=True, eq=False)
class TorchModel:
    """The folder's tokenizer, token table, text encoder (from embeddings), UNet and noise schedule.

    Attributes:
        folder: the diffusers folder.
        tokenizer: the SDK's CLIP tokenizer (placeholders are added to it).
        table: ``[V, d]`` the token-embedding table (no gradient).
        text_encoder: token embeddings ``[B, L, d]`` -> hidden states ``[B, L, d']``.
        unet: ``unet(x_t, t, encoder_hidden_states=...).sample`` predicts the schedule's target.
        scheduler_config: the folder's ``scheduler_config.json``.
        schedule: the forward process that config describes.
    """

    folder: Path
    tokenizer: CLIPTokenizer
    table: torch.Tensor
    text_encoder: torch.nn.Module
    unet: torch.nn.Module
    scheduler_config: dict[str, Any]
    schedule: NoiseSchedule

    @classmethod
    def load(cls, folder: Path, *, plain_attention: bool = False) -> TorchModel:
        """Load ``folder`` with every weight frozen; ``plain_attention``: matmul attention in the UNet, which
        ``torch.func`` transforms and forward-mode AD run through (the fused kernel they may not)."""
        folder = Path(folder)
        tokenizer = CLIPTokenizer.from_folder(folder / "tokenizer")
        text_model = load_text_encoder(folder / "text_encoder").text_model.eval().requires_grad_(False)
        unet = load_unet(folder / "unet").eval().requires_grad_(False)
        if plain_attention:
            from diffusers.models.attention_processor import AttnProcessor

            unet.set_attn_processor(AttnProcessor())
        config = parse_json((folder / "scheduler" / "scheduler_config.json").read_text())
        return cls(folder, tokenizer, text_model.embeddings.token_embedding.weight.detach(),
                   TextEncoderGraph(text_model, tokenizer.max_length).eval(), unet, config,
                   NoiseSchedule.from_config(config))

    @cached_property
    def vae(self) -> torch.nn.Module:
        """The folder's AutoencoderKL (loaded on first use: not every measurement encodes images)."""
        return load_vae(self.folder / "vae").eval()

    def row(self, word: str) -> torch.Tensor:
        """``[d]`` a copy of the table's row for ``word``, which must be one token."""
        ids = self.tokenizer.token_ids_for_word(word)
        if len(ids) != 1:
            raise ValueError(f"{word!r} is {len(ids)} tokens for this tokenizer, not one")
        return self.table[ids[0]].clone()

    def embeds(self, ids: np.ndarray | torch.Tensor, v: torch.Tensor | None = None,
               placeholder_id: int | None = None) -> torch.Tensor:
        """``[L, d]``: the rows of the prompt's token ``ids`` ``[L]``, ``v`` in the placeholder's places.

        A placeholder id past the table (added to the tokenizer, not to the table) reads the last row
        where ``v`` is not given; with ``v`` it is always replaced."""
        ids = torch.as_tensor(np.asarray(ids, dtype=np.int64))
        base = self.table[ids.clamp(max=self.table.shape[0] - 1)]
        if v is None:
            return base
        return torch.where((ids == placeholder_id)[:, None], v[None, :], base)

    def condition(self, ids: np.ndarray | torch.Tensor, v: torch.Tensor | None = None,
                  placeholder_id: int | None = None) -> torch.Tensor:
        """``[1, L, d']``: the text encoder's output for :meth:`embeds`."""
        return self.text_encoder(self.embeds(ids, v, placeholder_id)[None])

    def prompt_ids(self, prompt: str) -> np.ndarray:
        """``[L]`` the padded token ids of one prompt."""
        return np.asarray(self.tokenizer(prompt)[0], dtype=np.int64)


__all__ = ["TorchModel"]

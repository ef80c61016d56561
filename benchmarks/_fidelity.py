"""The finite-difference fidelity check (benchmarks/fd_fidelity.py, benchmarks/int4_gradient.py and the tests that hold
exports to it): a fixed denoising problem and its exact directional derivatives by torch autograd."""
from __future__ import annotations

import numpy as np

from zoodip.denoising_loss import DenoisingLoss
from zoodip.images import load_images
from zoodip.model import ExportedModel

MU = 1e-3
DIRECTIONS = 48
SEED = 123  # the fixed sample the tests check (noise and directions)


def fixed_problem(model: ExportedModel, photos, seed: int = SEED, directions: int = DIRECTIONS):
    """(placeholder id, prompt ids, v0, x_t, t, target, directions z) of one fixed sample on ``model``.

    ``seed`` draws the noise and the directions: another seed is another sample of the same check.
    """
    placeholder = model.tokenizer.add_placeholder("<fidelity>")[0]
    ids = model.tokenizer("a photo of a <fidelity>")[0]
    v0 = np.asarray(model.token_embeddings[model.tokenizer.token_ids_for_word("star")[0]], np.float32)
    _, images = load_images(photos, model.default_resolution)
    x0 = model.vae_encode(images[:1])[0]
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal(x0.shape).astype(np.float32)
    t = 700
    x_t = model.schedule.add_noise(x0[None], noise[None], np.array([t]))[0].astype(np.float32)
    target = model.schedule.target(x0[None], noise[None], np.array([t]))[0].astype(np.float32)
    z = rng.standard_normal((directions, model.hidden_size)).astype(np.float32)
    return placeholder, ids, v0, x_t, t, target, z


def autograd_directional(tiny_sd_folder, loss: DenoisingLoss, ids, v0, x_t, t, target, z) -> np.ndarray:
    """z . grad L(v0), exact: torch autograd through the fp32 source model."""
    import torch
    from zoodip_export.onnx_export import TextEncoderGraph, UNetGraph, load_text_encoder, load_unet

    text = TextEncoderGraph(load_text_encoder(tiny_sd_folder / "text_encoder").text_model, 77)
    unet = UNetGraph(load_unet(tiny_sd_folder / "unet"))
    # Same token rows as the SDK feeds (fp16 table), placeholder row = v (the variable).
    rows = torch.from_numpy(loss.text_inputs(ids, v0[None]))
    gradient = placeholder_gradient(text, unet, rows, ids == loss.placeholder_id, v0, x_t, t, target)
    return z.astype(np.float64) @ gradient


def placeholder_gradient(text, unet, rows, mask: np.ndarray, v0, x_t, t, target) -> np.ndarray:
    """grad L(v0) (float64) by torch autograd: ``text`` and ``unet`` are the exporter's graph modules, ``rows``
    the prompt's token rows, ``mask`` True at the placeholder's positions (where v replaces the row)."""
    import torch

    v = torch.from_numpy(v0.copy()).requires_grad_(True)
    embeds = torch.where(torch.from_numpy(mask)[None, :, None], v[None, None, :], rows)
    pred = unet(torch.from_numpy(x_t[None]), torch.tensor([float(t)]), text(embeds))
    torch.mean((pred - torch.from_numpy(target[None])) ** 2).backward()
    return v.grad.numpy().astype(np.float64)


def finite_difference_fidelity(export, source_folder, photos, seed: int = SEED, directions: int = DIRECTIONS,
                               mu: float = MU, options=None, batched: bool = True) -> tuple[float, float]:
    """(correlation, slope) of the SDK's finite differences on ``export`` against autograd on ``source_folder``.

    The SDK's own DenoisingLoss with its default session options (one thread) unless ``options`` (a RuntimeOptions) and
    ``batched`` (False: the UNet runs the candidates one by one, as --sequential and --memory-budget do) say otherwise, at the paper's mu unless given; the slope is the least-squares
    factor from exact to finite (1 when the magnitudes agree, not only the signs). The directions are
    evaluated in batches of at most ``DIRECTIONS``, each with its own L(v0) (a batch of one size).
    """
    from zoodip.model import RuntimeOptions

    model = ExportedModel.load(export, RuntimeOptions(threads=1) if options is None else options)
    placeholder, ids, v0, x_t, t, target, z = fixed_problem(model, photos, seed, directions)
    loss = DenoisingLoss(model, placeholder, batched=batched)
    finite = []
    for i in range(0, len(z), DIRECTIONS):
        losses = loss(ids, np.concatenate([v0[None], v0[None] + mu * z[i : i + DIRECTIONS]]), x_t, t, target)
        finite.append((losses[1:] - losses[0]) / mu)
    finite = np.concatenate(finite)
    exact = autograd_directional(source_folder, loss, ids, v0, x_t, t, target, z)
    return float(np.corrcoef(finite, exact)[0, 1]), float(np.dot(finite, exact) / np.dot(exact, exact))

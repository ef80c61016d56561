"""The quality benchmark's ceiling: textual inversion by backpropagation (torch fp32), diffusers-style.

Only the placeholder's embedding row is trained (AdamW); photos, prompts, the per-step draws and the loss
are the SDK's (zoodip.step_inputs), so only the model and the optimizer differ from the forward-only
methods. Two diagnostics (not diffusers'): ``t=LO-HI`` (PUTS timesteps) and ``curvature=F`` (the gradient,
or with ``coords=1`` the embedding itself, confined to the SDK's curvature subspace).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from benchmarks._quality_snapshots import Job, Snapshot, checkpoint_steps
from zoodip.manifest import MANIFEST
from zoodip.model import ExportedModel, RuntimeOptions
from zoodip.step_inputs import draw_step_inputs, step_rng

TORCH_SEED_LIMIT = 2 ** 64  # torch.manual_seed's range: the seeds a torch contender can take

if TYPE_CHECKING:
    from benchmarks._quality_methods import MethodSpec


def torch_source(export_dir: Path, override: Path | None = None) -> Path:
    """The diffusers folder behind an export (the manifest records it), or ``override``."""
    if override is not None:
        return Path(override)
    manifest = json.loads((Path(export_dir) / MANIFEST).read_text())
    path = (manifest.get("source") or {}).get("path")
    if not path or not Path(path).is_dir():
        raise FileNotFoundError(f"{export_dir}: the manifest names no diffusers source folder; pass --torch-model")
    return Path(path)


def _torch_latents(vae, images: np.ndarray, seed: int, scaling_factor: float) -> np.ndarray:
    """The photos' latents [N, 1, C, h, w] by the torch VAE, sampled with the SDK's encoding noise stream."""
    import torch

    encode_rng = np.random.default_rng([seed, 0x5EED_E7A1, 1])
    latents = []
    with torch.no_grad():
        for k in range(len(images)):
            params = vae.encoder(torch.from_numpy(images[k : k + 1]))
            params = params if vae.quant_conv is None else vae.quant_conv(params)
            mean, logvar = params.chunk(2, dim=1)
            std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
            sample = mean + std * torch.from_numpy(encode_rng.standard_normal(mean.shape).astype(np.float32))
            latents.append((sample * scaling_factor)[0].numpy())
    return np.stack(latents)[:, None]


def _backprop_parameters(spec: MethodSpec, v0: np.ndarray, model: ExportedModel) -> tuple[Any, Any, Any]:
    """(embedding(), the trained parameter, AdamW): diffusers' row v, or, with ``curvature=F`` (a diagnostic),
    restricted to the export's curvature subspace holding F of its spectrum, the SDK's forward-only search
    space: ``coords=1`` trains c in v = v0 + B c (v stays in the subspace), otherwise v with its gradient
    projected onto span(B) (AdamW's per-entry steps still leave it, as ZO-Adam's do in the SDK)."""
    import torch

    v = torch.nn.Parameter(torch.from_numpy(v0.copy()))
    embedding = lambda: v  # noqa: E731
    if spec.curvature:
        subspace = model.curvature()
        if subspace is None:
            raise ValueError(f"{spec.name}: the export has no curvature subspace")
        basis = torch.from_numpy(subspace.basis(spec.curvature).astype(np.float32))
        if spec.coords:
            v = torch.nn.Parameter(torch.zeros(basis.shape[1]))
            origin = torch.from_numpy(v0.copy())
            embedding = lambda: origin + basis @ v  # noqa: E731
        else:
            v.register_hook(lambda grad: basis @ (basis.T @ grad))
    return embedding, v, torch.optim.AdamW([v], lr=spec.learning_rate(), betas=(0.9, 0.999), eps=1e-8,
                                           weight_decay=spec.weight_decay)


def run_backprop(spec: MethodSpec, job: Job, export_dir: Path, source: Path, budget: int, checkpoints: int,
                 seed: int) -> list[Snapshot]:
    """diffusers-style textual inversion: only the placeholder's embedding row is trained (AdamW).

    Photos, prompts, the per-step draws of (photo, noise, timestep, prompt) and the loss are the
    SDK's (same seeds, zoodip.step_inputs): only the model (torch fp32 instead of INT8 ONNX) and the
    optimizer differ. Timesteps are uniform on [0, T), as diffusers' script samples them (``t=LO-HI``
    and ``curvature=F`` are diagnostics: PUTS timesteps, the SDK's search space).
    """
    import torch

    from zoodip.images import load_images
    from zoodip.prompts import PromptSampler
    from zoodip.timesteps import PartialUniformTimesteps
    from zoodip_export.torch_model import TorchModel

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    model = ExportedModel.load(export_dir, RuntimeOptions(threads=1))  # tokenizer + schedule only (no sessions)
    schedule, tokenizer = model.schedule, model.tokenizer
    init_ids = tokenizer.token_ids_for_word(job.initializer)
    if len(init_ids) != 1:
        raise ValueError(f"initializer {job.initializer!r} is not one token")
    placeholder_id = tokenizer.add_placeholder(job.placeholder)[0]

    torch_model = TorchModel.load(source)
    unet = torch_model.unet
    names, images = load_images(Path(job.photos), spec.res or model.default_resolution)
    latents = _torch_latents(torch_model.vae, images, seed, model.scaling_factor)
    prompts = PromptSampler(job.placeholder, "object")
    t_min, t_max = spec.t_range or (0, schedule.num_train_timesteps)  # t=LO-HI: a diagnostic, not diffusers'
    timesteps = PartialUniformTimesteps(t_min, t_max, schedule.num_train_timesteps)

    # The same start as every other method: the export's (fp16-stored) row of the initializer.
    embedding, _, optimizer = _backprop_parameters(spec, np.asarray(model.token_embeddings[init_ids[0]], np.float32), model)
    v_star = torch.tensor(job.planted, dtype=torch.float32) if job.planted is not None else None
    condition = lambda ids, row: torch_model.condition(ids, row, placeholder_id)  # noqa: E731
    steps = max(1, budget // spec.forwards_per_step)
    wanted = set(checkpoint_steps(steps, checkpoints))
    snaps = [Snapshot(0, 0, 0.0, embedding().detach().numpy().copy())]
    started = time.perf_counter()
    for step in range(steps):
        sample = draw_step_inputs(step_rng(seed, step), latents, timesteps, schedule,
                                  lambda photo, r: prompts.prompt_for(names[photo], r))
        ids = tokenizer(sample.prompt)[0]
        x_t, t_t = torch.from_numpy(sample.x_t[None]), torch.full((1,), float(sample.t))
        if v_star is not None:
            with torch.no_grad():
                target = unet(x_t, t_t, encoder_hidden_states=condition(ids, v_star), return_dict=False)[0]
        else:
            target = torch.from_numpy(sample.target[None])
        pred = unet(x_t, t_t, encoder_hidden_states=condition(ids, embedding()), return_dict=False)[0]
        loss = torch.nn.functional.mse_loss(pred, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step + 1 in wanted:
            snaps.append(Snapshot(step + 1, step + 1, time.perf_counter() - started,
                                  embedding().detach().numpy().copy()))
    return snaps

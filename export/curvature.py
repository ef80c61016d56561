"""Where a model's denoising loss responds to a token embedding, computed once per model (torch).

A forward-only gradient estimate from random directions has a variance that grows with the dimension
it searches (768 for SD1.5's token embeddings). The loss, though, responds to the placeholder's
embedding along few directions: the top eigenvectors of its Gauss-Newton curvature. They depend on how
the model reads its text conditioning, far more than on the concept, so they are a property of the
model: this module finds them at export time with autograd, and the SDK draws its random directions
inside them (``zoodip.curvature.CurvatureSubspace``), on the device, with forwards only.

Notation (one draw ``s`` = photo latent x_0, noise eps, timestep t, prompt with the placeholder):

    v        the placeholder's token embedding, ``[d]``
    f_s(v)   the UNet's prediction eps_hat(x_t, t, c(v)) flattened to ``m`` numbers, c = text encoder
    J_s      df_s / dv, ``[m, d]``
    H        (1/S) sum_s (2/m) J_s^T J_s: the Gauss-Newton curvature of the mean-squared denoising loss

``H`` is never formed: its top eigenvectors come from randomized subspace iteration (Halko, Martinsson
& Tropp 2011, algorithms 4.4 and 5.3), which only needs products ``H V``, each column one
Jacobian-vector product (forward mode) and one vector-Jacobian product (reverse mode) per draw.

Draws are generic, not the user's: an initializer word from a list of common words (or the source
folder's ``curvature_words.txt``), a prompt from the SDK's templates, a timestep in the SDK's default
PUTS range and an x_0 the model samples itself from "a photo of a WORD".
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zoodip.json_text import parse_json
from zoodip.curvature import CURVATURE_FILE, save_curvature
from zoodip_export.torch_model import TorchModel

DEFAULT_CURVATURE_SAMPLES = 16  # draws averaged into the curvature subspace (zoodip_export.curvature)
MAX_CURVATURE_SAMPLES = 1024  # 64x the default: past it a typed number is a slip, not a plan
# Seeded random-weight models, whose curvature means nothing: the tiny one (tests, smoke runs) still gets
# a cheap one so the default path is exercised; the SD1.5-architecture one (memory and speed benchmarks)
# none, since at SD scale its backward passes cost far more than the export.
RANDOM_MODEL_CURVATURE_SAMPLES = {"tiny": 2, "sd15-random": 0}

# Common single words, the kind a user gives as initializer (nouns, colours, materials, styles).
# Words that are not one token in the model's tokenizer are skipped.
COMMON_WORDS = (
    "dog cat person man woman child car house tree flower bird horse toy ball cup chair table book "
    "bag shoe hat shirt dress face hand robot statue building mountain river sky city food cake "
    "red blue green yellow orange purple pink black white gray brown gold silver "
    "wooden metal glass plastic stone paper small large old new round square bright dark "
    "painting drawing photo sketch cartoon style pattern stripes dots circle star heart"
).split()


WORDS_FILE = "curvature_words.txt"  # optional in a source folder: one initializer word per line, "#" comments


def initializer_words(source: Path) -> list[str]:
    """The words of ``source/curvature_words.txt`` where the folder has one, else :data:`COMMON_WORDS`."""
    path = Path(source) / WORDS_FILE
    if not path.is_file():
        return list(COMMON_WORDS)
    words = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    if not words:
        raise ValueError(f"{path} lists no words")
    return words


@dataclass
class Draw:
    """One fixed (x_t, t, prompt, initializer) at which the curvature is sampled."""

    x_t: torch.Tensor  # [1, C, h, w]
    t: int
    ids: np.ndarray  # [L] the prompt's token ids
    placeholder_id: int  # the id in ``ids`` whose row is the embedding v
    v0: torch.Tensor  # [d] the initializer's embedding


PROBE_PLACEHOLDER = "<curvature-probe>"


def make_draws(model: TorchModel, latents: Sequence[np.ndarray], samples: int, seed: int, t_range: tuple[int, int],
               words: Sequence[str]) -> list[Draw]:
    """``samples`` generic draws; x_0 is one of the clean ``latents`` ``[C, h, w]``; ``words`` are single tokens.

    The prompts hold :data:`PROBE_PLACEHOLDER`, which this adds to ``model``'s tokenizer."""
    from zoodip.prompts import PromptSampler

    placeholder_id = model.tokenizer.add_placeholder(PROBE_PLACEHOLDER)[0]
    prompts = PromptSampler(PROBE_PLACEHOLDER, "object")
    draws = []
    for k in range(samples):
        rng = np.random.default_rng([seed, 0xC0_4E, k])
        word = words[int(rng.integers(len(words)))]
        x0 = np.asarray(latents[int(rng.integers(len(latents)))], np.float32)
        noise = rng.standard_normal(x0.shape).astype(np.float32)
        t = int(rng.integers(*t_range))
        x_t = model.schedule.add_noise(x0[None], noise[None], np.array([t])).astype(np.float32)
        draws.append(Draw(torch.from_numpy(x_t), t, model.prompt_ids(prompts.prompt_for("photo", rng)), placeholder_id,
                          model.row(word)))
    return draws


@torch.no_grad()
def generated_latents(model: TorchModel, latent_shape: tuple[int, ...], words: Sequence[str], count: int,
                      seed: int, steps: int = 20, guidance: float = 5.0) -> list[np.ndarray]:
    """``count`` clean latents sampled from the model itself ("a photo of a WORD", DDIM, guidance).

    The curvature depends on x_0 through the noisy latent; the model's own samples are in-distribution
    latents that need no photos.
    """
    schedule, unet = model.schedule, model.unet
    abar = torch.tensor(schedule.alphas_cumprod, dtype=torch.float32)

    def condition(prompt: str) -> torch.Tensor:
        return model.condition(model.prompt_ids(prompt))

    uncond = condition("")
    times = np.linspace(len(abar) - 1, 0, steps).round().astype(int)
    out = []
    for k in range(count):
        rng = np.random.default_rng([seed, 0x6E4E, k])
        cond = torch.cat([uncond, condition(f"a photo of a {words[int(rng.integers(len(words)))]}")])
        x = torch.from_numpy(rng.standard_normal((1, *latent_shape)).astype(np.float32))
        for i, t in enumerate(times):
            pred_u, pred_c = unet(torch.cat([x, x]), torch.tensor([float(t)] * 2), encoder_hidden_states=cond).sample
            pred = (pred_u + guidance * (pred_c - pred_u))[None]
            a = abar[t]
            if schedule.prediction_type == "epsilon":
                eps = pred
                x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
            elif schedule.prediction_type == "v_prediction":
                x0 = a.sqrt() * x - (1 - a).sqrt() * pred
                eps = a.sqrt() * pred + (1 - a).sqrt() * x
            else:
                x0 = pred
                eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
            a_next = abar[times[i + 1]] if i + 1 < len(times) else torch.tensor(1.0)
            x = a_next.sqrt() * x0 + (1 - a_next).sqrt() * eps  # DDIM, eta = 0
        out.append(x[0].numpy())
    return out


def gauss_newton_product(predict: Callable[[Draw, torch.Tensor], torch.Tensor], draws: Sequence[Draw],
                         V: torch.Tensor, chunk: int = 16) -> torch.Tensor:
    """``H V`` for ``V`` of shape ``[d, r]``: per draw, ``J V`` by forward mode, then ``J^T (J V)`` by reverse mode.

    Columns go through ``torch.func.vmap`` ``chunk`` at a time: one batched pass instead of a Python
    loop per direction; ``chunk`` bounds the memory of the batched activations.
    """
    out = torch.zeros(V.shape, dtype=torch.float64)
    for draw in draws:
        def f(v: torch.Tensor, draw: Draw = draw) -> torch.Tensor:
            return predict(draw, v).reshape(-1)

        _, vjp = torch.func.vjp(f, draw.v0)
        jvp = torch.func.vmap(lambda col: torch.func.jvp(f, (draw.v0,), (col,))[1])
        for start in range(0, V.shape[1], chunk):
            cols = V[:, start : start + chunk].T.contiguous().to(draw.v0.dtype)  # [c, d]
            jv = jvp(cols)  # [c, m]
            jtjv = torch.func.vmap(vjp)(jv)[0]  # [c, d]
            out[:, start : start + chunk] += (2.0 / jv.shape[1]) * jtjv.T.double()
    return out / len(draws)


def top_eigenvectors(apply: Callable[[torch.Tensor], torch.Tensor], dim: int, rank: int, oversample: int = 16,
                     power_iterations: int = 2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Randomized subspace iteration for a PSD operator: (eigenvalues [rank], eigenvectors [dim, rank])."""
    width = min(dim, rank + oversample)
    generator = torch.Generator().manual_seed(seed)
    Q = torch.linalg.qr(torch.randn(dim, width, generator=generator, dtype=torch.float64))[0]
    for _ in range(power_iterations):
        Q = torch.linalg.qr(apply(Q))[0]
    HQ = apply(Q)
    B = Q.T @ HQ
    eigenvalues, W = torch.linalg.eigh((B + B.T) / 2)
    order = torch.argsort(eigenvalues, descending=True)[:rank]
    return eigenvalues[order].clamp(min=0).numpy(), (Q @ W[:, order]).numpy()


def weights_fingerprint(source: Path) -> str:
    """sha256 over the text encoder's and UNet's weight files: which weights a curvature file belongs to."""
    import hashlib

    digest = hashlib.sha256()
    for part in ("text_encoder", "unet"):
        for path in sorted(p for p in (Path(source) / part).iterdir()
                           if p.is_file() and p.suffix in (".safetensors", ".bin")):
            digest.update(f"{part}/{path.name}".encode())
            with path.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 22), b""):
                    digest.update(block)
    return digest.hexdigest()


def stored_curvature(source: Path) -> dict[str, Any] | None:
    """The metadata of ``source/curvature.safetensors`` if it was computed for these very weights, else None."""
    import json

    from zoodip.curvature import CurvatureSubspace
    from zoodip.safetensors_io import load_metadata

    path = Path(source) / CURVATURE_FILE
    if not path.is_file():
        return None
    meta = {key: parse_json(value) for key, value in load_metadata(path).items()}
    if meta.get("weights") != weights_fingerprint(source):
        return None
    CurvatureSubspace.load(path)  # refuses a damaged file
    return meta


def compute_curvature(source: Path, out_file: Path, *, samples: int = 16, rank: int = 64, seed: int = 0,
                      t_range: tuple[int, int] | None = None, words: Sequence[str] | None = None,
                      threads: int | None = None, max_latent_size: int = 32,
                      log: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Compute the top-``rank`` curvature eigenvectors of the diffusers folder ``source``; write ``out_file``."""
    from zoodip.timesteps import PAPER_T_RANGE

    if threads:
        torch.set_num_threads(threads)
    t_range = tuple(t_range or PAPER_T_RANGE)
    words = list(words) if words is not None else initializer_words(source)
    model = TorchModel.load(source, plain_attention=True)  # plain attention: forward-mode AD runs through it
    # The curvature is taken at latents no larger than max_latent_size (32: 256 px on SD1.5), where a
    # forward costs about a quarter of 512 px: the directions in which the UNet reads the text are not
    # expected to depend on the image size (an assumption, not measured at SD scale).
    size = min(int(model.unet.config.sample_size), max_latent_size)
    latent_shape = (int(model.unet.config.in_channels), size, size)
    singles = [word for word in words if len(model.tokenizer.token_ids_for_word(word)) == 1]
    if not singles:
        raise ValueError("none of the initializer words is a single token of this tokenizer")
    log(f"curvature: sampling {samples} latents from the model")
    latents = generated_latents(model, latent_shape, singles, samples, seed)
    draws = make_draws(model, latents, samples, seed, t_range, singles)
    dim = int(draws[0].v0.shape[0])

    def predict(draw: Draw, v: torch.Tensor) -> torch.Tensor:
        hidden = model.condition(draw.ids, v, draw.placeholder_id)
        return model.unet(draw.x_t, torch.tensor([draw.t]), encoder_hidden_states=hidden).sample

    calls = 0

    def apply(V: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        calls += 1
        log(f"curvature: product {calls} ({V.shape[1]} directions x {len(draws)} draws)")
        return gauss_newton_product(predict, draws, V)

    eigenvalues, eigenvectors = top_eigenvectors(apply, dim, min(rank, dim), seed=seed)
    meta = {"samples": samples, "seed": seed, "t_range": list(t_range), "x0": "generated by the model",
            "words": len(words), "method": "randomized subspace iteration on the Gauss-Newton curvature",
            "weights": weights_fingerprint(source)}
    save_curvature(out_file, eigenvalues, eigenvectors, meta)
    return meta


def export_curvature(source: Path, staging: Path, samples: int | None, kind: str, seed: int,
                     log: Callable[[str], None]) -> dict[str, Any] | None:
    """The export's ``curvature`` manifest entry, its file written into ``staging``; None with 0 samples.

    ``samples`` None: the default for the source's ``kind``. A ``curvature.safetensors`` shipped in the source
    folder for these very weights is copied instead of computed.
    """
    import shutil

    if samples is None:
        samples = RANDOM_MODEL_CURVATURE_SAMPLES.get(kind, DEFAULT_CURVATURE_SAMPLES)
    if not samples:
        return None
    stored = stored_curvature(source)
    if stored is not None:
        log(f"curvature subspace: reusing {source / CURVATURE_FILE}")
        shutil.copyfile(source / CURVATURE_FILE, staging / CURVATURE_FILE)
        return {"file": CURVATURE_FILE, **stored}
    log(f"curvature subspace ({samples} draws)")
    return {"file": CURVATURE_FILE, **compute_curvature(source, staging / CURVATURE_FILE, samples=samples, seed=seed,
                                                        log=log)}


def main(argv: list[str] | None = None) -> int:
    """``python -m zoodip_export.curvature SRC_FOLDER [OUT_FILE]``: compute once, ship beside the weights."""
    import sys

    from zoodip.console import OneLineParser, print_error  # one line for a bad flag; either spelling of a flag's name
    from zoodip.errors import ZoodipError

    from zoodip_export.source_folder import pickled_weights_warning

    parser = OneLineParser(prog="python -m zoodip_export.curvature",
                           description="Compute a diffusers folder's curvature subspace (the export "
                                       "reuses SRC_FOLDER/curvature.safetensors when it matches the weights).")
    parser.add_argument("source", type=Path)
    parser.add_argument("out", type=Path, nargs="?", default=None, help=f"default: SRC_FOLDER/{CURVATURE_FILE}")
    parser.add_argument("--samples", type=int, default=DEFAULT_CURVATURE_SAMPLES,
                        help=f"draws averaged (default {DEFAULT_CURVATURE_SAMPLES}, at most {MAX_CURVATURE_SAMPLES})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    try:
        args = parser.parse_args(argv)
        if not 1 <= args.samples <= MAX_CURVATURE_SAMPLES or (args.threads or 0) < 0:
            parser.error(f"--samples must be from 1 to {MAX_CURVATURE_SAMPLES} and --threads 0 (torch's default) or more")
        if (warning := pickled_weights_warning(args.source)) is not None:  # the export's security note, said alike
            print(warning, file=sys.stderr)
        meta = compute_curvature(args.source, args.out or args.source / CURVATURE_FILE, samples=args.samples,
                                 seed=args.seed, threads=args.threads, log=lambda line: print(line, file=sys.stderr))
    except (OSError, ValueError, ZoodipError) as exc:
        return print_error(exc)
    print(meta)
    return 0


__all__ = ["COMMON_WORDS", "CURVATURE_FILE", "DEFAULT_CURVATURE_SAMPLES", "MAX_CURVATURE_SAMPLES",
           "RANDOM_MODEL_CURVATURE_SAMPLES", "WORDS_FILE",
           "PROBE_PLACEHOLDER", "Draw", "compute_curvature", "export_curvature", "gauss_newton_product",
           "generated_latents", "initializer_words", "make_draws", "stored_curvature", "top_eigenvectors",
           "weights_fingerprint"]

if __name__ == "__main__":
    raise SystemExit(main())

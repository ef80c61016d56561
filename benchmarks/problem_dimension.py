"""How many dimensions a forward-only search really faces, per reference model.

A random-direction gradient estimate slows down with the effective dimension of the problem it
searches (MeZO's analysis: the local effective rank of the loss curvature), not with the nominal
width. For each model this measures, in torch fp32 on the diffusers folder:

* the Gauss-Newton curvature ``H = E[(2/m) J^T J]`` of the denoising loss (mean over the ``m`` outputs)
  with respect to the placeholder embedding at its initializer, ``J = d eps_hat / d v``, averaged over
  the 8 world concepts x ``--samples`` fixed (photo, noise, timestep in [500, 900), prompt) draws;
  reported as its effective rank ``tr(H) / ||H||_2`` and participation ratio ``tr(H)^2 / tr(H^2)``;
* the number of principal components holding 95% of the variance of the token-embedding table, over
  all rows and over the rows the world's captions use.

    python benchmarks/problem_dimension.py                          # the three reference models
    python benchmarks/problem_dimension.py --models reference-64 --samples 2   # quick look

Results: ``benchmarks/results/problem-dimension/`` (results.json, results.md).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from reference.repo import REPO, relative_args  # noqa: E402

sys.path.insert(0, str(REPO / "sdk"))

T_RANGE = (500, 900)
VARIANCE_FRACTION = 0.95


def model_folders(cache: Path) -> dict[str, Path]:
    """Name -> diffusers folder of every model the quality benchmark knows (built on first use)."""
    from reference import sd_width

    def isometric() -> Path:
        dest = cache / "reference-wide768"
        if not (dest / "widened.json").is_file():
            from reference.widen_text import widen

            widen(REPO / "reference" / "model", dest)
        return dest

    return {"reference-64": lambda: REPO / "reference" / "model",
            "isometric-768": isometric,
            "sd-width-768": lambda: sd_width.materialize()}


def components_for(rows: np.ndarray, fraction: float = VARIANCE_FRACTION) -> int:
    """Number of principal components of ``rows`` (centered) that hold ``fraction`` of their variance."""
    x = np.asarray(rows, np.float64)
    mean = x.mean(axis=0)
    cov = np.zeros((x.shape[1], x.shape[1]))
    for i in range(0, len(x), 4096):  # blocks: the whole table in float64 would be large
        block = x[i : i + 4096] - mean
        cov += block.T @ block
    eig = np.clip(np.linalg.eigvalsh(cov)[::-1], 0.0, None)
    return int(np.searchsorted(np.cumsum(eig) / eig.sum(), fraction) + 1)


def curvature_spectrum(hessian: np.ndarray) -> dict[str, float]:
    """Effective rank and participation ratio of a symmetric PSD matrix."""
    eig = np.clip(np.linalg.eigvalsh(hessian), 0.0, None)
    trace = float(eig.sum())
    top = np.sort(eig)[::-1]
    return {"effective_rank": trace / float(eig.max()), "participation_ratio": trace ** 2 / float(np.sum(eig ** 2)),
            "trace": trace, "top_eigenvalue": float(eig.max()),
            "top_fractions": [round(float(x), 4) for x in top[:10] / trace],
            "eigenvalues_for_90pct": int(np.searchsorted(np.cumsum(top) / trace, 0.9) + 1)}


def gauss_newton(folder: Path, samples: int, seed: int) -> np.ndarray:
    """``H`` averaged over the world's concepts and ``samples`` fixed draws each."""
    import torch

    from reference import world
    from zoodip.prompts import PromptSampler
    from zoodip.tokenizer import CLIPTokenizer
    from zoodip_export.onnx_export import TextEncoderGraph, load_text_encoder, load_unet, load_vae

    torch.set_num_threads(2)
    tokenizer = CLIPTokenizer.from_folder(folder / "tokenizer")
    text_model = load_text_encoder(folder / "text_encoder").text_model.eval()
    table = text_model.embeddings.token_embedding.weight.detach()
    text_encoder = TextEncoderGraph(text_model, tokenizer.max_length).eval()
    unet = load_unet(folder / "unet").eval().requires_grad_(False)
    from diffusers.models.attention_processor import AttnProcessor

    unet.set_attn_processor(AttnProcessor())  # plain matmul attention: torch.func batches its backward
    vae = load_vae(folder / "vae").eval()
    text_encoder.requires_grad_(False)
    scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    betas = np.linspace(scheduler["beta_start"] ** 0.5, scheduler["beta_end"] ** 0.5,
                        scheduler["num_train_timesteps"]) ** 2
    alphas = np.cumprod(1.0 - betas)
    scaling = float(vae.config.scaling_factor)
    width = table.shape[1]
    total = np.zeros((width, width))
    count = 0
    for c, concept in enumerate(world.CONCEPTS):
        placeholder_id = tokenizer.add_placeholder(concept.name)[0]
        v0 = table[tokenizer.token_ids_for_word(concept.initializer)[0]].clone()
        photos = world.concept_images(concept, n=5, seed=seed, resolution=world.RESOLUTION)
        prompts = PromptSampler(concept.name, "object")
        for k in range(samples):
            rng = np.random.default_rng([seed, c, k])
            image = np.asarray(photos[int(rng.integers(len(photos)))], np.float32) / 127.5 - 1.0
            with torch.no_grad():
                mean = vae.encode(torch.from_numpy(image.transpose(2, 0, 1)[None].copy())).latent_dist.mean
            x0 = mean * scaling
            t = int(rng.integers(*T_RANGE))
            noise = torch.from_numpy(rng.standard_normal(x0.shape).astype(np.float32))
            x_t = float(np.sqrt(alphas[t])) * x0 + float(np.sqrt(1.0 - alphas[t])) * noise
            ids = torch.from_numpy(tokenizer(prompts.prompt_for("photo", rng))[0].astype(np.int64))
            is_placeholder = (ids == placeholder_id)[:, None]
            base = table[ids.clamp(max=table.shape[0] - 1)]

            def output(v: torch.Tensor) -> torch.Tensor:
                embeds = torch.where(is_placeholder, v[None, :], base)
                hidden = text_encoder(embeds[None])
                return unet(x_t, torch.tensor([t]), encoder_hidden_states=hidden).sample.reshape(-1)

            jac = torch.func.jacrev(output)(v0).double().numpy()  # [m, d]
            total += (2.0 / jac.shape[0]) * jac.T @ jac
            count += 1
    return total / count


def measure(name: str, folder: Path, samples: int, seed: int) -> dict:
    from safetensors.numpy import load_file

    from reference.train_reference import Captioner

    started = time.perf_counter()
    weights = load_file(folder / "text_encoder" / "model.safetensors")
    table = weights["text_model.embeddings.token_embedding.weight"].astype(np.float32)
    caption_ids = Captioner(folder / "tokenizer").vocab
    row = {"model": name, "width": int(table.shape[1]),
           "table_95pct_components_all_rows": components_for(table),
           "table_95pct_components_caption_rows": components_for(table[caption_ids]),
           "caption_rows": int(len(caption_ids))}
    spectrum = curvature_spectrum(gauss_newton(folder, samples, seed))
    row.update({f"curvature_{k}": v for k, v in spectrum.items()})
    row["seconds"] = round(time.perf_counter() - started, 1)
    return row


def markdown(rows: list[dict], command: str) -> str:
    lines = ["# Problem dimension of the reference models", "", f"    {command}", "",
             "| model | width | curvature tr(H)/‖H‖ | participation ratio | table 95% dims (all rows) | "
             "table 95% dims (caption rows) |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['width']} | {r['curvature_effective_rank']:.2f} | "
                     f"{r['curvature_participation_ratio']:.2f} | {r['table_95pct_components_all_rows']} | "
                     f"{r['table_95pct_components_caption_rows']} of {r['caption_rows']} rows |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="reference-64,isometric-768,sd-width-768",
                   help="comma-separated: reference-64, isometric-768, sd-width-768")
    p.add_argument("--samples", type=int, default=8, help="(photo, noise, timestep, prompt) draws per concept")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", type=Path, default=REPO / ".cache")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "problem-dimension")
    args = p.parse_args(argv)
    folders = model_folders(args.cache)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in folders]
    if unknown:
        print(f"--models: unknown {unknown}; choose from {sorted(folders)}", file=sys.stderr)
        return 2
    rows = []
    for name in names:
        rows.append(measure(name, folders[name](), args.samples, args.seed))
        print(json.dumps(rows[-1]), flush=True)
    command = " ".join(["python benchmarks/problem_dimension.py",
                        *relative_args(argv if argv is not None else sys.argv[1:])])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"command": command.strip(), "samples_per_concept":
                                                       args.samples, "t_range": T_RANGE, "rows": rows}, indent=1) + "\n")
    (args.out / "results.md").write_text(markdown(rows, command.strip()))
    print(markdown(rows, command.strip()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

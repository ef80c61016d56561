"""How many dimensions a forward-only search really faces, per reference model.

A random-direction gradient estimate slows down with the effective dimension of the problem it
searches (MeZO's analysis: the local effective rank of the loss curvature), not with the nominal
width. For each model this measures, in torch fp32 on the diffusers folder:

* the Gauss-Newton curvature ``H = E[(2/m) J^T J]`` of the denoising loss (mean over the ``m`` outputs)
  with respect to the placeholder embedding at its initializer, ``J = d eps_hat / d v``, averaged over
  the 8 world concepts x ``--samples`` fixed (photo, noise, timestep in [500, 900), prompt) draws;
  reported as its effective rank ``tr(H) / ||H||_2`` and participation ratio ``tr(H)^2 / tr(H^2)``, and the
  same two for one concept's ``H`` (its draws only: what one personalization job searches) and for one draw's
  term, each averaged (``spectrum_by_scope``);
* the number of principal components holding 95% of the variance of the token-embedding table, over
  all rows and over the rows the world's captions use.

    python benchmarks/problem_dimension.py                          # the three reference models
    python benchmarks/problem_dimension.py --models reference-64 --samples 2   # quick look

Results: ``benchmarks/results/problem-dimension/`` (results.json, results.md).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from reference.repo import REPO, relative_args, repo_relative  # noqa: E402

sys.path.insert(0, str(REPO / "sdk"))
from zoodip.console import interrupts_said_from_here  # noqa: E402

interrupts_said_from_here(__name__)  # (a Ctrl-C during the imports below, NumPy's among them: one line, not a traceback)

import numpy as np  # noqa: E402

from zoodip import validation  # noqa: E402
from zoodip.console import OneLineParser, print_error, script_main  # noqa: E402
from zoodip.errors import ZoodipError  # noqa: E402
from zoodip.paths import check_output_dir  # noqa: E402
from benchmarks._results_files import write_file  # noqa: E402
from benchmarks._results_guard import check_results_folder  # noqa: E402

DEFAULT_OUT = REPO / "benchmarks" / "results" / "problem-dimension"  # the committed results
T_RANGE = (500, 900)
VARIANCE_FRACTION = 0.95
# The draws' ceilings (most, what it stands for in the refusal): a slip such as --samples 100000 ran for hours
# before it exhausted the memory.
MAX_SAMPLES = (64, "each draw's width x width curvature term is kept, per concept: 8 x 64 on the 768-wide models "
                   "is gigabytes")
MAX_NOISE_DRAWS = (4096, "each draw is a UNet backward pass per concept")


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


def draws(folder: Path, samples: int, seed: int):
    """Yield ``(concept index, output, v0, noise)`` for the world's concepts x ``samples`` fixed draws each.

    ``output(v)`` is the UNet's noise prediction (flattened) for one (photo, noise, timestep in [500, 900),
    prompt) draw with the placeholder's embedding ``v``; ``v0`` is the initializer's row; ``noise`` the target.
    """
    import torch

    from reference import world
    from zoodip.prompts import PromptSampler
    from zoodip_export.torch_model import TorchModel

    torch.set_num_threads(2)
    model = TorchModel.load(folder, plain_attention=True)  # plain matmul attention: torch.func batches its backward
    tokenizer, unet, vae = model.tokenizer, model.unet, model.vae
    alphas = model.schedule.alphas_cumprod
    scaling = float(vae.config.scaling_factor)
    for c, concept in enumerate(world.CONCEPTS):
        placeholder_id = tokenizer.add_placeholder(concept.name)[0]
        v0 = model.row(concept.initializer)
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
            ids = model.prompt_ids(prompts.prompt_for("photo", rng))

            def output(v: torch.Tensor, ids=ids, placeholder_id=placeholder_id, x_t=x_t, t=t) -> torch.Tensor:
                hidden = model.condition(ids, v, placeholder_id)
                return unet(x_t, torch.tensor([t]), encoder_hidden_states=hidden).sample.reshape(-1)

            yield c, output, v0, noise.reshape(-1)


def gauss_newton_terms(folder: Path, samples: int, seed: int) -> list[list[np.ndarray]]:
    """One draw's ``H`` term for each of the world's concepts x ``samples`` fixed draws: ``terms[concept][draw]``."""
    import torch

    terms: list[list[np.ndarray]] = []
    for c, output, v0, _ in draws(folder, samples, seed):
        jac = torch.func.jacrev(output)(v0).double().numpy()  # [m, d]
        if c == len(terms):
            terms.append([])
        terms[c].append((2.0 / jac.shape[0]) * jac.T @ jac)
    return terms


def spectrum_by_scope(terms: list[list[np.ndarray]]) -> dict[str, float]:
    """tr(H)/||H|| and the participation ratio of one draw's term (means over draws) and of one concept's mean term
    (means over concepts: what one personalization job searches), beside the mean over all (the headline).

    A mean of terms that point elsewhere has a larger ratio than its parts, so the scopes say where the dimension
    comes from: what one image shows, one concept's draws, or the differences between concepts."""
    def mean_of(matrices: list[np.ndarray], key: str) -> float:
        return float(np.mean([curvature_spectrum(h)[key] for h in matrices]))

    draws_, concepts = [t for group in terms for t in group], [np.mean(group, axis=0) for group in terms]
    return {f"{key}_{scope}": mean_of(matrices, key) for scope, matrices in (("per_draw", draws_), ("per_concept", concepts))
            for key in ("effective_rank", "participation_ratio")}


def gradient_noise(folder: Path, samples: int, seed: int, n: int = 2) -> dict[str, float]:
    """How noisy one draw's gradient is, in the whole space and in the curvature subspace the default searches.

    Per concept, over ``samples`` draws, ``s = E|g_k - g|^2 / |g|^2`` (``g_k`` one draw's gradient of the
    denoising loss at the initializer, ``g`` their mean; ``|g|^2`` corrected for its own sampling noise),
    pooled over the concepts as a ratio of sums. From ``s`` in the subspace's ``k`` dimensions follows what
    a random-direction estimate costs: with ``n`` Gaussian directions on one draw its error variance is
    ``E|g_k - g|^2 + (k + 1) E|g_k|^2 / n``, i.e. ``1 + (k + 1)(1 + 1/s) / n`` times that of one exact
    gradient of the same draw, so in the variance-limited regime one backprop step is worth about
    ``(n + 1)(1 + (k + 1)(1 + 1/s) / n)`` forwards.
    """
    import torch

    from zoodip.curvature import CURVATURE_FILE, DEFAULT_CURVATURE_FRACTION, CurvatureSubspace

    basis = CurvatureSubspace.load(folder / CURVATURE_FILE).basis(DEFAULT_CURVATURE_FRACTION).astype(np.float64)
    grads: dict[int, list[np.ndarray]] = {}
    for c, output, v0, noise in draws(folder, samples, seed):
        v = v0.clone().requires_grad_(True)
        loss = torch.mean((output(v) - noise) ** 2)
        grads.setdefault(c, []).append(torch.autograd.grad(loss, v)[0].double().numpy())
    full = [np.stack(rows) for rows in grads.values()]
    k = basis.shape[1]
    sub = [g @ basis for g in full]
    s_sub = noise_ratio(sub)
    per_step = zo_variance_ratio(s_sub, k, n)
    rng = np.random.default_rng(seed)
    return {"draws_per_concept": samples, "subspace_dims": k, "noise_ratio_full": noise_ratio(full),
            "noise_ratio_subspace": s_sub, "n": n,
            "zo_variance_per_step_vs_backprop": per_step, "forwards_per_backprop_step": (n + 1) * per_step,
            "top5pct_share_of_squared_norm": tail_share(sub, 0.05),
            "clipped_estimate_gain": {str(kappa): clipped_gain(sub, kappa, n, rng) for kappa in CLIP_KAPPAS}}


CLIP_KAPPAS = (1.5, 2.0, 3.0)  # --clip-estimate values whose predicted gain --gradient-noise reports


def tail_share(groups: list[np.ndarray], fraction: float) -> float:
    """How heavy-tailed the draws' gradients are: the share of the summed squared norm ``sum |g_k|^2`` that the
    largest ``fraction`` of the draws hold, averaged over the groups (``fraction`` of them would hold it all
    being equal)."""
    shares = []
    for g in groups:
        sq = np.sort(np.sum(g * g, axis=1))[::-1]
        shares.append(float(sq[: max(1, int(np.ceil(fraction * len(sq))))].sum() / sq.sum()))
    return float(np.mean(shares))


def clipped_gain(groups: list[np.ndarray], kappa: float, n: int, rng: np.random.Generator, repeats: int = 16) -> float:
    """Predicted gain of ``--clip-estimate kappa``: per group, ``n``-direction Gaussian estimates of each draw's
    gradient are norm-clipped at the limit ZO-Adam settles to (``kappa`` times the RMS of the clipped norms, a
    fixed point), and the estimates' ``(mean . u)^2 / E|e - mean|^2`` (``u`` the draws' mean direction) is taken
    over the same without clipping; the median over the groups. Above 1: clipping buys more signal per unit of
    noise than it costs; it ignores Adam's per-entry scaling and the run's trajectory."""
    from zoodip.zo import clip_norm  # the SDK's clipping itself, so the prediction is of what ships

    gains = []
    for g in groups:
        u = g.mean(axis=0) / np.linalg.norm(g.mean(axis=0))
        z = rng.standard_normal((repeats, len(g), n, g.shape[1]))
        est = (np.einsum("rdnk,rdn->rdk", z, np.einsum("rdnk,dk->rdn", z, g)) / n).reshape(-1, g.shape[1])
        norms = np.linalg.norm(est, axis=1)
        limit = kappa * float(np.sqrt(np.mean(norms**2)))
        for _ in range(200):  # the fixed point limit = kappa * RMS(min(|e|, limit))
            limit = kappa * float(np.sqrt(np.mean(np.minimum(norms, limit) ** 2)))
        clipped = np.stack([clip_norm(e, limit) for e in est])

        def efficiency(e: np.ndarray) -> float:
            mean = e.mean(axis=0)
            return float((mean @ u) ** 2 / np.mean(np.sum((e - mean) ** 2, axis=1)))

        gains.append(efficiency(clipped) / efficiency(est))
    return float(np.median(gains))


def noise_ratio(groups: list[np.ndarray]) -> float:
    """``s = sum E|g_k - g|^2 / sum |g|^2`` over groups of draws ``[draws, dim]`` (one group per concept).

    ``|g|^2`` of each group's mean is corrected for the mean's own sampling noise (``E|g_k - g|^2 / draws``).
    """
    spread = mean_sq = 0.0
    for g in groups:
        var = float(np.sum(np.var(g, axis=0, ddof=1)))
        spread += var
        mean_sq += float(np.sum(g.mean(axis=0) ** 2)) - var / len(g)
    return spread / max(mean_sq, 1e-300)


def zo_variance_ratio(s: float, k: int, n: int) -> float:
    """Error variance of ``(1/n) sum_i z_i z_i^T g_k`` (``z_i ~ N(0, I_k)``) around ``g``, over that of ``g_k``.

    ``E|z z^T g_k|^2 = (k + 2)|g_k|^2`` for Gaussian ``z``, so each direction adds ``(k + 1) E|g_k|^2``
    and ``E|g_k|^2 = (1 + s)|g|^2``: the ratio is ``1 + (k + 1)(1 + s) / (n s)``.
    """
    return 1.0 + (k + 1) * (1.0 + 1.0 / s) / n


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
    terms = gauss_newton_terms(folder, samples, seed)
    spectrum = curvature_spectrum(np.mean([t for group in terms for t in group], axis=0))
    row.update({f"curvature_{k}": v for k, v in spectrum.items()})
    row.update({f"curvature_{k}": v for k, v in spectrum_by_scope(terms).items()})
    row["seconds"] = round(time.perf_counter() - started, 1)
    return row


def table(title: str, command: str, header: list[str], cells: list[list[str]]) -> str:
    """A Markdown report: title, the command that made it, one table."""
    lines = [f"# {title}", "", f"    {command}", "", "| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines) + "\n"


def markdown(rows: list[dict], command: str) -> str:
    return table("Problem dimension of the reference models", command,
                 ["model", "width", "curvature tr(H)/‖H‖", "participation ratio",
                  "one concept's H (mean): tr/‖H‖, ratio", "one draw's H (mean): tr/‖H‖, ratio",
                  "table 95% dims (all rows)", "table 95% dims (caption rows)"],
                 [[r["model"], str(r["width"]), f"{r['curvature_effective_rank']:.2f}",
                   f"{r['curvature_participation_ratio']:.2f}", _scope(r, "per_concept"), _scope(r, "per_draw"),
                   str(r["table_95pct_components_all_rows"]),
                   f"{r['table_95pct_components_caption_rows']} of {r['caption_rows']} rows"] for r in rows])


def _scope(row: dict, scope: str) -> str:
    keys = (f"curvature_effective_rank_{scope}", f"curvature_participation_ratio_{scope}")
    return ", ".join(f"{row[k]:.2f}" for k in keys) if all(k in row for k in keys) else "–"  # older rows lack them


def noise_report(names: list[str], folders: dict, draws_per_concept: int, seed: int, out: Path, command: str) -> int:
    """``--gradient-noise``: :func:`gradient_noise` per model, into ``out/gradient-noise.{json,md}``."""
    from benchmarks._quality_report import run_context
    from zoodip.curvature import CURVATURE_FILE

    rows = []
    for name in names:
        folder = folders[name]()
        if not (folder / CURVATURE_FILE).is_file():
            print(f"{name}: no {CURVATURE_FILE} beside its weights, skipped", file=sys.stderr)
            continue
        started = time.perf_counter()
        rows.append({"model": name, **gradient_noise(folder, draws_per_concept, seed),
                     "seconds": round(time.perf_counter() - started, 1)})
        print(json.dumps(rows[-1]), flush=True)
    report = table("How noisy one draw's gradient is, and what a forward-only step costs", command,
                   ["model", "draws per concept", "s, whole space", "s, curvature subspace (k dims)",
                    "ZO variance per step / backprop's (n=2)", "forwards per backprop step",
                    "share of sum |g_k|^2 in the largest 5% of draws",
                    "predicted gain of --clip-estimate " + " / ".join(f"{k:g}" for k in CLIP_KAPPAS)],
                   [[r["model"], str(r["draws_per_concept"]), f"{r['noise_ratio_full']:.1f}",
                     f"{r['noise_ratio_subspace']:.1f} ({r['subspace_dims']})",
                     f"{r['zo_variance_per_step_vs_backprop']:.1f}", f"{r['forwards_per_backprop_step']:.0f}",
                     f"{r['top5pct_share_of_squared_norm']:.2f}",
                     " / ".join(f"{r['clipped_estimate_gain'][str(k)]:.2f}" for k in CLIP_KAPPAS)] for r in rows])
    write_file(out / "gradient-noise.json", json.dumps({**run_context(command), "t_range": T_RANGE, "rows": rows},
                                                       indent=1) + "\n")
    write_file(out / "gradient-noise.md", report)  # (--out made only now: a failed run leaves none)
    print(report)
    return 0


@script_main("--out was not written (the worlds built into --cache are kept for the next run)")
def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(prog="python benchmarks/problem_dimension.py", description=__doc__.splitlines()[0])
    p.add_argument("--models", default="reference-64,isometric-768,sd-width-768",
                   help="comma-separated: reference-64, isometric-768, sd-width-768, or NAME=FOLDER for any reference "
                        "world folder (e.g. one trained with train_reference.py --caption-attributes)")
    p.add_argument("--samples", type=int, default=8, help="(photo, noise, timestep, prompt) draws per concept")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gradient-noise", type=int, default=0, metavar="DRAWS",
                   help="instead, measure how noisy one draw's gradient is (DRAWS draws per concept; "
                        "models with a curvature file) and what that makes a forward-only step cost (0: off)")
    p.add_argument("--cache", type=Path, default=REPO / ".cache")
    p.add_argument("--out", default=None,
                   help=f"results folder (default: {repo_relative(DEFAULT_OUT)}, the committed results)")
    try:
        args = p.parse_args(argv)
        if args.gradient_noise < 0 or args.gradient_noise == 1 or args.samples < 1 or args.seed < 0:
            p.error("--gradient-noise must be 0 (off) or at least 2 draws, --samples at least 1, --seed 0 or more")
        validation.positive_int("--samples", args.samples, 1, *MAX_SAMPLES)  # (before any world is built)
        validation.positive_int("--gradient-noise", args.gradient_noise, 0, *MAX_NOISE_DRAWS)
        check_output_dir(args.cache, "--cache")  # (the widened and SD-width worlds are built into it)
        folders = model_folders(args.cache)
        names = []
        for entry in (n.strip() for n in args.models.split(",")):
            if "=" in entry:
                name, folder = entry.split("=", 1)
                if not (Path(folder) / "unet" / "config.json").is_file():
                    raise ZoodipError(f"--models {entry}: {folder} is not a diffusers folder (no unet/config.json)")
                folders[name] = lambda folder=Path(folder): folder
                entry = name
            if entry:
                names.append(entry)
        unknown = [n for n in names if n not in folders]
        if unknown or not names:
            p.error(f"--models: unknown {unknown or args.models!r}; choose from {sorted(folders)}")
        args.out = check_output_dir(DEFAULT_OUT if args.out is None else args.out, "--out")  # before the work
        check_results_folder(args.out, p, argv, "problem_dimension.py",
                             record="gradient-noise" if args.gradient_noise else "results")
    except ZoodipError as exc:
        return print_error(exc)
    command = " ".join(["python benchmarks/problem_dimension.py",
                        *relative_args(argv if argv is not None else sys.argv[1:])])
    if args.gradient_noise:
        return noise_report(names, folders, args.gradient_noise, args.seed, args.out, command.strip())
    rows = []
    for name in names:
        rows.append(measure(name, folders[name](), args.samples, args.seed))
        print(json.dumps(rows[-1]), flush=True)
    from benchmarks._quality_report import run_context, write_results

    write_results(args.out, {**run_context(command.strip()), "samples_per_concept": args.samples, "t_range": T_RANGE,
                             "rows": rows}, markdown(rows, command.strip()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Train the reference model: a small Stable-Diffusion-shaped model of the procedural world (reference/world.py).

The result, ``reference/model/``, is an ordinary diffusers SD folder (model_index.json, CLIPTokenizer with
CLIP's real BPE files, CLIPTextModel, AutoencoderKL, UNet2DConditionModel with cross-attention, PNDM
scheduler config with SD's betas), weights stored as fp16 safetensors. ``zoodip export reference/model out``
exports it like any SD folder.

Stages (each resumable from atomic checkpoints in ``--work``; rerunning the same command continues, and a rerun with
other flags that shape a stage already there is refused: ``--work/settings.json`` records them):

1. data: render ``--n-images`` world images (seeded) into ``work/data.npz``.
2. vae: AutoencoderKL 32x32 -> 4x8x8 (vae_scale_factor 4), MSE + L1 + small KL; then the latent
   std over the data set sets ``scaling_factor`` (so scaled latents are ~unit variance, as in SD).
3. diffusion: UNet + text encoder trained jointly from scratch with SD's epsilon-prediction DDPM loss
   (scaled-linear betas 0.00085..0.012, 1000 steps, min-SNR-5 weighting) on randomized captions
   (``world.random_caption``: attribute phrases dropped at random, "a photo of" style prefixes), 10% of
   them empty (so classifier-free guidance works); EMA weights are the ones saved.
4. save: write the diffusers folder.

Commands used for the committed model (defaults; 2 CPU cores shared with 3 other jobs, torch 2.13 CPU,
one thread: with contention, 2 threads ran ~6x slower than 1):

    nice -n 5 .venv/bin/python reference/train_reference.py --stop-after vae   # render 64 s + VAE 15.4 min
    nice -n 5 .venv/bin/python reference/train_reference.py                    # UNet + text encoder 47 min

(one invocation without ``--stop-after`` does both; it writes ``reference/.work/model``: an existing folder,
such as the committed ``reference/model``, is replaced only with ``--out reference/model --overwrite``). Then two continuations of the UNet + text encoder
with the plain (uniform) epsilon loss, which weights the low-noise steps that draw fine texture more than
min-SNR-5 does (style accuracy of generated images 0.75 -> 0.80 after the first, on 1000 captions), each
from the folder the previous one wrote (2 cores, 2 threads, ~12 min each):

    .venv/bin/python reference/train_reference.py --init-from reference/model --work reference/.work-ft \
        --diffusion-steps 2500 --lr 3e-4 --warmup 100 --loss-weighting uniform --threads 2 \
        --out reference/model --overwrite
    # (again, from the folder it wrote, with another --work)

Probes of the world itself (benchmarks/README.md, "The SD-width world"): ``--caption-attributes shape,color`` trains on
captions that name only those attributes (the same images and draws), ``--vae-from FOLDER`` starts the UNet and text
encoder from scratch on a trained folder's VAE, ``--device cuda`` moves the arithmetic (the draws stay on the CPU).

Wall times are recorded in ``reference/model/zoodip_source.json``; final VAE MSE ~0.0098 (images in
[-1, 1]), final diffusion loss ~0.067 (epsilon MSE, EMA of the batch loss), ~0.062 after a continuation.
Randomness of step k is a pure function of (seed, k), so an interrupted run that is resumed takes the same
batches as an uninterrupted one and ends with its weights, bit for bit (on the same machine and torch).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file: make the repository importable

from reference.repo import REPO, check_new_output, repo_relative, write_folder_beside  # noqa: E402
from reference.train_work import check_work, record_stage  # noqa: E402

sys.path.insert(0, str(REPO / "sdk"))

from reference import world  # noqa: E402
from zoodip.console import OneLineParser, interrupt_on_termination, print_error, print_interrupted  # noqa: E402
from zoodip.errors import ZoodipError  # noqa: E402
from zoodip.paths import check_output_dir  # noqa: E402
from zoodip.validation import finite_float, positive_int  # noqa: E402
from zoodip_export.clip_vocab import VOCAB_SIZE, write_clip_tokenizer_files  # noqa: E402
from zoodip_export.tiny import (  # noqa: E402
    BOS_TOKEN_ID, EOS_TOKEN_ID, SD_SCHEDULER_CONFIG, SOURCE_MARKER, model_index, write_json,
)

TEXT_HIDDEN = 64
LATENT_SIDE = world.RESOLUTION // 4
TOKEN_EMBEDDING_STD = 0.1  # as the tiny model: token content dominates the position embeddings
CAPTION_DROPOUT = 0.1


def configs() -> dict[str, dict]:
    text_encoder = {
        "vocab_size": VOCAB_SIZE, "hidden_size": TEXT_HIDDEN, "intermediate_size": 4 * TEXT_HIDDEN,
        "num_hidden_layers": 3, "num_attention_heads": 4, "max_position_embeddings": 77,
        "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5, "projection_dim": TEXT_HIDDEN,
        "bos_token_id": BOS_TOKEN_ID, "eos_token_id": EOS_TOKEN_ID, "pad_token_id": EOS_TOKEN_ID,
    }
    unet = {
        "sample_size": LATENT_SIDE, "in_channels": 4, "out_channels": 4,
        "block_out_channels": (48, 96), "layers_per_block": 1,
        "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        "cross_attention_dim": TEXT_HIDDEN,
        "attention_head_dim": 4,  # diffusers' historical naming: number of heads
        "norm_num_groups": 16,
    }
    vae = {
        "in_channels": 3, "out_channels": 3,
        # Three blocks -> two downsamplings -> vae_scale_factor 4: 32x32 images, 8x8 latents.
        "block_out_channels": (32, 64, 64),
        "down_block_types": ("DownEncoderBlock2D",) * 3,
        "up_block_types": ("UpDecoderBlock2D",) * 3,
        "layers_per_block": 1, "latent_channels": 4, "norm_num_groups": 16,
        "sample_size": world.RESOLUTION, "scaling_factor": 1.0,
    }
    return {"text_encoder": text_encoder, "unet": unet, "vae": vae}


# --- utilities -----------------------------------------------------------------------------------

def atomic_save(obj: dict, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def step_rng(seed: int, stage: int, step: int) -> np.random.Generator:
    return np.random.default_rng([seed, stage, step])


def step_generator(seed: int, stage: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, stage, step, 7]).generate_state(1)[0]))


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [N,H,W,3] -> float [N,3,H,W] in [-1,1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


# --- stages --------------------------------------------------------------------------------------

def stage_data(work: Path, n: int, seed: int) -> dict:
    path = work / "data.npz"
    if path.is_file():
        data = np.load(path)
        if len(data["images"]) == n:
            return {k: data[k] for k in data.files}
    images = np.empty((n, world.RESOLUTION, world.RESOLUTION, 3), np.uint8)
    codes = np.empty((n, len(world.ATTRIBUTE_NAMES)), np.int16)
    for i, (image, _, attrs) in enumerate(tqdm(world.dataset(n, seed), total=n, desc="render", mininterval=5)):
        images[i] = np.asarray(image)
        codes[i] = [world.ATTRIBUTES[a].index(getattr(attrs, a)) for a in world.ATTRIBUTE_NAMES]
    tmp = work / "data.tmp.npz"
    np.savez(tmp, images=images, codes=codes)
    os.replace(tmp, path)
    return {"images": images, "codes": codes}


def attrs_of(code: np.ndarray) -> world.Attributes:
    return world.Attributes(**{a: world.ATTRIBUTES[a][int(c)] for a, c in zip(world.ATTRIBUTE_NAMES, code)})


def stage_vae(work: Path, data: dict, args: argparse.Namespace):
    from diffusers import AutoencoderKL

    torch.manual_seed(args.seed + 2)
    vae = AutoencoderKL(**configs()["vae"]).to(args.device)
    opt = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0)
    ckpt_path = work / "vae.pt"
    start = 0
    if ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, weights_only=True, map_location=args.device)
        vae.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["opt"])
        start = ckpt["step"]
    images = data["images"]
    total = args.vae_steps
    vae.train()
    bar = tqdm(range(start, total), initial=start, total=total, desc="vae", mininterval=10)
    running = ckpt.get("mse") if start else None  # resumed: the record continues (an older checkpoint has none)
    for step in bar:
        rng = step_rng(args.seed, 1, step)
        x = to_tensor(images[rng.integers(len(images), size=args.vae_batch)]).to(args.device)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, total, args.vae_lr, 200)
        posterior = vae.encode(x).latent_dist
        draw = torch.randn(posterior.mean.shape, generator=step_generator(args.seed, 1, step))
        z = posterior.mean + posterior.std * draw.to(args.device)
        rec = vae.decode(z).sample
        mse = F.mse_loss(rec, x)
        loss = mse + 0.5 * F.l1_loss(rec, x) + args.kl_weight * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        running = mse.item() if running is None else 0.98 * running + 0.02 * mse.item()
        bar.set_postfix(mse=f"{running:.5f}", refresh=False)
        if (step + 1) % args.checkpoint_every == 0 or step + 1 == total:
            atomic_save({"model": vae.state_dict(), "opt": opt.state_dict(), "step": step + 1, "mse": running}, ckpt_path)
    bar.close()
    vae.eval().requires_grad_(False)
    return vae.cpu()


@torch.no_grad()
def encode_all(vae, images: np.ndarray, work: Path, vae_file: Path, device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Posterior mean and std of every image (computed on ``device``; ``vae`` is left on the CPU), cached in
    ``work`` until ``vae_file`` changes."""
    path = work / "latents.npz"
    stamp = os.path.getmtime(vae_file)
    if path.is_file():
        cached = np.load(path)
        if float(cached["stamp"]) == stamp:
            return cached["mean"], cached["std"]
    means, stds = [], []
    vae.to(device)
    for i in tqdm(range(0, len(images), 256), desc="encode", mininterval=10):
        posterior = vae.encode(to_tensor(images[i : i + 256]).to(device)).latent_dist
        means.append(posterior.mean.cpu().numpy())
        stds.append(posterior.std.cpu().numpy())
    vae.cpu()
    # C order, as the cache reads back: the VAE's outputs are channels-last, and a channels-last batch takes
    # other UNet kernels (other roundings), so a resumed run (latents from the cache) drifted from an uninterrupted one
    mean, std = np.ascontiguousarray(np.concatenate(means)), np.ascontiguousarray(np.concatenate(stds))
    tmp = work / "latents.tmp.npz"
    np.savez(tmp, mean=mean, std=std, stamp=stamp)
    os.replace(tmp, path)
    return mean, std


def sd_alphas_cumprod() -> torch.Tensor:
    c = SD_SCHEDULER_CONFIG
    betas = torch.linspace(c["beta_start"] ** 0.5, c["beta_end"] ** 0.5, c["num_train_timesteps"], dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0).float()


class Captioner:
    """World captions -> padded CLIP ids, with the SDK's own tokenizer (exactly what it feeds at run time).

    Only the few dozen ids the captions use are trained: ``compact`` maps them to rows of a small
    embedding table (dense Adam/EMA updates of all 49408 rows would cost more than the text encoder).
    """

    def __init__(self, folder: Path) -> None:
        from zoodip.tokenizer import CLIPTokenizer

        self.tokenizer = CLIPTokenizer.from_folder(folder)
        words = set()
        for values in world.ATTRIBUTES.values():
            words.update(values)
        for prefix in world._PREFIXES:
            words.update(prefix.split())
        words.update("a an on background with stripes dots outline plain".split())
        ids = {self.tokenizer.bos_id, self.tokenizer.eos_id, self.tokenizer.pad_id}
        for word in words:
            ids.update(self.tokenizer.encode(word))
        self.vocab = np.array(sorted(ids), dtype=np.int64)
        self.lookup = np.full(VOCAB_SIZE, -1, dtype=np.int64)
        self.lookup[self.vocab] = np.arange(len(self.vocab))
        self.cache: dict[str, np.ndarray] = {}

    def __call__(self, texts: list[str]) -> torch.Tensor:
        """Compact ids [B, 77]."""
        rows = []
        for text in texts:
            row = self.cache.get(text)
            if row is None:
                row = self.lookup[self.tokenizer(text)[0]]
                if (row < 0).any():
                    raise ValueError(f"caption {text!r} uses a token outside the training vocabulary")
                self.cache[text] = row
            rows.append(row)
        return torch.from_numpy(np.stack(rows))


def build_text_encoder(seed: int, vocab: np.ndarray | None = None, config: dict | None = None):
    """The CLIP text encoder with a std-0.1 token table; with ``vocab``, its table holds only those rows.

    ``config``: the text-encoder config (default: the reference model's, ``configs()``)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    config = config or configs()["text_encoder"]
    torch.manual_seed(seed)
    model = CLIPTextModel(CLIPTextConfig(**config))
    g = torch.Generator().manual_seed(seed + 101)
    with torch.no_grad():
        table = model.text_model.embeddings.token_embedding.weight
        if vocab is None:
            table.copy_(torch.randn(table.shape, generator=g) * TOKEN_EMBEDDING_STD)
        else:  # only the rows kept: the full random table is never materialized
            small = torch.nn.Embedding(len(vocab), config["hidden_size"])
            small.weight.copy_(torch.randn(table.shape, generator=g)[torch.from_numpy(vocab)] * TOKEN_EMBEDDING_STD)
            model.text_model.embeddings.token_embedding = small
    return model


def load_all_but_token_table(text_encoder, state: dict[str, torch.Tensor]) -> None:
    """Load a text-encoder state into a model whose token table has another number of rows (set apart)."""
    state = {k: v for k, v in state.items() if "token_embedding" not in k}
    missing, unexpected = text_encoder.load_state_dict(state, strict=False)
    assert not unexpected and all("token_embedding" in k for k in missing), (missing, unexpected)


def expand_text_encoder(compact, vocab: np.ndarray, seed: int, base_table: torch.Tensor | None = None):
    """The full-vocabulary text encoder: the trained rows scattered into the untrained table.

    The untrained rows are ``base_table`` (a continuation keeps its starting folder's) or else the
    seeded std-0.1 random table of a run from scratch."""
    config = {k: v for k, v in compact.config.to_dict().items() if k in configs()["text_encoder"]}
    full = build_text_encoder(seed, config=config)
    load_all_but_token_table(full, compact.state_dict())
    with torch.no_grad():
        table = full.text_model.embeddings.token_embedding.weight
        if base_table is not None:
            table.copy_(base_table)
        table[torch.from_numpy(vocab)] = compact.text_model.embeddings.token_embedding.weight
    return full.eval()


def folder_configs(folder: Path) -> dict[str, dict]:
    """The text-encoder and UNet configs of a trained folder (a continuation keeps its architecture)."""
    keys = configs()
    text = json.loads((folder / "text_encoder" / "config.json").read_text())
    unet = json.loads((folder / "unet" / "config.json").read_text())
    return {"text_encoder": {k: text[k] for k in keys["text_encoder"]},
            "unet": {k: (tuple(unet[k]) if isinstance(unet[k], list) else unet[k]) for k in keys["unet"]}}


def load_trained(folder: Path, unet, compact_text_encoder, vocab: np.ndarray) -> torch.Tensor:
    """Copy a trained reference folder's UNet and text encoder (its ``vocab`` rows) into fresh modules;
    returns the folder's whole token table (its untrained rows are kept when the result is saved)."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    unet.load_state_dict(UNet2DConditionModel.from_pretrained(folder / "unet").float().state_dict())
    full = CLIPTextModel.from_pretrained(folder / "text_encoder").float().state_dict()
    table = full["text_model.embeddings.token_embedding.weight"]
    load_all_but_token_table(compact_text_encoder, full)
    with torch.no_grad():
        compact_text_encoder.text_model.embeddings.token_embedding.weight.copy_(table[torch.from_numpy(vocab)])
    return table


def stage_diffusion(work: Path, data: dict, latents: tuple[np.ndarray, np.ndarray], scale: float,
                    captioner: Captioner, args: argparse.Namespace):
    from diffusers import UNet2DConditionModel

    arch = folder_configs(args.init_from) if args.init_from else configs()
    text_encoder = build_text_encoder(args.seed, captioner.vocab, arch["text_encoder"])
    torch.manual_seed(args.seed + 1)
    unet = UNet2DConditionModel(**arch["unet"])
    base_table = load_trained(args.init_from, unet, text_encoder, captioner.vocab) if args.init_from else None
    models = torch.nn.ModuleDict({"unet": unet, "text_encoder": text_encoder})
    ema = torch.nn.ModuleDict({"unet": UNet2DConditionModel(**arch["unet"]),
                               "text_encoder": build_text_encoder(args.seed, captioner.vocab, arch["text_encoder"])})
    ema.load_state_dict(models.state_dict())
    ema.requires_grad_(False)
    models.to(args.device)
    ema.to(args.device)
    embedding = text_encoder.text_model.embeddings.token_embedding.weight
    if args.freeze_text_encoder:  # as SD's UNet is trained on a frozen CLIP: only the UNet learns
        text_encoder.requires_grad_(False)
    others = [p for p in models.parameters() if p is not embedding and p.requires_grad]
    groups = [{"params": others, "weight_decay": 1e-2}]
    if embedding.requires_grad:
        groups.append({"params": [embedding], "weight_decay": 0.0})
    opt = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.99))
    ckpt_path = work / "diffusion.pt"
    start = 0
    if ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, weights_only=True, map_location=args.device)
        models.load_state_dict(ckpt["model"])
        ema.load_state_dict(ckpt["ema"])
        opt.load_state_dict(ckpt["opt"])
        start = ckpt["step"]
    alphas = sd_alphas_cumprod().to(args.device)
    snr = alphas / (1 - alphas)
    if args.loss_weighting == "min-snr-5":
        weights = torch.clamp(snr, max=5.0) / snr  # min-SNR-5 for epsilon prediction
    else:  # "uniform": plain epsilon MSE, which weights the low-noise steps (fine texture) more
        weights = torch.ones_like(snr)
    mean, std = latents
    codes = data["codes"]
    total = args.diffusion_steps
    models.train()
    bar = tqdm(range(start, total), initial=start, total=total, desc="diffusion", mininterval=10)
    running = ckpt.get("loss") if start else None  # resumed: the record continues (an older checkpoint has none)
    started = time.monotonic()
    stage = 3 if args.init_from else 2  # a continuation draws batches the first run did not
    for step in bar:
        rng = step_rng(args.seed, stage, step)
        gen = step_generator(args.seed, stage, step)
        idx = rng.integers(len(codes), size=args.batch)
        texts = [("" if rng.uniform() < CAPTION_DROPOUT else world.random_caption(attrs_of(codes[i]), rng, named=args.named)) for i in idx]
        x0 = torch.from_numpy(mean[idx]) + torch.from_numpy(std[idx]) * torch.randn(mean[idx].shape, generator=gen)
        x0 = x0 * scale
        t = torch.randint(0, len(alphas), (args.batch,), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        # the draws stay on the CPU generator (the same batches on every device); the arithmetic moves
        x0, t, noise = x0.to(args.device), t.to(args.device), noise.to(args.device)
        a = alphas[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        for group in opt.param_groups:
            group["lr"] = lr_at(step, total, args.lr, args.warmup)
        with torch.set_grad_enabled(not args.freeze_text_encoder):
            hidden = text_encoder(captioner(texts).to(args.device)).last_hidden_state
        pred = unet(xt, t, encoder_hidden_states=hidden).sample
        per = ((pred - noise) ** 2).mean(dim=(1, 2, 3))
        loss = (per * weights[t]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(models.parameters(), 1.0)
        opt.step()
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), models.parameters()):
                pe.lerp_(pm, 1 - decay)
        running = per.mean().item() if running is None else 0.99 * running + 0.01 * per.mean().item()
        bar.set_postfix(loss=f"{running:.4f}", refresh=False)
        if (step + 1) % args.checkpoint_every == 0 or step + 1 == total:
            atomic_save({"model": models.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                         "step": step + 1, "loss": running}, ckpt_path)
        if args.benchmark and step + 1 - start >= args.benchmark:
            print(f"diffusion: {(step + 1 - start) / (time.monotonic() - started):.2f} it/s", flush=True)
            sys.exit(0)
    bar.close()
    ema.cpu()
    text = expand_text_encoder(ema["text_encoder"], captioner.vocab, args.seed, base_table)
    return ema["unet"].eval(), text, running


def save_folder(final: Path, vae, unet, text_encoder, scale: float, meta: dict) -> None:
    """Write the diffusers folder beside ``final``, then swap it in: an interrupted save leaves ``final`` as it was."""
    write_folder_beside(final, lambda folder: write_folder(folder, vae, unet, text_encoder, scale, meta))


def write_folder(dest: Path, vae, unet, text_encoder, scale: float, meta: dict) -> None:
    dest.mkdir(parents=True)
    vae.register_to_config(scaling_factor=float(scale))
    # fp16 on disk (the exporter loads everything as float32); halves the repository footprint.
    text_encoder.half().save_pretrained(dest / "text_encoder", safe_serialization=True)
    unet.half().save_pretrained(dest / "unet", safe_serialization=True)
    vae.half().save_pretrained(dest / "vae", safe_serialization=True)
    for config in dest.glob("*/config.json"):  # a module loaded with --init-from remembers its source path
        entries = json.loads(config.read_text())
        if entries.pop("_name_or_path", None) is not None:
            write_json(config, entries)
    for module in (text_encoder, unet, vae):
        module.float()
    write_json(dest / "model_index.json", model_index())
    write_json(dest / SOURCE_MARKER, meta)
    write_json(dest / "scheduler" / "scheduler_config.json", SD_SCHEDULER_CONFIG)
    write_clip_tokenizer_files(dest / "tokenizer")


def check_numbers(args: argparse.Namespace) -> None:
    """Every count and rate of the command line, before any work (a negative step count wrote an untrained
    model, a zero --checkpoint-every or a nan rate failed as a traceback after rendering the data)."""
    for flag in ("threads", "n_images", "vae_steps", "vae_batch", "diffusion_steps", "batch", "checkpoint_every"):
        positive_int("--" + flag.replace("_", "-"), getattr(args, flag))
    for flag in ("warmup", "benchmark"):
        positive_int("--" + flag, getattr(args, flag), minimum=0)
    finite_float("--lr", args.lr, low=0.0)
    finite_float("--vae-lr", args.vae_lr, low=0.0)
    finite_float("--kl-weight", args.kl_weight, low=0.0, low_open=False)
    finite_float("--ema", args.ema, low=0.0, high=1.0, low_open=False, high_open=True)


def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(prog="python reference/train_reference.py", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=REPO / "reference" / ".work" / "model",
                   help="the trained folder (an existing one is replaced only with --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder (e.g. reference/model)")
    p.add_argument("--work", type=Path, default=REPO / "reference" / ".work",
                   help="data, latents and checkpoints; a rerun continues there only with the same training flags")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", help="torch device of the training arithmetic, e.g. cuda (the random draws "
                   "stay on the CPU, so the batches are the same on every device)")
    p.add_argument("--caption-attributes", default=",".join(world.ATTRIBUTE_NAMES), metavar="A,B,...",
                   help="the attributes training captions may name (the shape always); the others are never said")
    p.add_argument("--n-images", type=int, default=30000)
    p.add_argument("--vae-steps", type=int, default=1200)
    p.add_argument("--vae-batch", type=int, default=32)
    p.add_argument("--vae-lr", type=float, default=1e-3)
    p.add_argument("--kl-weight", type=float, default=1e-6)
    p.add_argument("--diffusion-steps", type=int, default=5000)
    p.add_argument("--batch", type=int, default=48)
    p.add_argument("--lr", type=float, default=8e-4)
    p.add_argument("--warmup", type=int, default=300, help="diffusion learning-rate warmup steps")
    p.add_argument("--loss-weighting", choices=("min-snr-5", "uniform"), default="min-snr-5",
                   help="per-timestep weight of the diffusion loss")
    p.add_argument("--init-from", type=Path, help="continue from a trained reference folder: keep its VAE, start "
                   "the UNet and text encoder from it (use a separate --work)")
    p.add_argument("--vae-from", type=Path, help="train the UNet and text encoder from scratch on this trained reference "
                   "folder's VAE (skips the VAE stage)")
    p.add_argument("--freeze-text-encoder", action="store_true",
                   help="train the UNet only, on the starting folder's text encoder (needs --init-from)")
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--checkpoint-every", type=int, default=250)
    p.add_argument("--stop-after", choices=("data", "vae"), help="stop after this stage (rerun to continue)")
    p.add_argument("--benchmark", type=int, default=0, help="time this many steps of each stage, then exit")
    try:
        args = p.parse_args(argv)
        check_numbers(args)
        # (not over --work: the save's swap would delete its checkpoints; --init-from's folder may be replaced, as
        # the continuations do: it is read before the training)
        check_new_output(args.out, "--out", args.overwrite, sources=[args.work])
        check_output_dir(args.work, "--work")
        args.named = tuple(args.caption_attributes.split(","))  # what stage_diffusion's captions may say
        if "shape" not in args.named or not set(args.named) <= set(world.ATTRIBUTE_NAMES):
            raise ZoodipError(f"--caption-attributes {args.caption_attributes}: name the shape and any of "
                              f"{', '.join(world.ATTRIBUTE_NAMES)}, comma-separated")
        try:
            device = torch.device(args.device)
        except RuntimeError:
            raise ZoodipError(f"--device {args.device}: not a torch device; give cpu or cuda") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ZoodipError(f"--device {args.device}: this torch build sees no CUDA device; give cpu")
        if args.init_from and args.vae_from:
            raise ZoodipError("--init-from already keeps its folder's VAE: give --vae-from only for a run from scratch")
        if args.vae_from and not (args.vae_from / "vae" / "config.json").is_file():
            raise ZoodipError(f"--vae-from {args.vae_from}: no vae/ folder there; give a trained reference folder")
        if args.init_from and not (args.init_from / SOURCE_MARKER).is_file():
            raise ZoodipError(f"--init-from {args.init_from}: not a trained reference folder (no {SOURCE_MARKER})")
        check_work(args)  # a checkpoint of other settings is not continued
    except ZoodipError as exc:
        return print_error(exc)
    try:
        with interrupt_on_termination():  # a kill as Ctrl-C: one line, not a traceback or silence
            return train(args, default_attributes=p.get_default("caption_attributes"))
    except KeyboardInterrupt as exc:
        return print_interrupted(f"--out was not written; the last checkpoint in {args.work} is kept: rerun the same "
                                 "command to continue from it", exc)


def train(args: argparse.Namespace, default_attributes: str) -> int:
    """The stages of a checked command line, each resumed from its checkpoint in ``args.work``."""
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()

    record_stage(args, "data")
    data = stage_data(args.work, args.n_images, args.seed + 12345)
    if args.benchmark:
        from diffusers import AutoencoderKL
        vae = AutoencoderKL(**configs()["vae"]).to(args.device)
        x = to_tensor(data["images"][: args.vae_batch]).to(args.device)
        t0 = time.monotonic()
        for _ in range(args.benchmark):
            out = vae(x).sample
            F.mse_loss(out, x).backward()
        print(f"vae: {args.benchmark / (time.monotonic() - t0):.2f} it/s", flush=True)
        bench = args.work / "benchmark"
        bench.mkdir(exist_ok=True)
        tok_dir = bench / "tokenizer"
        write_clip_tokenizer_files(tok_dir)
        fake = np.random.default_rng(0).standard_normal((len(data["images"]), 4, LATENT_SIDE, LATENT_SIDE)).astype(np.float32)
        stage_diffusion(bench, data, (fake, 0.1 * np.ones_like(fake)), 1.0, Captioner(tok_dir), args)
        return 0
    if args.stop_after == "data":
        return 0
    if args.init_from or args.vae_from:
        # A trained folder's VAE and latent scale: a continuation keeps them (its UNet still fits them); a run from
        # scratch with --vae-from skips the VAE stage (the VAE sees only images, not captions).
        from diffusers import AutoencoderKL

        source = args.init_from or args.vae_from
        vae = AutoencoderKL.from_pretrained(source / "vae").float().eval().requires_grad_(False)
        vae_file = source / "vae" / "diffusion_pytorch_model.safetensors"
        mean, std = encode_all(vae, data["images"], args.work, vae_file, args.device)
        scale = float(vae.config.scaling_factor)
        previous = json.loads((args.init_from / SOURCE_MARKER).read_text()) if args.init_from else None
    else:
        record_stage(args, "vae")
        vae = stage_vae(args.work, data, args)
        if args.stop_after == "vae":
            return 0
        mean, std = encode_all(vae, data["images"], args.work, args.work / "vae.pt", args.device)
        scale = 1.0 / float(mean.std())
        previous = None
    print(f"latent mean std {mean.std():.4f}, scaling_factor {scale:.5f}; posterior std {std.mean():.4f}", flush=True)
    tok_dir = args.work / "tokenizer"
    if not (tok_dir / "vocab.json").is_file():
        write_clip_tokenizer_files(tok_dir)
    record_stage(args, "diffusion")
    unet, text_encoder, loss = stage_diffusion(args.work, data, (mean, std), scale, Captioner(tok_dir), args)
    run = {"diffusion_steps": args.diffusion_steps, "batch": args.batch, "lr": args.lr, "warmup": args.warmup,
           "text_encoder": "frozen" if args.freeze_text_encoder else "trained",
           "loss_weighting": args.loss_weighting, "diffusion_loss": loss,
           **({"caption_attributes": args.caption_attributes} if args.caption_attributes != default_attributes else {}),
           **({"device": args.device} if args.device != "cpu" else {}),
           "this_invocation_seconds": round(time.monotonic() - started, 1)}
    if previous is None and args.vae_from:
        meta = {"kind": "reference-world", "seed": args.seed, "resolution": world.RESOLUTION, "n_images": args.n_images,
                "vae_from": repo_relative(args.vae_from), **run}
    elif previous is None:
        vae_ckpt = torch.load(args.work / "vae.pt", weights_only=True)
        meta = {"kind": "reference-world", "seed": args.seed, "resolution": world.RESOLUTION,
                "n_images": args.n_images, "vae_steps": args.vae_steps, "vae_mse": vae_ckpt.get("mse"), **run}
    else:  # the starting folder's record, with this continuation appended
        meta = {**previous, "continued": [*previous.get("continued", []), {"init_from": repo_relative(args.init_from), **run}]}
    save_folder(args.out, vae, unet, text_encoder, scale, meta)
    print(json.dumps(meta), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

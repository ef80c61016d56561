"""One benchmark contender, run in its own fresh process: ``python benchmarks/_contenders.py SPEC_JSON``.

The last stdout line is ``RESULT {json}``. Memory comes from the kernel: ``VmRSS``/``VmHWM`` in
/proc/self/status (VmHWM is reset at each phase start by writing 5 to /proc/self/clear_refs, so
each phase has its own peak) and ``ru_maxrss`` (the whole process's peak, never reset).

Contenders (``spec["kind"]``):
  zoodip        a personalization run through the SDK (zoodip.trainer.Personalizer.run): photos
                VAE-encoded once, then k ZOODiP steps (n=2, PUTS, SG on); no torch is imported
  zoodip_generate  one image through the SDK's generate() (benchmarks/_generation_contender.py)
  torch_ti      backprop textual inversion in torch fp32 as diffusers' train_textual_inversion.py does it
  torch_zo      the same forward-only ZO step as zoodip, in torch fp32 (no quantization, no ONNX)
  fd_exact      torch autograd directional derivatives of the loss on a fixed problem (for fidelity)
  fd_sdk        the SDK's finite differences on that problem, through an export (for fidelity)
"""
from __future__ import annotations

import json
import os
import resource
import sys
import threading
import time
from pathlib import Path

from _generation_contender import run_generate

MB = 1 << 20


# --- kernel memory counters -----------------------------------------------------------------------


def _status() -> dict[str, int]:
    values = {}
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                values[key] = int(rest.split()[0]) * 1024
    return values


def rss() -> int:
    return _status()["VmRSS"]


def reset_peak() -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
    except OSError:
        pass


def peak() -> int:
    return _status()["VmHWM"]


def ru_maxrss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


class Phases:
    """Per-phase RSS at the end and peak during, in bytes.

    The kernel keeps one high-water mark (VmHWM) for the whole resident set, not one per kind of
    page, so a thread samples RssFile (file-backed: clean pages of memory-mapped weights, which the
    OS can drop and re-read) and RssAnon (heap, tensors: what a low-memory killer counts as the
    process's own) every ``SAMPLE_S``; a phase's split is the one of its highest sample.
    """

    SAMPLE_S = 0.01

    def __init__(self) -> None:
        self.records: dict[str, dict[str, int]] = {}
        self._name: str | None = None
        self._highest: dict[str, int] = {}
        self._lock = threading.Lock()
        threading.Thread(target=self._sample, name="rss-sampler", daemon=True).start()

    def _sample(self) -> None:
        while True:
            status = _status()
            with self._lock:
                if status["VmRSS"] > self._highest.get("VmRSS", -1):
                    self._highest = status
            time.sleep(self.SAMPLE_S)

    def start(self, name: str) -> None:
        self._name = name
        reset_peak()
        with self._lock:
            self._highest = _status()

    def end(self) -> None:
        status = _status()
        with self._lock:
            highest = self._highest if self._highest.get("VmRSS", -1) >= status["VmRSS"] else status
        self.records[self._name] = {"peak": status["VmHWM"], "end": status["VmRSS"], "anon_end": status.get("RssAnon", 0),
                                    "file_end": status.get("RssFile", 0), "sampled_peak": highest["VmRSS"],
                                    "peak_file": highest.get("RssFile", 0), "peak_anon": highest.get("RssAnon", 0)}
        self._name = None


# --- problem setup shared by the torch contenders -------------------------------------------------


def _photo_tensor(photos: Path, resolution: int, index: int):
    """One photo as a [1,3,R,R] tensor in [-1,1] (the SDK's loader, so every contender sees the same pixels)."""
    import numpy as np
    import torch

    from zoodip.images import load_images

    _, images = load_images(photos, resolution)
    return torch.from_numpy(np.ascontiguousarray(images[index % len(images)][None]))


def _meta_load(cls, config, path: Path):
    """Build ``cls(config)`` on the meta device and assign the safetensors weights: one copy in memory."""
    import torch
    from safetensors.torch import load_file

    with torch.device("meta"):
        model = cls(config) if not hasattr(cls, "from_config") else cls.from_config(config)
    state = load_file(str(path))
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    del state
    if unexpected:
        raise RuntimeError(f"{path}: unexpected keys {unexpected[:3]}")
    # Non-persistent buffers (e.g. CLIP's position_ids) are not in the file: rebuild them on the CPU.
    for module in model.modules():
        for name, buffer in list(module.named_buffers(recurse=False)):
            if buffer.is_meta:
                if name == "position_ids":
                    module.register_buffer(name, torch.arange(buffer.shape[-1]).expand(buffer.shape), persistent=False)
                else:
                    raise RuntimeError(f"{path}: buffer {name} has no value")
    leftover = [n for n, p in model.named_parameters() if p.is_meta]
    if leftover:
        raise RuntimeError(f"{path}: parameters missing from the file: {leftover[:3]}")
    return model.eval().requires_grad_(False)


def load_torch_models(source: Path, parts=("text_encoder", "unet", "vae")) -> dict:
    import json as _json

    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    models = {}
    if "text_encoder" in parts:
        config = CLIPTextConfig.from_pretrained(str(source / "text_encoder"))
        config._attn_implementation = "sdpa"
        models["text_encoder"] = _meta_load(CLIPTextModel, config, source / "text_encoder" / "model.safetensors")
    for name, cls in (("unet", UNet2DConditionModel), ("vae", AutoencoderKL)):
        if name in parts:
            config = {k: v for k, v in _json.loads((source / name / "config.json").read_text()).items() if not k.startswith("_")}
            models[name] = _meta_load(cls, config, source / name / "diffusion_pytorch_model.safetensors")
    return models


# --- contenders -----------------------------------------------------------------------------------


def run_zoodip(spec: dict, phases: Phases) -> dict:
    phases.start("imports")
    import numpy as np  # noqa: F401
    import onnxruntime  # noqa: F401

    from zoodip.model import RuntimeOptions
    from zoodip.trainer import PersonalizeConfig, Personalizer
    phases.end()
    assert "torch" not in sys.modules, "the SDK contender must not import torch"

    config = PersonalizeConfig(
        export_dir=Path(spec["export_dir"]), images=Path(spec["photos"]), output_dir=Path(spec["workdir"]) / "run",
        placeholder_token="<bench>", initializer_token="dog", resolution=spec["resolution"],
        max_train_steps=spec["steps"], n=2, subspace=True, eval_every=0, checkpoint_every=0,
        batched=spec.get("batched", True), threads=spec.get("threads", 0),
        memory_budget_mb=spec.get("memory_budget_mb"), vocabulary_variance=spec.get("vocabulary_variance"),
    )
    stamps: list[float] = []
    phases.start("setup")  # photos loaded and VAE-encoded once, VAE encoder released
    runtime = None
    if any(key in spec for key in ("low_memory", "extra_config", "session_attributes")):
        # Lever rows: other onnxruntime session settings for every graph the trainer loads.
        runtime = RuntimeOptions(low_memory=bool(spec.get("low_memory", True)), extra_config=dict(spec.get("extra_config", {})),
                                 session_attributes=dict(spec.get("session_attributes", {})), threads=config.threads,
                                 memory_budget_mb=config.memory_budget_mb)
    personalizer = Personalizer(config, on_progress=lambda p: stamps.append(p.elapsed_s) if p.event == "step" else None,
                                runtime=runtime)
    options = personalizer.model.options
    phases.end()
    phases.start("load")  # the two graphs a step runs
    personalizer.model.session("text_encoder")
    personalizer.model.session("unet")
    phases.end()
    phases.start("train")
    result = personalizer.run()
    phases.end()
    step_times = [b - a for a, b in zip([0.0] + stamps[:-1], stamps)]
    manifest = personalizer.model.manifest
    folder = Path(spec["export_dir"])
    weight_files = {}
    for name in ("text_encoder", "unet", "vae_encoder"):
        graph = manifest["graphs"][name]
        size = (folder / graph["file"]).stat().st_size
        if graph.get("external_data"):
            size += (folder / graph["external_data"]).stat().st_size
        weight_files[name] = size
    return {"step_times": step_times, "forwards_per_step": config.n + 1, "status": result.status,
            "weight_file_bytes": weight_files, "batched": personalizer.loss.batched,
            "low_memory": options.low_memory, "threads": options.threads, "extra_config": dict(options.extra_config),
            "session_attributes": dict(options.session_attributes), "search_dim": personalizer.estimator.search_dim}


def _ti_setup(spec: dict, phases: Phases):
    phases.start("imports")
    import numpy as np  # noqa: F401
    import torch

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    import diffusers  # noqa: F401
    import transformers  # noqa: F401
    phases.end()
    return torch


def run_torch_ti(spec: dict, phases: Phases) -> dict:
    """diffusers' examples/textual_inversion/textual_inversion.py, reduced to what shapes memory and time:
    frozen UNet/VAE, the text encoder's token table as the only trainable parameter (AdamW on it, all
    rows but the placeholder's restored after each step), the VAE encoding the batch every step,
    fp32, batch 1, no gradient checkpointing (the script's defaults)."""
    torch = _ti_setup(spec, phases)
    import torch.nn.functional as F
    from diffusers import DDPMScheduler
    from transformers import CLIPTokenizer

    source = Path(spec["source"])
    phases.start("load")
    tokenizer = CLIPTokenizer.from_pretrained(str(source / "tokenizer"))
    tokenizer.add_tokens(["<bench>"])
    placeholder_id = tokenizer.convert_tokens_to_ids("<bench>")
    initializer_id = tokenizer.encode("dog", add_special_tokens=False)[0]
    models = load_torch_models(source)
    text_encoder, unet, vae = models["text_encoder"], models["unet"], models["vae"]
    text_encoder.resize_token_embeddings(len(tokenizer))
    table = text_encoder.get_input_embeddings().weight
    with torch.no_grad():
        table[placeholder_id] = table[initializer_id].clone()
    # As the script: the whole input-embedding table is the trainable parameter.
    text_encoder.get_input_embeddings().requires_grad_(True)
    text_encoder.train()
    optimizer = torch.optim.AdamW(text_encoder.get_input_embeddings().parameters(), lr=5e-4)
    orig_embeds = table.data.clone()
    scheduler = DDPMScheduler.from_pretrained(str(source / "scheduler"))
    pixels = [_photo_tensor(Path(spec["photos"]), spec["resolution"], i) for i in range(3)]
    ids = tokenizer("a photo of a <bench>", padding="max_length", truncation=True,
                    max_length=tokenizer.model_max_length, return_tensors="pt").input_ids
    phases.end()

    generator = torch.Generator().manual_seed(0)
    step_times = []
    losses = []
    phases.start("train")
    for step in range(spec["steps"]):
        started = time.perf_counter()
        latents = vae.encode(pixels[step % len(pixels)]).latent_dist.sample(generator=generator).detach()
        latents = latents * vae.config.scaling_factor
        noise = torch.randn(latents.shape, generator=generator)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (1,), generator=generator).long()
        noisy = scheduler.add_noise(latents, noise, t)
        hidden = text_encoder(ids)[0]
        pred = unet(noisy, t, hidden).sample
        loss = F.mse_loss(pred.float(), noise.float(), reduction="mean")
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        keep = torch.ones(len(tokenizer), dtype=torch.bool)
        keep[placeholder_id] = False
        with torch.no_grad():
            text_encoder.get_input_embeddings().weight[keep] = orig_embeds[keep]
        step_times.append(time.perf_counter() - started)
        losses.append(float(loss))
    phases.end()
    return {"step_times": step_times, "losses": losses, "forwards_per_step": 1}


def _torch_predictions(text, unet, inputs, x_t, t: int, batched: bool):
    """The torch UNet's predictions [m, C, h, w] for m token-embedding inputs: all at once, or one by one."""
    import torch

    groups = [slice(0, len(inputs))] if batched else [slice(i, i + 1) for i in range(len(inputs))]
    preds = []
    for group in groups:
        cond = text(torch.from_numpy(inputs[group]))
        m = cond.shape[0]
        preds.append(unet(torch.from_numpy(x_t[None]).expand(m, -1, -1, -1), torch.full((m,), float(t)), cond).sample)
    return torch.cat(preds).numpy()


def _export_text_side(export: Path):
    """The export's tokenizer, token table (memory-mapped) and noise schedule, read where its manifest names them
    (without opening its graphs: the torch contenders' memory holds no onnxruntime)."""
    import numpy as np

    from zoodip.manifest import read_manifest
    from zoodip.schedule import NoiseSchedule
    from zoodip.tokenizer import CLIPTokenizer

    manifest = read_manifest(export)
    schedule = NoiseSchedule.from_config(json.loads((export / manifest["scheduler"]).read_text()))
    return (CLIPTokenizer.from_folder(export / manifest["tokenizer"]),
            np.load(export / manifest["token_embeddings"]["file"], mmap_mode="r", allow_pickle=False), schedule)


def run_torch_zo(spec: dict, phases: Phases) -> dict:
    """The ZOODiP step (n=2, mu=1e-3, the same loss) in torch fp32, forward only, latents cached."""
    torch = _ti_setup(spec, phases)
    import numpy as np

    from zoodip_export.onnx_export import TextEncoderGraph

    from zoodip.step_inputs import draw_step_inputs, step_rng
    from zoodip.timesteps import PartialUniformTimesteps
    from zoodip.zo import RandomGradientEstimator

    source = Path(spec["source"])
    export = Path(spec["export_dir"])  # for the SDK tokenizer/table only (same ids and rows as zoodip)
    phases.start("setup")
    models = load_torch_models(source, ("vae",))
    with torch.no_grad():
        latents = np.stack([(models["vae"].encode(_photo_tensor(Path(spec["photos"]), spec["resolution"], i)).latent_dist.mean
                             * models["vae"].config.scaling_factor).numpy() for i in range(3)])  # [3, 1, C, h, w]
    del models
    phases.end()
    phases.start("load")
    models = load_torch_models(source, ("text_encoder", "unet"))
    text = TextEncoderGraph(models["text_encoder"].text_model, 77)
    unet = models["unet"]
    tokenizer, table, schedule = _export_text_side(export)
    placeholder = tokenizer.add_placeholder("<bench>")[0]
    ids = tokenizer("a photo of a <bench>")[0]
    base = np.asarray(table[np.minimum(ids, len(table) - 1)], np.float32)
    v = np.asarray(table[tokenizer.token_ids_for_word("dog")[0]], np.float32).copy()
    estimator = RandomGradientEstimator(len(v), n=2, mu=1e-3)
    puts = PartialUniformTimesteps(500, 900, schedule.num_train_timesteps)
    phases.end()
    batched = spec.get("batched", False)
    step_times = []
    phases.start("train")
    with torch.no_grad():
        for step in range(spec["steps"]):
            started = time.perf_counter()
            rng = step_rng(0, step)
            sample = draw_step_inputs(rng, latents, puts, schedule, lambda photo, r: "a photo of a <bench>")
            z = estimator.directions(rng)
            candidates = np.concatenate([v[None], estimator.perturbations(v, z)]).astype(np.float32)
            inputs = np.repeat(base[None], len(candidates), axis=0)
            inputs[:, ids == placeholder, :] = candidates[:, None, :]
            pred = _torch_predictions(text, unet, inputs, sample.x_t, sample.t, batched)
            losses = np.mean(np.square(pred - sample.target[None], dtype=np.float64), axis=(1, 2, 3))
            g = estimator.estimate(float(losses[0]), losses[1:], z)
            v = (v - 1e-2 * np.sign(g)).astype(np.float32)
            step_times.append(time.perf_counter() - started)
    phases.end()
    return {"step_times": step_times, "forwards_per_step": 3, "batched": batched}


def _fd_problem(export: Path, side: int, directions: int, seed: int = 0) -> dict:
    """A fixed (prompt, v0, x_t, t, target, directions) problem, built with the SDK's pieces only; ``rows``: the
    prompt's token rows (the placeholder's the table's last, replaced by v)."""
    import numpy as np

    tokenizer, table, schedule = _export_text_side(export)
    placeholder = tokenizer.add_placeholder("<fidelity>")[0]
    ids = tokenizer("a photo of a <fidelity>")[0]
    v0 = np.asarray(table[tokenizer.token_ids_for_word("dog")[0]], np.float32)
    rng = np.random.default_rng(seed)
    x0 = rng.standard_normal((4, side, side)).astype(np.float32) * 0.8
    noise = rng.standard_normal(x0.shape).astype(np.float32)
    t = 700
    x_t = schedule.add_noise(x0[None], noise[None], np.array([t]))[0].astype(np.float32)
    target = schedule.target(x0[None], noise[None], np.array([t]))[0].astype(np.float32)
    z = rng.standard_normal((directions, len(v0))).astype(np.float32)
    rows = np.asarray(table[np.minimum(ids, len(table) - 1)], np.float32)
    return {"ids": ids, "placeholder": placeholder, "v0": v0, "x_t": x_t, "t": t, "target": target, "z": z,
            "rows": rows}


def run_fd_exact(spec: dict, phases: Phases) -> dict:
    """Exact directional derivatives z_i . dL/dv by torch autograd on the fp32 model (the reference)."""
    torch = _ti_setup(spec, phases)
    import numpy as np

    from zoodip_export.onnx_export import TextEncoderGraph, UNetGraph

    export = Path(spec["export_dir"])
    problem = _fd_problem(export, spec["resolution"] // 8, spec["directions"])
    phases.start("load")
    models = load_torch_models(Path(spec["source"]), ("text_encoder", "unet"))
    text = TextEncoderGraph(models["text_encoder"].text_model, 77)
    unet = UNetGraph(models["unet"], attention_query_chunks=0)
    ids = problem["ids"]
    rows = problem["rows"]
    phases.end()
    phases.start("train")
    started = time.perf_counter()
    v = torch.from_numpy(problem["v0"].copy()).requires_grad_(True)
    mask = torch.from_numpy(ids == problem["placeholder"])[None, :, None]
    embeds = torch.where(mask, v[None, None, :], torch.from_numpy(rows)[None])
    pred = unet(torch.from_numpy(problem["x_t"][None]), torch.tensor([float(problem["t"])]), text(embeds))
    loss = torch.mean((pred - torch.from_numpy(problem["target"][None])) ** 2)
    loss.backward()
    exact = problem["z"].astype(np.float64) @ v.grad.numpy().astype(np.float64)
    elapsed = time.perf_counter() - started
    phases.end()
    np.save(spec["output"], exact)
    return {"step_times": [elapsed], "loss": float(loss), "grad_norm": float(v.grad.norm())}


def run_fd_sdk(spec: dict, phases: Phases) -> dict:
    """The SDK's finite differences (mu=1e-3) through an export, correlated with the autograd reference."""
    phases.start("imports")
    import numpy as np

    from zoodip.model import ExportedModel, RuntimeOptions
    from zoodip.denoising_loss import DenoisingLoss
    phases.end()
    export = Path(spec["export_dir"])
    problem = _fd_problem(export, spec["resolution"] // 8, spec["directions"])
    exact = np.load(spec["exact"])
    phases.start("load")
    model = ExportedModel.load(export, RuntimeOptions(threads=spec.get("threads", 0)))
    placeholder = model.tokenizer.add_placeholder("<fidelity>")[0]
    assert placeholder == problem["placeholder"]
    loss = DenoisingLoss(model, placeholder, batched=False)
    phases.end()
    phases.start("train")
    started = time.perf_counter()
    v0, z, mu = problem["v0"], problem["z"], 1e-3
    values = loss(problem["ids"], np.concatenate([v0[None], v0[None] + mu * z]), problem["x_t"], problem["t"], problem["target"])
    elapsed = time.perf_counter() - started
    phases.end()
    finite = (values[1:] - values[0]) / mu
    correlation = float(np.corrcoef(finite, exact)[0, 1])
    slope = float(np.dot(finite, exact) / np.dot(exact, exact))
    return {"step_times": [elapsed / len(values)], "fidelity": correlation, "slope": slope, "directions": len(z)}


KINDS = {"zoodip": run_zoodip, "zoodip_generate": run_generate, "torch_ti": run_torch_ti, "torch_zo": run_torch_zo,
         "fd_exact": run_fd_exact, "fd_sdk": run_fd_sdk}


def main() -> int:
    spec = json.loads(sys.argv[1])
    phases = Phases()
    result = KINDS[spec["kind"]](spec, phases)
    result["phases"] = phases.records
    result["peak_rss"] = max(r["peak"] for r in phases.records.values())
    result["ru_maxrss"] = ru_maxrss()
    result["pid"] = os.getpid()
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

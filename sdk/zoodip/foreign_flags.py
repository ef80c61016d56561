"""What to tell a user who types a flag of diffusers' ``textual_inversion.py`` that ``zoodip personalize`` lacks, or a
diffusers pipeline argument or A1111 setting that ``zoodip generate`` names otherwise.

``zoodip personalize`` takes diffusers' spelling wherever it has the feature (``--max_train_steps``,
``--learning_rate``, ``--save_steps``, ...). The flags below belong to backprop training on a GPU, to the Hub or
to the loading of a model zoodip reads from its export; each gets the reason it does not apply and what to do,
rather than argparse's bare "unrecognized arguments".
"""
from __future__ import annotations

from collections.abc import Sequence

_DROP = "drop it"
_EXPORT_FIXES_MODEL = "zoodip trains on a local export, which fixes the model: make it with 'zoodip export'; " + _DROP
_NO_BACKWARD = "there is no backward pass here (forward passes only); " + _DROP
_NO_UPLOAD = "nothing leaves the device: zoodip uploads nothing; " + _DROP
_PROGRESS = "progress goes to the terminal and, with --progress-jsonl PATH, to a JSON-lines file; " + _DROP
_PRECISION = ("the export fixes the precision (4-bit/INT8 weights, fp32 activations: 'zoodip export --recipe'); "
              + _DROP)
_ADAM = "ZO-Adam keeps the paper's betas (0.9, 0.999) and eps 1e-3, without weight decay; " + _DROP

# diffusers' examples/textual_inversion/textual_inversion.py flag (underscore spelling) -> why not and what to do.
DIFFUSERS_TI_FLAGS: dict[str, str] = {
    "--revision": _EXPORT_FIXES_MODEL,
    "--variant": _EXPORT_FIXES_MODEL,
    "--tokenizer_name": _EXPORT_FIXES_MODEL,
    "--train_batch_size": "a step scores one photo at the n+1 points of its finite differences (--n sets them); " + _DROP,
    "--gradient_accumulation_steps": "there are no gradients to accumulate (forward passes only); --n sets the "
                                     "directions a step averages; " + _DROP,
    "--gradient_checkpointing": _NO_BACKWARD + " (to bound peak memory: --memory-budget MB)",
    "--enable_xformers_memory_efficient_attention": "onnxruntime runs the attention; " + _DROP
                                                    + " (to bound peak memory: --memory-budget MB)",
    "--num_train_epochs": "zoodip counts steps: use --max_train_steps",
    "--repeats": "each step draws one photo at random, so repeating the photos changes nothing; " + _DROP,
    "--scale_lr": "there is no batch or device count to scale by: set --learning_rate itself; " + _DROP,
    "--lr_num_cycles": "the schedules are constant, constant_with_warmup, linear and cosine (one cycle); " + _DROP,
    "--dataloader_num_workers": "the photos are encoded once at the start (--threads sets onnxruntime's threads); "
                                + _DROP,
    "--adam_beta1": _ADAM,
    "--adam_beta2": _ADAM,
    "--adam_weight_decay": _ADAM,
    "--adam_epsilon": _ADAM,
    "--mixed_precision": _PRECISION,
    "--allow_tf32": _PRECISION,
    "--push_to_hub": _NO_UPLOAD,
    "--hub_token": _NO_UPLOAD,
    "--hub_model_id": _NO_UPLOAD,
    "--logging_dir": _PROGRESS,
    "--report_to": _PROGRESS,
    "--local_rank": "zoodip runs in one process on one device; " + _DROP,
    "--validation_epochs": "zoodip counts steps: use --validation_steps",
    "--checkpoints_total_limit": "a run keeps one checkpoint (OUTPUT_DIR/checkpoint.npz, replaced atomically); " + _DROP,
    "--save_as_full_pipeline": "zoodip writes the embedding only (learned_embeds.safetensors, which diffusers' "
                               "load_textual_inversion reads); " + _DROP,
    "--only_save_embeds": "zoodip always saves only the embedding; " + _DROP,
    "--no_safe_serialization": "embeddings are always written as .safetensors; " + _DROP,
}


_EMBEDDINGS = "learned embeddings are loaded with --embedding PATH (a file, or a folder of them; repeatable)"
_KARRAS = "Karras sigmas are samplers here: --sampler dpmpp_2m_karras or dpmpp_2m_sde_karras"
_OWN_TIMESTEPS = "the sampler spaces its own timesteps over --steps (--sampler picks the schedule); drop it"
_NOT_HERE = "A1111's option has no counterpart here; drop it"
_SAMPLER_PARAMETERS = "A1111's sampler parameters keep their defaults here; drop it"
_IMAGES = "images per call: --num-images N (one UNet batch; call again with another --seed for more)"

# A diffusers pipeline argument or A1111 setting (underscore spelling) that ``zoodip generate`` names otherwise or
# lacks -> what to use instead.
GENERATE_FLAGS: dict[str, str] = {
    "--output": "use --out FILE.png",
    "--output_dir": "zoodip generate writes one file, and with --num-images its numbered images beside it: use "
                    "--out DIR/NAME.png",
    "--scheduler": "pick the sampler with --sampler (dpmpp_2m = DPMSolverMultistepScheduler, ddim, euler, "
                   "dpmpp_2m_karras, euler_a = EulerAncestralDiscreteScheduler, lcm = LCMScheduler)",
    "--sampler_name": "use --sampler (dpmpp_2m_karras is A1111's 'DPM++ 2M Karras', dpmpp_2m_sde_karras its "
                      "'DPM++ 2M SDE Karras', euler_a its 'Euler a', lcm its 'LCM')",
    "--cfg_scale": "A1111's CFG scale is --guidance-scale",
    "--denoising_strength": "A1111's denoising strength is --strength (with --image)",
    "--batch_size": _IMAGES,
    "--n_iter": _IMAGES,
    "--batch_count": _IMAGES,
    "--inpaint_full_res": "A1111's 'Inpaint area: Only masked' is --padding-mask-crop PX (its padding; 32 in A1111)",
    "--inpaint_full_res_padding": "A1111's 'Only masked padding' is --padding-mask-crop PX",
    "--inpainting_fill": "the masked part starts from the image under it, noised ('original'); at --strength 1 from "
                         "noise alone ('latent noise'): choose with --strength; drop it",
    "--enable_hr": "A1111's hires fix is --hires-scale X (2: twice the size)",
    "--hr_scale": "A1111's 'Upscale by' is --hires-scale X",
    "--hr_second_pass_steps": "use --hires-steps N (with --hires-scale)",
    "--subseed": "A1111's variation seed is --variation-seed N (with --variation-strength)",
    "--subseed_strength": "A1111's variation strength is --variation-strength S (with --variation-seed)",
    "--lora": "LoRAs are fused into the weights at export: 'zoodip export SRC OUT --lora FILE:SCALE', then --model OUT",
    "--textual_inversion": _EMBEDDINGS,
    "--embeddings": _EMBEDDINGS,
    "--embeddings_dir": _EMBEDDINGS,
    "--embedding_dir": _EMBEDDINGS,
    "--use_karras_sigmas": _KARRAS,
    "--karras": _KARRAS,
    "--schedule_type": _KARRAS + " (the others space their timesteps as the export's scheduler config says)",
    "--scheduler_type": _KARRAS,
    "--timesteps": _OWN_TIMESTEPS,
    "--sigmas": _OWN_TIMESTEPS,
    "--denoising_end": "SDXL's hand-off to a refiner has no place in SD1.x/2.x; drop it",
    "--restore_faces": _NOT_HERE,
    "--tiling": _NOT_HERE,
    "--styles": "A1111's styles are text: write them into --prompt / --negative-prompt",
    "--s_noise": _SAMPLER_PARAMETERS,
    "--s_churn": _SAMPLER_PARAMETERS,
    "--s_tmin": _SAMPLER_PARAMETERS,
    "--s_tmax": _SAMPLER_PARAMETERS,
    "--ensd": "A1111's eta noise seed delta has no counterpart (the noise comes from --seed); drop it",
    "--eta_noise_seed_delta": "A1111's eta noise seed delta has no counterpart (the noise comes from --seed); drop it",
    "--generator": "use --seed N (the noise is NumPy's, the same on every machine; a torch.Generator's differs)",
    "--output_type": "the command writes PNG files (--out FILE.png; --save-latents FILE.npy for the latents); "
                     "output_type='np' is the Python pipeline's",
    "--hr_upscaler": "the hires fix upscales with Lanczos (A1111's 'Lanczos' upscaler; no latent or ESRGAN "
                     "upscalers here); drop it",
}
_SOURCE = ("give the model to export as the first path: zoodip export SOURCE OUT_DIR (SOURCE: a diffusers folder or a "
           "single-file .safetensors checkpoint)")
_OUT_DIR = "give the folder to export into as the second path: zoodip export SOURCE OUT_DIR"
_WEIGHTS = "the weights' precision is --recipe (w4a32, w8a32: 4-bit/INT8 weights) or --precision fp32; drop it"

# A flag of diffusers' conversion scripts or its training scripts' model flag (underscore spelling) that
# ``zoodip export`` takes otherwise -> what to use instead.
EXPORT_FLAGS: dict[str, str] = {
    "--pretrained_model_name_or_path": _SOURCE,
    "--model_path": _SOURCE,
    "--checkpoint_path": _SOURCE,
    "--output_dir": _OUT_DIR,
    "--output_path": _OUT_DIR,
    "--dump_path": _OUT_DIR,
    "--original_config_file": "--config FOLDER takes a diffusers folder of the checkpoint's kind (its configs and "
                              "tokenizer), not the original .yaml",
    "--fp16": _WEIGHTS,
    "--half": _WEIGHTS,
}
_FOREIGN = {"personalize": (DIFFUSERS_TI_FLAGS, "diffusers' textual_inversion.py"),
            "generate": (GENERATE_FLAGS, "diffusers' pipelines or A1111"),
            "export": (EXPORT_FLAGS, "diffusers' scripts")}


def foreign_flag_problem(unknown: Sequence[str], command: str = "personalize") -> str | None:
    """The message for the first of ``unknown`` (argparse's leftovers) that is a flag of the tool ``command``'s users
    come from (diffusers' TI script for personalize; diffusers' pipelines and A1111 for generate; diffusers'
    scripts for export), else None.

    Either spelling counts (``--train-batch-size`` is ``--train_batch_size``), with or without ``=value``.
    """
    table, source = _FOREIGN.get(command, ({}, ""))
    for arg in unknown:
        if not arg.startswith("--"):
            continue
        name = "--" + arg[2:].partition("=")[0].replace("-", "_")
        if name in table:
            flag = arg.partition("=")[0]
            return f"{flag} is a flag of {source}, not of zoodip: {table[name]}"
    return None

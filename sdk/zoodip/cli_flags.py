"""The ``zoodip`` command line's flags: ``personalize``'s (diffusers' names where diffusers has the feature)
and ``generate``'s. ``zoodip.cli`` builds the parser from them and runs the commands."""
from __future__ import annotations

import argparse
import dataclasses
import functools
import re
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

from .config import OPTIMIZERS, VAE_SAMPLING, PersonalizeConfig
from .curvature import DEFAULT_CURVATURE_FRACTION
from .emphasis import PROMPT_WEIGHTINGS
from .errors import Given
from .generate_settings import PASS_THE_IMAGE
from .gradient_estimate import DIRECTIONS
from .lr_schedule import LR_SCHEDULERS
from .model import DEFAULT_SPIN_WAIT
from .prompt_checks import LOAD_ITS_EMBEDDING
from .prompts import LEARNABLE_PROPERTIES
from .sampling import (DEFAULT_GUIDANCE_SCALE, DEFAULT_SAMPLER, DEFAULT_STEPS, DEFAULT_STRENGTH, HIRES_STRENGTH,
                       INPAINT_STRENGTH, SAMPLERS, sampler_named)
from .timesteps import PAPER_T_RANGE
from .zo import ADAM_STATE_DTYPES, PAPER_TAU, PROJECTION_MODES


# personalize's defaults are PersonalizeConfig's: a run started from the command line is the API's run.
_CONFIG = {field.name: field.default for field in dataclasses.fields(PersonalizeConfig)}

# {dest: the flag as written} of the flags that name a file or folder (an OS error on a path is said with its flag),
# filled as the parser is built: the first spelling a dest is given under is the one said.
PATH_FLAGS: dict[str, str] = {}


def names_a_path(action: argparse.Action) -> argparse.Action:
    """``action``, its flag entered in ``PATH_FLAGS`` (a positional's said as ``--`` and its name)."""
    PATH_FLAGS.setdefault(action.dest, action.option_strings[0] if action.option_strings else "--" + action.dest)
    return action


def add_spin_wait_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--spin-wait", choices=("on", "off"), default="on" if DEFAULT_SPIN_WAIT else "off",
                        help="onnxruntime's idle threads poll (on) or sleep (off) between parallel sections; "
                             "polling takes cores other apps need on a shared CPU (benchmarks/threads.py)")


def add_personalize_flags(p: argparse.ArgumentParser) -> None:
    """The flags of ``zoodip personalize`` (diffusers' names where diffusers has the feature)."""
    _add_run_flags(p)
    _add_method_flags(p)
    _add_photo_flags(p)
    _add_output_flags(p)


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    """The model, the photos, the token, the length and the learning rate."""
    names_a_path(p.add_argument("--model", "--pretrained_model_name_or_path", dest="model", required=True,
                                 help="zoodip export folder"))
    names_a_path(p.add_argument("--train_data_dir", required=True, help="folder with 3-10 photos of the concept"))
    names_a_path(p.add_argument("--output_dir", required=True, help="where the embedding, checkpoint and log go"))
    p.add_argument("--placeholder_token", default=_CONFIG["placeholder_token"], help="the new word, e.g. '<my-dog>'")
    p.add_argument("--initializer_token", default=_CONFIG["initializer_token"], help="one existing word close to the concept")
    p.add_argument("--num_vectors", type=int, default=_CONFIG["num_vectors"],
                   help="vectors per token, as diffusers' flag: the token stands for K learned vectors, all starting "
                        "at the initializer word; forward-only training searches K times the dimensions, so it needs "
                        f"more steps for the same progress (default {_CONFIG['num_vectors']})")
    p.add_argument("--learnable_property", choices=LEARNABLE_PROPERTIES, default=_CONFIG["learnable_property"])
    p.add_argument("--resolution", type=int, default=None,
                   help="training resolution (default: the model's). A lower one makes each step cheaper but teaches "
                        "the token what the model draws at that size, which need not carry over to full size "
                        "(benchmarks/README.md, 'Cheaper forwards')")
    p.add_argument("--max_train_steps", type=int, default=_CONFIG["max_train_steps"],
                   help="ZO steps, n+1 UNet forwards each. Forward-only training needs many more forwards than "
                        "backprop: how many, measured per world and budget, is in benchmarks/README.md")
    p.add_argument("--learning_rate", type=float, default=_CONFIG["learning_rate"])
    p.add_argument("--lr_scheduler", choices=LR_SCHEDULERS, default=_CONFIG["lr_scheduler"],
                   help=f"learning-rate schedule, diffusers' formulas (default: {_CONFIG['lr_scheduler']})")
    p.add_argument("--lr_warmup_steps", type=int, default=_CONFIG["lr_warmup_steps"],
                   help="steps rising linearly from 0 to --learning_rate (not with constant, as in diffusers)")
    p.add_argument("--seed", type=int, default=_CONFIG["seed"],
                   help="the run's seed; -1: a random one (A1111's -1), said before the run and recorded in its "
                        "config.json, checkpoint and embedding; --resume with -1 takes the run's own")
    p.add_argument("--clip-skip", "--clip_skip", dest="clip_skip", type=int, default=_CONFIG["clip_skip"], metavar="N",
                   help="train on the text encoder's N-th layer from the end, for models prompted so (diffusers' "
                        "clip_skip; A1111's 'Clip skip' N+1, which A1111 also trains embeddings with); generate "
                        "with the same --clip-skip. 0: its last layer")


def _add_method_flags(p: argparse.ArgumentParser) -> None:
    """The ZO method: directions, perturbation, Subspace Gradient, search subspaces, timesteps, optimizer."""
    p.add_argument("--n", type=int, default=_CONFIG["n"], help="random directions per step (n+1 forwards per step)")
    p.add_argument("--directions", choices=DIRECTIONS, default=_CONFIG["directions"],
                   help="gaussian: n independent random directions (the paper); orthogonal: n orthogonal ones, "
                        "which with --n equal to the searched dimension give its exact finite-difference gradient")
    p.add_argument("--orthogonal-after", type=int, default=None, metavar="FORWARDS",
                   help="two phases: gaussian directions until FORWARDS training forwards are spent, then orthogonal "
                        "frames of --orthogonal-n directions (default: the searched dimension) every step")
    p.add_argument("--orthogonal-n", type=int, default=None, metavar="N",
                   help="directions per step after --orthogonal-after (N+1 forwards a step)")
    p.add_argument("--mu", type=float, default=_CONFIG["mu"], help="finite-difference perturbation")
    p.add_argument("--tau", type=int, default=None,
                   help=f"Subspace Gradient history length (default: the paper's {PAPER_TAU}, or half the embedding width "
                        f"on models narrower than {2 * PAPER_TAU})")
    p.add_argument("--nu", type=float, default=_CONFIG["nu"], help="Subspace Gradient: variance fraction dropped")
    p.add_argument("--no-subspace", action="store_true", help="turn Subspace Gradient off (ablation)")
    p.add_argument("--subspace-mode", choices=PROJECTION_MODES, default=_CONFIG["subspace_mode"],
                   help="history-span: the authors' code (default); principal: project onto the kept components "
                        "only (stalls over long runs, see benchmarks/README.md)")
    p.add_argument("--vocabulary-subspace", type=float, default=None, metavar="FRACTION",
                   help="draw the random directions inside the token table's principal subspace holding FRACTION "
                        "of its variance (not in the paper; default: the whole embedding space; README.md's "
                        "quickstart says where it was measured and what it did)")
    p.add_argument("--curvature-subspace", type=float, default=None, metavar="FRACTION",
                   help="draw the random directions inside the model's curvature subspace holding FRACTION of its "
                        f"stored spectrum (not in the paper; default: {DEFAULT_CURVATURE_FRACTION} where the export has "
                        "one and --vocabulary-subspace is not given)")
    p.add_argument("--no-curvature-subspace", action="store_true",
                   help="search the whole embedding space, as the paper does")
    p.add_argument("--t-range", nargs=2, type=int, default=list(PAPER_T_RANGE), metavar=("T_MIN", "T_MAX"),
                   help="PUTS timestep range [T_MIN, T_MAX); 0 1000 is uniform sampling")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=_CONFIG["optimizer"])
    p.add_argument("--adam-state-dtype", choices=ADAM_STATE_DTYPES, default=_CONFIG["adam_state_dtype"],
                   help="ZO-Adam's moment storage. float16 reproduces the ZOODiP authors' code, whose fp16 second "
                        "moment stays near 0 for small estimates, so their steps are close to lr * m_hat / eps "
                        f"(default: {_CONFIG['adam_state_dtype']})")
    p.add_argument("--clip-estimate", type=float, default=None, metavar="KAPPA",
                   help="clip each gradient estimate's norm to KAPPA (above 1) times the RMS norm of the estimates "
                        "so far, against the rare huge estimates of a heavy-tailed loss (not in the paper; "
                        "default: off)")


def _add_photo_flags(p: argparse.ArgumentParser) -> None:
    """Captions, templates and how the photos are cropped and flipped."""
    names_a_path(p.add_argument("--captions", default=None,
                                 help="JSON {image file name: caption containing the placeholder}"))
    names_a_path(p.add_argument("--template_file", default=None, metavar="PATH",
                   help="A1111 prompt templates, one a line: [name] is the token, [filewords] the .txt caption "
                        "beside each photo (instead of the built-in templates)"))
    p.add_argument("--center_crop", action=argparse.BooleanOptionalAction, default=True,
                   help="crop each photo to its centered square (default); --no-center_crop squashes the whole "
                        "photo into the square, as diffusers does without --center_crop")
    p.add_argument("--flip", action="store_true", help="random horizontal flips (the authors' code and diffusers flip with p=0.5)")
    p.add_argument("--vae-sampling", choices=VAE_SAMPLING, default=_CONFIG["vae_sampling"],
                   help="once: one sample of each photo's VAE posterior, cached (default); per-step: a fresh sample "
                        "each step, as the authors' code and diffusers' script")


def _add_output_flags(p: argparse.ArgumentParser) -> None:
    """Evaluation, checkpoints, snapshots, previews, resources, resuming and progress."""
    p.add_argument("--sequential", action="store_true", help="run the n+1 UNet evaluations one by one (less memory; the default for SD-size UNets, small ones run them as one batch)")
    p.add_argument("--eval-every", type=int, default=_CONFIG["eval_every"], help="steps between evaluation losses (0: never)")
    p.add_argument("--checkpointing_steps", type=int, default=_CONFIG["checkpoint_every"],
                   help="save a checkpoint to --resume from every N steps (0: only at the end)")
    p.add_argument("--save_steps", type=int, default=_CONFIG["save_steps"],
                   help="also save the embedding every N steps as learned_embeds-steps-N.safetensors (0: never)")
    p.add_argument("--a1111", action="store_true",
                   help="also write the embedding as A1111 keeps one: NAME.safetensors (emb_params) beside "
                        "learned_embeds.safetensors, NAME being the token without <>, A1111's trigger word")
    p.add_argument("--validation_prompt", default=None,
                   help="preview prompt (with the token): every --validation_steps a PNG grid validation-steps-N.png "
                        f"is written into --output_dir (each costs 2 x {DEFAULT_STEPS} UNet forwards per image)")
    p.add_argument("--num_validation_images", type=int, default=_CONFIG["num_validation_images"],
                   help=f"images per preview (default {_CONFIG['num_validation_images']}, as diffusers)")
    p.add_argument("--validation_steps", type=int, default=_CONFIG["validation_steps"],
                   help=f"steps between previews (default {_CONFIG['validation_steps']}, as diffusers)")
    p.add_argument("--prompt-weighting", "--prompt_weighting", dest="prompt_weighting", choices=PROMPT_WEIGHTINGS,
                   default=_CONFIG["validation_prompt_weighting"], help="how --validation_prompt is read, as generate's flag: none (plain "
                   "text, as diffusers) or a1111 (A1111's emphasis, long prompts, prompt editing and AND)")
    p.add_argument("--early-stop-patience", type=int, default=_CONFIG["early_stop_patience"], help="stop after this many evaluations without improvement (0: never)")
    p.add_argument("--threads", type=int, default=_CONFIG["threads"], help="onnxruntime threads (0: all cores)")
    add_spin_wait_flag(p)
    p.add_argument("--memory-budget", type=int, default=None, metavar="MB", help="low-memory mode within MB (implies --sequential); "
                   "--validation_prompt previews are generated within it too. It counts the weights and the largest "
                   "working sets (the steps' UNet and text encoder at --resolution, the photos' encoding), refusing a "
                   "budget below them up front; the process itself (Python, NumPy, onnxruntime) comes on top")
    p.add_argument("--resume", action="store_true", help="continue the run in --output_dir from its checkpoint")
    p.add_argument("--resume_from_checkpoint", default=None, metavar="latest",
                   help="diffusers' spelling of --resume; zoodip keeps one checkpoint per run, so only 'latest'")
    names_a_path(p.add_argument("--progress-jsonl", default=None, metavar="PATH",
                                 help="also stream progress as JSON lines ('-' = stdout)"))
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_generate_flags(g: argparse.ArgumentParser) -> None:
    """The flags of ``zoodip generate`` (diffusers' pipeline argument names are accepted too)."""
    names_a_path(g.add_argument("--model", "--pretrained_model_name_or_path", dest="model", required=True,
                                help="zoodip export folder"))
    g.add_argument("--prompt", default=None, help="the prompt (required, unless --parameters-from gives it)")
    names_a_path(g.add_argument("--parameters-from", default=None, metavar="IMAGE|TXT",
                   help="make an image again from the generation parameters IMAGE holds (A1111's PNG Info -> "
                        "Send to txt2img), or a .txt file of that text: its prompts and settings, each flag given "
                        "here taking their place"))
    g.add_argument("--negative-prompt", default="")
    names_a_path(g.add_argument("--embedding", action="append", metavar="PATH[:TOKEN]",
                   help="learned embedding file (diffusers or A1111 .safetensors), optionally renamed to "
                        "TOKEN; an A1111 file answers to its file name, as in A1111; or a folder of them (every file "
                        "loaded, as A1111's embeddings folder); repeatable"))
    # diffusers' pipeline arguments are accepted too: num_inference_steps, num_images_per_prompt.
    _add_sampling_flags(g)
    g.add_argument("--prompt-weighting", choices=PROMPT_WEIGHTINGS, default=PROMPT_WEIGHTINGS[0],
                   help="none: brackets are plain text, as in diffusers (77 tokens); a1111: AUTOMATIC1111's emphasis, "
                        "(words) x1.1, [words] /1.1, (words:1.3) x1.3, \\( for a literal bracket, long prompts in "
                        "75-token chunks (BREAK starts one), prompt editing: [from:to:when] (when: a step, or a "
                        "fraction such as 0.5), [a|b] alternating each step, and AND (one guidance term per part, "
                        "'a cat AND a dog :0.8')")
    g.add_argument("--clip-skip", type=int, default=0, metavar="N",
                   help="condition on the text encoder's N-th layer from the end (diffusers' clip_skip; A1111's "
                        "'Clip skip' N+1); 0: its last layer")
    g.add_argument("--seed", type=int, default=0, help="the initial noise's seed; -1: a random one, said in the "
                   "output line so that the image can be made again (A1111's -1)")
    g.add_argument("--variation-seed", type=int, default=None, metavar="N",
                   help="A1111's variation seed: this seed's noise mixed into --seed's (with --variation-strength), "
                        "the same layout with other details; -1: a random one, said in the output line")
    g.add_argument("--variation-strength", type=float, default=0.0, metavar="S",
                   help="how much of --variation-seed's noise, from 0 (--seed's image) to 1 (--variation-seed's)")
    _add_image_flags(g)
    g.add_argument("--height", type=int, default=None)
    g.add_argument("--width", type=int, default=None)
    g.add_argument("--num-images", "--num-images-per-prompt", dest="num_images", type=int, default=1, help="images per call; more than one: --out is their grid "
                   "and each is also written as OUT-1.png, OUT-2.png, ...")
    g.add_argument("--threads", type=int, default=0, help="onnxruntime threads (0: all cores)")
    add_spin_wait_flag(g)
    g.add_argument("--memory-budget", type=int, default=None, metavar="MB",
                   help="generate within MB: one UNet pass at a time, one graph in memory at a time, and the VAE "
                        "decoding in overlapping tiles where the whole image would not fit (the UNet's weights and "
                        "activations and the decode's working set are counted; the process itself comes on top)")
    names_a_path(g.add_argument("--latents", default=None, metavar="FILE.npy",
                   help="initial latents [images, 4, height/8, width/8] instead of the seed's (diffusers' latents=): "
                        "the same latents give diffusers' images (euler_a, lcm and the SDE samplers also draw noise "
                        "every step, from --seed)"))
    names_a_path(g.add_argument("--save-latents", default=None, metavar="FILE.npy",
                                 help="write the initial latents used"))
    names_a_path(g.add_argument("--out", default="out.png", help="the image file (.png, .jpg, .webp) to write; one that exists is "
                   "replaced (as diffusers' save), never --image or --mask"))
    g.add_argument("--no-metadata", action="store_true",
                   help="leave the prompt and settings out of the image (written by default as A1111 writes them: "
                        "a PNG's text, a JPEG's or WebP's EXIF comment, where A1111's PNG Info and 'zoodip info "
                        "IMAGE' read them)")


def _add_sampling_flags(g: argparse.ArgumentParser) -> None:
    """The steps, the guidance and the sampler."""
    g.add_argument("--steps", "--num-inference-steps", dest="steps", type=int, default=DEFAULT_STEPS)
    g.add_argument("--guidance-scale", type=float, default=DEFAULT_GUIDANCE_SCALE)
    g.add_argument("--guidance-rescale", type=float, default=0.0, metavar="PHI",
                   help="rescale the guided prediction toward the prompt's spread, in [0, 1] (diffusers' "
                        "guidance_rescale; 0.7 is its suggestion for v-prediction models); 0: off")
    g.add_argument("--sampler", type=sampler_named, choices=SAMPLERS, default=DEFAULT_SAMPLER,
                   help="the sampler (A1111's names are read too: 'Euler a', 'DPM++ 2M Karras', ...)")
    g.add_argument("--eta", type=float, default=0.0,
                   help="with --sampler ddim: the noise each step adds back, from 0 (deterministic) to 1 (as DDPM) "
                        "(diffusers' eta, A1111's 'Eta DDIM')")


def _add_image_flags(g: argparse.ArgumentParser) -> None:
    """Image-to-image, inpainting and the hires fix."""
    names_a_path(g.add_argument("--image", default=None, metavar="PATH",
                   help="image-to-image (diffusers' img2img): start from this picture, resized to --width/--height "
                        "(default: its own aspect, the longer side the model's native size)"))
    names_a_path(g.add_argument("--mask", "--mask-image", dest="mask", default=None, metavar="PATH",
                   help="with --image: inpainting (diffusers' mask_image): redraw the white part of this picture, "
                        "keep the black part (any aspect ratio is stretched to the image's)"))
    g.add_argument("--mask-blur", type=float, default=0.0, metavar="PX",
                   help="with --mask: blur the mask by PX pixels (A1111's 'Mask blur', 4 there): a soft seam where "
                        "the result is pasted back (--paste-back, --padding-mask-crop)")
    g.add_argument("--padding-mask-crop", type=int, default=None, metavar="PX",
                   help="with --mask: redraw only the box around the white part, PX pixels wider (diffusers' "
                        "padding_mask_crop; A1111's 'Only masked', padding 32), at --width/--height (default: the "
                        "model's native size), and paste it back into the whole image, which keeps its size")
    g.add_argument("--paste-back", action=argparse.BooleanOptionalAction, default=False,
                   help="with --mask: keep the original's pixels where the mask is black (as A1111 does), not their "
                        "trip through the VAE (--no-paste-back: an image's parameters that ask for it, not)")
    g.add_argument("--strength", type=float, default=None,
                   help=f"with --image: how much of it is redrawn, in (0, 1] (default {DEFAULT_STRENGTH}, with --mask "
                        f"{INPAINT_STRENGTH}, as diffusers)")
    g.add_argument("--hires-scale", type=float, default=None, metavar="X",
                   help="A1111's hires fix: generate at --width/--height, upscale X times, and redraw it there by "
                        "image-to-image (A1111's 'Upscale by', 2 there)")
    g.add_argument("--hires-strength", type=float, default=None, metavar="S",
                   help=f"with --hires-scale: how much the second pass redraws, in (0, 1] (default {HIRES_STRENGTH}, "
                        "A1111's denoising strength)")
    g.add_argument("--hires-steps", type=int, default=None, metavar="N",
                   help="with --hires-scale: the second pass's steps, of which the last S x N run (default: --steps)")


def refuse_empty_paths(args: argparse.Namespace, dests: tuple[str, ...]) -> None:
    """An optional path flag given as "" (an unset shell variable) refused in one line (``validation.optional_path``,
    the API's rule): it was read as not given (--latents, --save-latents), or said as " does not exist"
    (--parameters-from)."""
    from .validation import optional_path

    for dest in dests:
        optional_path(PATH_FLAGS[dest], getattr(args, dest))


def checked_generate_flags(args: argparse.Namespace) -> tuple[Path, list[Path]]:
    """generate's flags that cannot go together refused, before any work; the output file and, for several images,
    the numbered files beside it."""
    from .errors import ZoodipError
    from .generate_settings import check_image_only, check_num_images
    from .images import numbered_paths
    from .paths import check_output_file, is_same_file

    out = check_output_file(args.out, "--out", (".png", ".jpg", ".jpeg", ".webp"))
    if args.save_latents:
        check_output_file(args.save_latents, "--save-latents", (".npy",))
    check_num_images(args.num_images)
    check_image_only(args.image, args.strength, args.mask)
    for flag, value in (("--hires-strength", args.hires_strength), ("--hires-steps", args.hires_steps)):
        if value is not None and args.hires_scale is None:
            raise ZoodipError(f"{flag} sets the hires fix's second pass: add --hires-scale X (2: twice the size), or "
                              f"drop {flag}")
    if args.hires_scale is not None and args.image is not None:
        raise ZoodipError("--hires-scale is for text-to-image (A1111 has no hires fix for img2img): drop --image, or "
                          "drop --hires-scale and give the size with --width/--height")
    if args.save_latents and args.hires_scale is not None and args.variation_seed is not None:
        raise ZoodipError("--save-latents holds the first pass's noise, and the hires fix's second pass mixes in "
                          "--variation-seed + i too, which --latents cannot give back: drop --save-latents (--seed "
                          "and --variation-seed make the image again)")
    if args.image is not None and (args.latents or args.save_latents):
        raise ZoodipError("--latents and --save-latents are for text-to-image; with --image the noise follows the "
                          "image's size: drop them (the API's generate(image=..., latents=...) takes both)")
    # Several images: each in its own file beside the grid (out-1.png ...), all checked before any work.
    singles = numbered_paths(out, args.num_images) if args.num_images > 1 else []
    for path in singles:
        check_output_file(path, "--out")
    for flag, source in (("--image", args.image), ("--mask", args.mask), ("--parameters-from", args.parameters_from)):
        if source and any(is_same_file(source, path) for path in (out, *singles)):
            raise ZoodipError(f"--out would write over {flag} {source}: name another file (--out replaces a file "
                              "that exists)")
    if args.threads < 0:
        raise ZoodipError(f"--threads must be an integer >= 0 (0: all cores), got {args.threads}")
    return out, singles


# The SDK's messages name its settings as the API spells them (curvature_fraction, resume=True); the command line
# says them as its flags (in_flag_words), from the parsers themselves (one place for the flag <-> API name mapping).
# The rules, all of them:
# - The user's own text stays as written: the parts an error gives as the user's (errors.Given: a message that names
#   a path the user gave passes it so, and it is never read as a setting, whatever flags were given), what a
#   message quotes ('a prompt', "a file's text"; a quote opens only after a space or bracket, not the apostrophe of
#   "export's" nor a name='value' of the API's own words) and, in a message that passed its paths inside its text,
#   the paths the command line gave, as words of their own ('seed is a folder' for `zoodip info seed`).
# - The API's calls whose counterpart is a flag of another shape are said as it (_API_CALL_FLAGS).
# - A setting=value that a switch of its own gives is said as the switch (resume=True: --resume; _SETTING_FLAGS).
# - An API name as a word of its own (not a piece of a path or a file name) is said as its flag, with its value
#   after a space (seed=5: --seed 5): a name with an underscore, and the method's symbols (_SYMBOL_NAMES, words of no
#   sentence: "a lower learning_rate or mu"), anywhere; a name that is an English word too (_WORD_NAMES: "image
#   folder", "steps") only where it opens the message ("steps must be ..."), follows "drop " ("or drop strength")
#   or is given a value (steps=4). A call's
#   keyword without a value (image=..., negative_prompt=) stays as the API's own advice shows it.
# - The word after a flag is its value, the user's: 'output_dir output_dir is a file' is '--output_dir output_dir'.
# The API's names whose flag is spelled otherwise (config_from_args passes these flags to these fields).
_DEST_OF_API_NAME = {"export_dir": "model", "images": "train_data_dir", "curvature_fraction": "curvature_subspace",
                     "vocabulary_variance": "vocabulary_subspace", "checkpoint_every": "checkpointing_steps",
                     "memory_budget_mb": "memory_budget", "validation_prompt_weighting": "prompt_weighting"}
_SETTING_FLAGS = {"curvature_fraction=0": "--no-curvature-subspace", "resume=True": "--resume", "a1111=True": "--a1111",
                  **{f"subspace={on}": "--no-subspace" for on in (True, False)},
                  **{f"batched={on}": "--sequential" for on in (True, False, None)}}
_SYMBOL_NAMES = ("mu", "nu", "tau")
_WORD_NAMES = ("width", "height", "resolution", "steps", "seed", "strength", "n", "threads", "eta", "directions",
               "optimizer", "images", "captions")
_API_CALL_FLAGS = {"load_textual_inversion(PATH, token=TOKEN)": "--embedding PATH:TOKEN",
                   "the embedding spec": "--embedding", LOAD_ITS_EMBEDDING: "pass its file with --embedding PATH",
                   PASS_THE_IMAGE: "add --image PATH"}
_QUOTED = r"(?<![\w=])(?:'[^']*'|\"[^\"]*\")(?!\w)"
# A flag the message says already (--out), or an API name with maybe its value (name=4, name='a1111').
_NAME_OR_FLAG = re.compile(r"(?<![\w/\\.'\"-])(?:--[a-z0-9][\w-]*|([a-z][a-z0-9]*(?:_[a-z0-9]+)*)"
                           r"(?:=('[^']*'|[^\s,;:)]+))?)(?![\w/\\=-]|\.\w)")
_VALUE = re.compile(r" [^\s,;:)]+")


@functools.cache
def api_name_flags() -> dict[str, str]:
    """{the API's name of a setting: the flag that sets it}: personalize's and generate's flags (``parser_flags``),
    then the API's fields that are named otherwise."""
    flags: dict[str, str] = {}
    for add in (add_personalize_flags, add_generate_flags):  # (personalize's spelling first, as PATH_FLAGS)
        parser = argparse.ArgumentParser(add_help=False)
        add(parser)
        flags = parser_flags(parser) | flags
    return flags | {name: flags[dest] for name, dest in _DEST_OF_API_NAME.items()}


def parser_flags(parser: argparse.ArgumentParser) -> dict[str, str]:
    """{a name: the flag} of ``parser``'s flags, each spelling read as a name (--mask-image: mask_image, said --mask,
    as the help lists it first), and each flag's destination."""
    flags: dict[str, str] = {}
    for action in parser._actions:
        if not action.option_strings or action.dest == "help":
            continue
        for spelling in action.option_strings:  # an alias said as the flag's first spelling (mask_image: --mask)
            said = spelling if spelling.startswith("--no-") else action.option_strings[0]
            flags.setdefault(spelling.lstrip("-").replace("-", "_"), said)
        flags.setdefault(action.dest, action.option_strings[0])
    return flags


def in_flag_words(message: str | Sequence[str], paths: Collection[str] = (),
                  flags: Mapping[str, str] | None = None) -> str:
    """An SDK message in the words of the command line: ``curvature_fraction 0.9: ... give curvature_fraction=0``
    -> ``--curvature-subspace 0.9: ... give --no-curvature-subspace``. ``message``: a string, or a ZoodipError's
    ``parts``, whose ``Given`` ones (the user's words) are said as written. ``paths``: those the command line gave,
    said as given ("steps is a folder" names the user's path, not a setting). ``flags``: another command's
    (``parser_flags``; by default personalize's and generate's). The rules: the comment above."""
    forms = sorted({form for path in paths if path for form in (path, str(Path(path)))}, key=len, reverse=True)
    given = "".join(rf"|(?<!\S){re.escape(form)}(?=$|[\s:,])" for form in forms)
    flags = api_name_flags() if flags is None else flags
    parts = (message,) if isinstance(message, str) else tuple(message)
    said = []
    for number, part in enumerate(parts):
        if isinstance(part, Given):
            said.append(part)
            continue
        pieces = re.split(f"({_QUOTED}{given})", part)  # (odd places: the user's text)
        said += [piece if i % 2 else _said_in_flag_words(piece, i == 0 and number == 0, flags)
                 for i, piece in enumerate(pieces)]
    return "".join(said) if isinstance(message, str) else " ".join("".join(said).split())  # (as str(ZoodipError))


def _said_in_flag_words(piece: str, opening: bool, flags: Mapping[str, str]) -> str:
    """A piece of a message with none of the user's text, in flag words; ``opening``: it opens the message."""
    for call, flag in _API_CALL_FLAGS.items():
        piece = piece.replace(call, flag)
    said, end, value_end = [], 0, 0
    for match in _NAME_OR_FLAG.finditer(piece):
        if match.start() < value_end:  # a flag's value
            continue
        word = _as_flag(match, opening and match.start() == 0 or piece.endswith("drop ", 0, match.start()), flags)
        said.append(piece[end:match.start()] + word)
        end = match.end()
        if word.startswith("--") and match.group(2) is None:
            value = _VALUE.match(piece, end)
            value_end = value.end() if value else end
    return "".join(said) + piece[end:]


def _as_flag(match: re.Match[str], setting: bool, flags: Mapping[str, str]) -> str:
    """A flag or an API name (with maybe its value) as the command line says it; as written where it is no flag's.
    ``setting``: where an English-word name is a setting's (it opens the message, or follows "drop ")."""
    name, value = match.group(1, 2)
    if name is None or value == "...":
        return match.group(0)
    if match.group(0) in _SETTING_FLAGS:
        return _SETTING_FLAGS[match.group(0)]
    if name not in flags or not ("_" in name or name in _SYMBOL_NAMES or value is not None
                                 or setting and name in _WORD_NAMES):
        return match.group(0)
    return flags[name] if value is None else f"{flags[name]} {value.strip(chr(39))}"

"""``zoodip`` command line: a thin shell over the SDK.

    zoodip export SRC_DIR OUT_DIR            (or --tiny)   diffusers folder -> quantized ONNX export (4-bit/INT8 weights)
    zoodip personalize --model EXPORT --train_data_dir PHOTOS --output_dir OUT --placeholder_token "<my-dog>" ...
    zoodip generate --model EXPORT --embedding OUT/learned_embeds.safetensors --prompt "a photo of <my-dog>"
    zoodip verify EXPORT                                      check every file of an export against its sha256

The demo on the built-in model is the repository's (``make demo``, reference/demo.py): it needs the
reference world, which the installed SDK does not hold.

Every user error prints one line ``error: ...`` and exits with status 2; a warning is one line
``warning: ...``. Output locations are checked before any work starts.
"""
from __future__ import annotations

import argparse
import os
import secrets
import signal
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

# NumPy's own linear algebra here is small (768-wide vectors; Subspace Gradient's PCA of a 128 x 768
# history every 128 steps), and OpenBLAS's thread pool, competing with onnxruntime's threads on a busy
# CPU, makes that PCA slower and sometimes stalls it (benchmarks/README.md, "NumPy's BLAS threads"). One
# BLAS thread unless the user set it; this must happen before NumPy is first imported (the imports below).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from .console import (GracefulStop, OneLineParser, ProgressBar, SamplingBar, readable_output,  # noqa: E402
                      interrupt_on_termination, one_line_warning, print_error, print_interrupted, said_as_given,
                      status_for_signal)
from .cli_flags import (PATH_FLAGS, add_generate_flags, add_personalize_flags, api_name_flags,  # noqa: E402
                        in_flag_words, names_a_path)
from . import __version__  # noqa: E402
from .errors import Given, ZoodipError  # noqa: E402
from .foreign_flags import foreign_flag_problem  # noqa: E402
from .paths import os_error_line, remove_stale_temp_files  # noqa: E402
from .progress import duration  # noqa: E402
from .progress_log import LazyJsonlLog, silence_stdout  # noqa: E402

if TYPE_CHECKING:
    import numpy as np


def _curvature_fraction(args: argparse.Namespace) -> float | None:
    """None (automatic), the given fraction, or 0 (off) for --no-curvature-subspace."""
    if args.no_curvature_subspace:
        if args.curvature_subspace is not None:
            raise ZoodipError("--curvature-subspace and --no-curvature-subspace contradict each other: use one")
        return 0.0
    if args.curvature_subspace is not None and not args.curvature_subspace > 0:  # the API's 0 is the flag's --no-...
        raise ZoodipError(f"--curvature-subspace must be a fraction in (0, 1], got {args.curvature_subspace:g}: "
                          "--no-curvature-subspace turns the subspace off")
    return args.curvature_subspace


def config_from_args(args: argparse.Namespace):
    from .trainer import PersonalizeConfig

    return PersonalizeConfig(
        export_dir=args.model, images=args.train_data_dir, output_dir=args.output_dir,  # (strings: "" is said)
        placeholder_token=args.placeholder_token, initializer_token=args.initializer_token, num_vectors=args.num_vectors,
        learnable_property=args.learnable_property, resolution=args.resolution,
        max_train_steps=args.max_train_steps, learning_rate=args.learning_rate, seed=args.seed,
        n=args.n, directions=args.directions, orthogonal_after=args.orthogonal_after, orthogonal_n=args.orthogonal_n,
        mu=args.mu, tau=args.tau, nu=args.nu, subspace=not args.no_subspace,
        subspace_mode=args.subspace_mode, vocabulary_variance=args.vocabulary_subspace,
        curvature_fraction=_curvature_fraction(args), t_range=tuple(args.t_range), optimizer=args.optimizer,
        adam_state_dtype=args.adam_state_dtype, clip_estimate=args.clip_estimate,
        captions=args.captions, flip=args.flip, vae_sampling=args.vae_sampling,
        template_file=args.template_file, center_crop=args.center_crop, batched=False if args.sequential else None,
        eval_every=args.eval_every, checkpoint_every=args.checkpointing_steps, save_steps=args.save_steps, a1111=args.a1111,
        lr_scheduler=args.lr_scheduler, lr_warmup_steps=args.lr_warmup_steps,
        validation_prompt=args.validation_prompt, num_validation_images=args.num_validation_images,
        validation_steps=args.validation_steps, validation_prompt_weighting=args.prompt_weighting,
        early_stop_patience=args.early_stop_patience, threads=args.threads, spin_wait=args.spin_wait == "on",
        memory_budget_mb=args.memory_budget, clip_skip=args.clip_skip,
    )


def _summary(result) -> str:
    """One line: status, steps, wall time, forwards, the evaluation loss's change (rounded)."""
    # The steps and forwards are the whole run's, the time this session's: a resumed run says its own steps apart.
    session = result.steps - result.start_step
    if not result.start_step:
        line = f"{result.status}: {result.steps} steps in {duration(result.wall_s)}"
    elif session:
        line = f"{result.status}: {result.steps} steps ({session} in this session, in {duration(result.wall_s)})"
    else:
        line = f"{result.status}: {result.steps} steps, all before this session" + (
            " (the run had finished)" if result.status == "done" else "")
    line += f", {result.forwards} training forwards"
    if result.initial_eval_loss is not None and result.final_eval_loss is not None:
        first, last = result.initial_eval_loss, result.final_eval_loss
        change = f" ({(last - first) / first:+.1%})" if first else ""
        line += f"; eval loss {first:#.4g} -> {last:#.4g}{change}"
    else:
        line += "; no evaluation loss (--eval-every 0)"
    return line


def _resume_requested(args: argparse.Namespace) -> bool:
    """--resume, or diffusers' --resume_from_checkpoint latest (a run folder holds one checkpoint)."""
    given = args.resume_from_checkpoint
    if given is not None and given != "latest":
        raise ZoodipError(f"--resume_from_checkpoint takes 'latest', got {given!r}: zoodip keeps one checkpoint "
                          "per --output_dir; pass that folder and --resume_from_checkpoint latest (or --resume)")
    return bool(args.resume or given == "latest")


def _check_seed_flag(flag: str, value: int | None) -> None:
    """A seed flag's value: >= 0, or -1 (A1111's "random"); one below that is refused saying both."""
    if value is not None and value < -1:
        raise ZoodipError(f"{flag} must be an integer >= 0, or -1 for a random one, got {value}")


def _run_seed(args: argparse.Namespace, resume: bool) -> str:
    """--seed -1, A1111's "random", made the run's seed: on --resume the one its config.json recorded (the same
    flags resume it), else a random one; the line that says it ("" for a seed given). The seed is recorded as any
    other: config.json, the checkpoint's fingerprint and the embedding's settings."""
    from .json_text import parse_json
    from .run_folder import CONFIG_NAME

    _check_seed_flag("--seed", args.seed)
    if args.seed != -1:
        return ""
    try:
        recorded = parse_json((Path(args.output_dir) / CONFIG_NAME).read_bytes()).get("seed") if resume else None
    except (OSError, ValueError, AttributeError):  # none, or not a run's: the checkpoint's checks say so
        recorded = None
    if isinstance(recorded, int) and not isinstance(recorded, bool) and recorded >= 0:
        args.seed = recorded
        return f"seed: {recorded} (--seed -1 on --resume: the run's own, from its {CONFIG_NAME})"
    args.seed = secrets.randbelow(2**32)
    return f"seed: {args.seed} (drawn for --seed -1: --seed {args.seed} makes this run again)"


def cmd_personalize(args: argparse.Namespace) -> int:
    from .lr_schedule import LENGTH_DEPENDENT
    from .paths import check_output_dir
    from .trainer import personalize

    resume = _resume_requested(args)
    seed_line = _run_seed(args, resume)
    config = config_from_args(args)
    config.validate()  # a bad setting is one line on stderr, before any progress bar is drawn
    check_output_dir(config.output_dir)
    out = sys.stderr if args.progress_jsonl == "-" else sys.stdout
    if seed_line:
        print(seed_line, file=out, flush=True)
    jsonl = LazyJsonlLog(args.progress_jsonl, config) if args.progress_jsonl is not None else None  # ("": said)
    bar = ProgressBar(config.max_train_steps, enabled=not args.no_progress,
                      preview_every=config.validation_steps if config.validation_prompt else 0)
    callbacks = [bar] + ([jsonl] if jsonl else [])
    try:
        with GracefulStop() as stop:
            if jsonl is not None:  # its reader left (or its file is full): saved and stopped as by the pipe's signal
                jsonl.on_stop = lambda: stop.request(signal.SIGPIPE)
            result = personalize(config, lambda p: [cb(p) for cb in callbacks], resume=resume,
                                 cancel_event=stop.event)
    except BaseException:
        if jsonl is not None:
            jsonl.close()
            jsonl.discard_setup_only()
        raise
    finally:
        bar.close()
        if jsonl is not None:
            jsonl.close()
    print(_summary(result), file=out)
    if result.status == "done" and result.trend is not None:
        print(in_flag_words(result.trend.describe(resumable=config.lr_scheduler not in LENGTH_DEPENDENT,
                                                  previews=bool(config.validation_prompt))), file=out)
    if result.embedding_path:
        print(f"embedding: {result.embedding_path} (its token: {config.placeholder_token})", file=out)
    if config.a1111 and result.status != "cancelled":
        from .embeddings import a1111_file_name

        print(f"A1111 embedding: {config.output_dir / a1111_file_name(config.placeholder_token)}", file=out)
    if jsonl is not None and jsonl.failure:
        raise ZoodipError(f"{jsonl.failure} and resume with --resume (the run stopped at step {result.steps}, its "
                          "checkpoint saved)")
    if result.status == "cancelled":
        kept = f"embedding so far in {result.embedding_path}, " if result.embedding_path else ""
        print(f"stopped at step {result.steps} ({kept}checkpoint saved): resume with --resume and the same flags",
              file=sys.stderr)
        return stop.exit_code
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from .cli_flags import checked_generate_flags, refuse_empty_paths
    from .embeddings import load_embeddings
    from .from_parameters import parameter_notes
    from .hires import planned_size
    from .images import check_encodable, grid_size, image_grid, save_images
    from .infotext import infotext, unreadable_prompt_problem, used_embedding_hashes
    from .latents_file import write_latents
    from .model import ExportedModel, RuntimeOptions

    refuse_empty_paths(args, ("parameters_from", "latents", "save_latents"))
    if args.parameters_from is not None:
        image_parameters = _apply_image_parameters(args)
    elif args.prompt is None:
        raise ZoodipError("--prompt is required (or --parameters-from IMAGE: make an image again from its parameters)")
    out, singles = checked_generate_flags(args)
    if not args.no_metadata and (problem := unreadable_prompt_problem(args.prompt, args.negative_prompt)):
        warnings.warn(problem, stacklevel=1)
    _remove_killed_calls_temp_files([out, *singles, *([Path(args.save_latents)] if args.save_latents else [])])
    model = ExportedModel.load(args.model, RuntimeOptions(threads=args.threads, spin_wait=args.spin_wait == "on",
                                                          memory_budget_mb=args.memory_budget))
    size = None if args.image is not None else planned_size(model, args.width, args.height, args.hires_scale)
    if size is not None:  # known before the work (with --image it follows the photo's)
        check_encodable(out, size if args.num_images == 1 else grid_size(args.num_images, 1, size), "--out")
    hashes: dict[str, str] = {}
    added, groups = load_embeddings(args.embedding or [], model.tokenizer, model.hidden_size, model.identity,
                                    args.clip_skip, hashes=hashes)
    if args.parameters_from is not None:
        for note in parameter_notes(image_parameters, model, hashes, image_given=args.image is not None,
                                    mask_given=args.mask is not None, latents_given=args.latents is not None):
            warnings.warn(f"--parameters-from {args.parameters_from}: {note}", stacklevel=1)
    _check_seed_flag("--seed", args.seed)
    _check_seed_flag("--variation-seed", args.variation_seed)
    drawn = [flag for flag in ("seed", "variation_seed") if getattr(args, flag) == -1]  # A1111's "random": said below
    for flag in drawn:
        setattr(args, flag, secrets.randbelow(2**32))
    latents, settings = _generate_latents(args, model), _generate_settings(args)
    bar = SamplingBar()
    try:
        with interrupt_on_termination():
            given = latents if args.latents else None
            images = _generate_images(args.prompt, settings, model, added, groups, given, bar)
    finally:
        bar.close()
    used = {} if args.no_metadata else used_embedding_hashes(model, args.prompt, settings, added, hashes)
    texts = None if args.no_metadata else [infotext(args.prompt, dict(settings, latents=args.latents), im.size, model, i,
                                                    used) for i, im in enumerate(images)]
    # All of them or none (the latents too): a full disk at the third image leaves the files that were there; a
    # refused, stopped or failed call writes none; --out is renamed into place last (new: the set is). The grid: the
    # first's text.
    save_images([*zip(images, singles), (images[0] if len(images) == 1 else image_grid([images]), out)],
                "--out", texts=texts and [*texts[:len(singles)], texts[0]],
                also=[("--save-latents", args.save_latents, lambda handle: write_latents(handle, latents))]
                if args.save_latents else ())
    print(f"wrote {out}" + (f" (grid) and {singles[0].name} ... {singles[-1].name}" if singles else "")
          + "".join(f" (--{flag.replace('_', '-')} {getattr(args, flag)})" for flag in drawn))
    return 0


def _remove_killed_calls_temp_files(outputs: list[Path]) -> None:
    """The temp files a killed generate left beside these outputs (no lock keeps writers out: only a dead writer's,
    ``paths.remove_stale_temp_files``), each folder listed once."""
    by_folder: dict[Path, list[str]] = {}
    for path in outputs:
        by_folder.setdefault(path.parent, []).append(path.name)
    for folder, names in by_folder.items():
        remove_stale_temp_files(folder, tuple(names), writer_gone=True)


def _apply_image_parameters(args: argparse.Namespace) -> Any:
    """--parameters-from IMAGE: its prompts and settings into ``args``, where no flag gave them; what it names but
    cannot give is refused unless a flag gives it. Image-to-image's and inpainting's settings apply with --image
    (and --mask)."""
    from .from_parameters import ignored_settings, image_parameters

    parameters = image_parameters(args.parameters_from)
    given = getattr(args, "given", set())
    # A variation seed without a strength (or at 0, the flag's or else the image's) changes nothing: left out
    strength = args.variation_strength if "variation_strength" in given else parameters.settings.get("variation_strength")
    sampler = args.sampler if "sampler" in given else parameters.settings.get("sampler", args.sampler)
    skipped = {*ignored_settings(image_given=args.image is not None, mask_given=args.mask is not None,
                                 latents_given=args.latents is not None, sampler=sampler),
               *(("variation_seed", "variation_strength") if not (strength or "variation_strength" in parameters.problems)
                 else ())}  # (a strength that does not read is said below)
    args.from_image = set()
    for name, value in [("prompt", parameters.prompt), ("negative_prompt", parameters.negative_prompt),
                        *parameters.settings.items()]:
        if name not in given and name not in skipped:
            setattr(args, name, value)
            args.from_image.add(name)
    for name, problem in parameters.problems.items():
        if name not in given and name not in skipped:
            raise ZoodipError(f"--parameters-from {args.parameters_from}: {problem}")
    return parameters


def _generate_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The flags as generate()'s (or the hires fix's) settings, which the images' parameters also record."""
    settings = dict(negative_prompt=args.negative_prompt, steps=args.steps, guidance_scale=args.guidance_scale,
                    sampler=args.sampler, seed=args.seed, height=args.height, width=args.width,
                    num_images=args.num_images, prompt_weighting=args.prompt_weighting, clip_skip=args.clip_skip,
                    guidance_rescale=args.guidance_rescale, mask_blur=args.mask_blur,
                    padding_mask_crop=args.padding_mask_crop, paste_back=args.paste_back,  # (without --mask: refused)
                    variation_seed=args.variation_seed, variation_strength=args.variation_strength, eta=args.eta)
    if args.hires_scale is None:
        return dict(settings, image=args.image, strength=args.strength, mask_image=args.mask)
    hires = {k: v for k, v in (("hires_strength", args.hires_strength), ("hires_steps", args.hires_steps))
             if v is not None}
    return dict(settings, hires_scale=args.hires_scale, **hires)


def _generate_images(prompt: str, settings: dict[str, Any], model, added, groups, latents, bar) -> list:
    from .generate import generate
    from .hires import generate_hires

    run = generate_hires if "hires_scale" in settings else generate
    return run(model, prompt, added_embeddings=added, token_groups=groups, latents=latents, callback=bar, **settings)


def _generate_latents(args: argparse.Namespace, model) -> np.ndarray | None:
    """--latents FILE read (checked against this call's shape), or the seed's where --save-latents will write them
    (what generate draws itself: not passed to it)."""
    from .generate import initial_latents
    from .latents_file import load_latents

    if args.latents and args.variation_seed is not None:
        raise ZoodipError("--variation-seed mixes another seed's noise into --seed's, and --latents are the noise "
                          "already: drop one of them")
    if not (args.latents or args.save_latents):
        return None
    seed_latents = initial_latents(model, args.seed, args.num_images, args.height, args.width, args.variation_seed,
                                   args.variation_strength)
    return load_latents(args.latents, seed_latents.shape) if args.latents else seed_latents


def cmd_export(argv: Sequence[str]) -> int:
    """``zoodip export``: the SDK's one entry point into the exporter (zoodip_export, torch), imported here only.

    The exporter imports the SDK for the export format; the SDK imports the exporter nowhere else, so the
    runtime installs and runs without torch.
    """
    try:
        from zoodip_export.export_model import main as export_main
    except ImportError as exc:
        raise ZoodipError(
            f"export needs torch and diffusers ({exc.name} is missing): install the export extra: "
            "pip install '.[export]' in a zoodip clone (the SDK itself does not need them)"
        ) from None
    return export_main(list(argv), prog="zoodip export")


def cmd_verify(args: argparse.Namespace) -> int:
    from .integrity import verify_files
    from .manifest import unlisted_tokenizer_files
    from .model import read_manifest

    manifest = read_manifest(args.model)  # (a str: an empty one is told, not read as the current folder)
    files, size = verify_files(Path(args.model), manifest["files"], force=True)
    unlisted = unlisted_tokenizer_files(Path(args.model), manifest)
    if unlisted:
        raise ZoodipError(f"{Path(args.model) / unlisted[0]} is not among the manifest's files (an export writes none "
                          f"such{f', nor the {len(unlisted) - 1} others beside it' if len(unlisted) > 1 else ''}), and "
                          "the SDK would read it unchecked: remove it, or re-run 'zoodip export'")
    print(f"ok: {files} files ({size / 2**20:.1f} MiB) match the manifest's sha256 values")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from .describe import describe

    for line in describe(args.embedding):
        print(line)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="zoodip", description="Forward-only textual inversion for quantized (4-bit/INT8) ONNX Stable Diffusion")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("export", help="export a diffusers SD folder to quantized ONNX (4-bit/INT8 weights) (see 'zoodip export --help')", add_help=False)
    add_personalize_flags(sub.add_parser("personalize", help="learn a new token from a few photos"))

    g = sub.add_parser("generate", help="generate images from a prompt (or, with --image, from a photo), optionally with learned tokens")
    add_generate_flags(g)

    v = sub.add_parser("verify", help="check every file of an export folder against the manifest's sha256 values")
    names_a_path(v.add_argument("model", help="zoodip export folder"))

    i = sub.add_parser("info", help="what an embedding file holds and, for zoodip's, how it was trained; what an "
                                    "export folder offers; or the settings an image was generated with")
    names_a_path(i.add_argument("embedding", metavar="PATH", help="embedding file (.safetensors), export folder or image"))

    return parser


# What a second Ctrl-C (or one outside a training loop) leaves, by command.
_INTERRUPTED = {"personalize": "resume with --resume (the last checkpoint is kept)", "generate": "no image was written"}


def _given_flags(argv: Sequence[str], args: argparse.Namespace) -> set[str]:
    """The settings ``generate``'s command line gave rather than left to their defaults (argparse sets a default
    only where the namespace has no value: a marker in every place tells the two apart; None in those whose default
    is None, which a repeatable flag appends to)."""
    unset = object()
    parser = OneLineParser(prog="zoodip generate")
    add_generate_flags(parser)
    marked = {name: None if value is None or isinstance(value, list) else unset for name, value in vars(args).items()}
    namespace = argparse.Namespace(**marked)
    parser.parse_known_args(list(argv), namespace=namespace)
    return {name for name, value in vars(namespace).items() if value is not unset and value is not None}


def _in_flag_words(exc: ZoodipError, from_image: Sequence[str] = (), paths: Sequence[str] = ()) -> str:
    """``width must be ...`` -> ``--width must be ...``: the same refusal, in the words of the command line (and, for a
    value --parameters-from read from an image, saying so). ``paths``: those given (``_given_paths``)."""
    parts = getattr(exc, "parts", None) or (str(exc),)
    first = "" if isinstance(parts[0], Given) else str(exc).partition(" ")[0]
    if first in from_image:
        parts += (f" (the value of the image's parameters: give {api_name_flags().get(first, first)} to replace it)",)
    return in_flag_words(parts, paths)


def _path_values(args: argparse.Namespace | None) -> list[str]:
    """The paths the command line gave: its path flags' values (each of --embedding's specs), the only words a
    message's absolute paths are said back as (``said_as_given``; a prompt's word is no path)."""
    values = [getattr(args, dest, None) for dest in PATH_FLAGS] if args is not None else []
    return [str(value) for paths in values for value in (paths if isinstance(paths, list) else [paths])
            if value is not None]


def _given_paths(args: argparse.Namespace | None, argv: Sequence[str] = ()) -> list[str]:
    """The paths the command line gave (``_path_values``), which a message says as given: 'steps is a folder' names
    the user's folder, not --steps. A path named as a setting that the command line also gave is left out:
    'max_train_steps must be ...' with --output_dir max_train_steps is the setting's refusal."""
    flags = api_name_flags()
    spellings = {name: {flags[name], "--" + name, "--" + name.replace("_", "-")} for name in flags}
    given = {word.partition("=")[0] for word in argv if word.startswith("--")}
    return [value for value in _path_values(args) if not spellings.get(str(Path(value)), set()) & given]


def _flag_of_path(args: argparse.Namespace | None, filename: object) -> str | None:
    """The flag whose path is ``filename`` (or, for --out, one of the numbered files beside it), else the one whose
    folder holds it most closely (the error names the path the system was given, maybe a file inside a folder)."""
    if args is None or not isinstance(filename, (str, bytes)):
        return None
    failed, given = Path(os.fsdecode(filename)), []
    for dest, flag in PATH_FLAGS.items():
        values = getattr(args, dest, None)  # (--embedding's: a list)
        given += [(flag, Path(value)) for value in (values if isinstance(values, list) else [values])
                  if isinstance(value, (str, Path)) and str(value) not in ("", ".")]
    for flag, path in given:
        if failed == path or (flag == "--out" and failed.parent == path.parent and failed.suffix == path.suffix
                              and failed.stem.startswith(path.stem + "-")):
            return flag
    holders = [(len(path.parts), flag) for flag, path in given if path in failed.parents and os.path.isdir(path)]
    return max(holders)[1] if holders else None


def _refuse_options_before_the_command(argv: Sequence[str]) -> None:
    """zoodip itself takes only --help and --version: any other option before the command (``zoodip --model m
    personalize``, ``zoodip --bogus``) was "arguments are required: command", or sent to the command's help."""
    first = next((arg for arg in argv if not arg.startswith("-") or arg == "--"), None)
    before = argv[:argv.index(first)] if first is not None else list(argv)
    stray = [arg for arg in before if arg not in ("-h", "--help", "--version")]
    if stray:
        raise ZoodipError(f"{stray[0]} is not an option of zoodip itself: options go after the command (zoodip "
                          f"COMMAND {stray[0]} ...; the commands: see 'zoodip --help')")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command, args = argv[0] if argv else "", None
    readable_output()  # a path the terminal cannot show: escaped readably, not a traceback after the work
    try:
        if command == "export":
            return cmd_export(argv[1:])
        _refuse_options_before_the_command(argv)
        args, unknown = build_parser().parse_known_args(argv)
        if unknown:  # argparse would send the user to the top-level help, not the command's
            foreign = foreign_flag_problem(unknown, args.command)
            raise ZoodipError(foreign or f"unrecognized arguments: {' '.join(unknown)}: see 'zoodip {args.command} --help'")
        if args.command == "generate" and args.parameters_from is not None:  # flags given take the image's place
            args.given = _given_flags(argv[1:], args)
        handler = {"personalize": cmd_personalize, "generate": cmd_generate, "verify": cmd_verify,
                   "info": cmd_info}[args.command]
        with warnings.catch_warnings():
            warnings.showwarning = lambda message, *where: one_line_warning(
                said_as_given(in_flag_words(str(message), _given_paths(args, argv)), _path_values(args)), *where)
            return handler(args)
    except ZoodipError as exc:  # (its paths as typed: an export folder is held absolute, reopened anywhere)
        return print_error(said_as_given(_in_flag_words(exc, getattr(args, "from_image", ()) if args is not None
                                                        else (), _given_paths(args, argv)), _path_values(args)))
    except KeyboardInterrupt as exc:
        return print_interrupted(_INTERRUPTED.get(command, ""), exc)
    except BrokenPipeError:  # the reader of stdout left (`zoodip info X | head -1`): nothing is wrong here
        silence_stdout()
        return status_for_signal(getattr(signal, "SIGPIPE", 13))  # 141, as a command that the pipe's signal ended
    except OSError as exc:  # a path the system refused where it was first touched (a name too long, a link loop)
        return print_error(os_error_line(exc, _flag_of_path(args, exc.filename)))


if __name__ == "__main__":
    sys.exit(main())

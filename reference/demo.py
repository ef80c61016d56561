"""The demo (``make demo``, or ``python -m reference.demo --out demo_out`` from the repository): export the
built-in model, personalize it on a few photos, show before/after.

It lives beside the reference world, not in the installed SDK: it needs the world to render the photos
and its evaluator to score the images, and the exporter to make the model, none of which the SDK imports.

The built-in model is the SD-width reference model (``reference/model-768/`` in the repository: a
small SD-shaped model trained on the procedural world of ``reference/world.py``, 32x32 images, whose
text encoder is 768 wide as SD1.5's; stored without its untrained token rows, which
``reference/sd_width.py`` regenerates before the export). The demo
renders the photos of one world concept (a small yellow star with stripes on a blue background),
learns ``<striped-star>`` from them by forward passes only (initializer: ``star``), generates with
the initializer and with the learned token, and reads both with the world evaluator
(``reference/evaluator.onnx``): the fraction of generated images showing the concept's shape,
colour, background, style and size, before and after.

Without the reference model (a checkout without ``reference/model-768``) the demo falls back to
the tiny SD-shaped model with seeded random weights and the bundled star photos: the pipeline runs
end to end and the evaluation loss falls, but its images are not meant to look like the concept.
"""
from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

from zoodip.console import interrupts_said_from_here

interrupts_said_from_here(__name__)  # (a Ctrl-C during the imports below, NumPy's among them: one line, not a traceback)

import zoodip  # noqa: E402
from zoodip.checkpoint import CHECKPOINT_NAME  # noqa: E402
from zoodip.config import MAX_TRAIN_STEPS  # noqa: E402
from zoodip.console import GracefulStop, OneLineParser, print_error, ProgressBar, one_line_warning, script_main  # noqa: E402
from zoodip.errors import ZoodipError  # noqa: E402
from zoodip.manifest import MANIFEST  # noqa: E402
from zoodip.lr_schedule import LR_SCHEDULERS  # noqa: E402
from zoodip.paths import atomic_write_bytes, check_output_dir  # noqa: E402

EXAMPLE_PHOTOS = Path(zoodip.__file__).resolve().parent / "data" / "example_concept"
REFERENCE_DIR = Path(__file__).resolve().parent
REPO_ROOT = REFERENCE_DIR.parent
REFERENCE_MODEL = REFERENCE_DIR / "model-768"  # packed: materialized into a diffusers folder before export
DEMO_TOKEN = "<striped-star>"
DEMO_INITIALIZER = "star"
DEFAULT_STEPS = 300
REFERENCE_STEPS = 4000  # benchmarks/README.md ("demo_seeds.py"): the budget with the most seeds at the bar over seeds 0-14
NUM_IMAGES = 8
SOURCE_STAMP = "demo_source.json"
# How the demo generates its before/after images (the same seed for both rows).
GENERATION = dict(steps=20, guidance_scale=5.0, sampler="dpmpp_2m", seed=1)


def _need_export_tools():
    try:
        from zoodip_export.export_model import export_model
    except ImportError as exc:
        raise ZoodipError(
            f"the demo exports its built-in model with torch ({exc.name} is missing): "
            "run 'make demo', or pip install '.[export]' in this clone"
        ) from None
    return export_model


def reference_available() -> bool:
    """The trained reference model and its world/evaluator modules are next to this checkout."""
    return all(p.is_file() for p in (REFERENCE_MODEL / "model_index.json", REFERENCE_DIR / "world.py",
                                     REFERENCE_DIR / "evaluator.py", REFERENCE_DIR / "sd_width.py"))


def reference_source() -> Path:
    """The full diffusers folder of the built-in model (its untrained token rows regenerated, cached)."""
    _world()
    from reference.sd_width import materialize

    return materialize(REFERENCE_MODEL)


def _fingerprint(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.suffix in (".safetensors", ".json"):
            digest.update(str(path.relative_to(folder)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def _default_recipe() -> str | None:
    """The exporter's default recipe and its revision (``w4a32-r4``); None without the export tools."""
    try:
        from zoodip_export.quantize import DEFAULT_RECIPE, RECIPE_REVISION
    except ImportError:
        return None
    recipe = DEFAULT_RECIPE["int8"]
    return f"{recipe}-r{RECIPE_REVISION[recipe]}"


def _export_builtin(folder: Path, progress: bool, source: Path | None = None) -> Path:
    """Export ``source`` (or the tiny random model) into ``folder`` unless an export of it, with the exporter's
    current default recipe, is there (without the export tools, any export of it is)."""
    stamp_path = folder / SOURCE_STAMP
    stamp = {"source": str(source) if source else "tiny", "fingerprint": _fingerprint(source) if source else "tiny-0"}
    recipe = _default_recipe()
    if recipe:
        stamp["recipe"] = recipe
    if (folder / MANIFEST).is_file():
        try:
            previous = json.loads(stamp_path.read_text())
        except (OSError, ValueError):
            previous = {"source": "tiny", "fingerprint": "tiny-0"}  # demos before the stamp exported tiny
        if all(previous.get(key) == value for key, value in stamp.items()):
            return folder
    export_model = _need_export_tools()
    if source is None:
        export_model(None, folder, tiny=True, progress=progress, overwrite=True)
    else:
        export_model(source, folder, progress=progress, overwrite=True)
    _write_text(stamp_path, json.dumps(stamp) + "\n")
    return folder


def _write_text(path: Path, text: str) -> None:
    """``path`` replaced whole (a Ctrl-C in the middle leaves the previous file or none, never half of one)."""
    atomic_write_bytes(path, text, then="run the demo again")


def _world():
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    from reference import world
    from reference.evaluator import Evaluator

    return world, Evaluator


def prepare(out: Path, progress: bool = True) -> tuple[Path, Path, object | None]:
    """The demo's photos and export in ``out`` (``concept/``, ``model/``): (photos, export, world concept), the
    concept None on the fallback tiny model. An export of the same source and recipe there is reused."""
    if reference_available():
        world, _ = _world()
        photos_dir, concept = _concept_photos(out / "concept", world)
        return photos_dir, _export_builtin(out / "model", progress, reference_source()), concept
    return EXAMPLE_PHOTOS, _export_builtin(out / "model", progress), None


def _concept_photos(folder: Path, world) -> tuple[Path, object]:
    concept = next(c for c in world.CONCEPTS if c.name == DEMO_TOKEN)
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(world.concept_images(concept, n=5, seed=0)):
        atomic_write_bytes(folder / f"{concept.name.strip('<>')}_{i}.png",
                           lambda handle, image=image: image.save(handle, format="PNG"), then="run the demo again")
    return folder, concept


def _upscale(images, side: int = 128):
    from PIL import Image

    return [im.resize((side, side), Image.NEAREST) if im.size[0] < side else im for im in images]


def check_demo_out(out: Path, flag: str = "--out") -> Path:
    """``out`` checked before anything is written into it: a writable folder, and not a model's own folder (or one
    whose ``model/`` is one): ``--out reference`` or ``--out reference/model`` put the demo's photos, export and
    runs among the committed weights before the export refused to replace them."""
    out = check_output_dir(out, flag)
    if (out / "model_index.json").is_file():
        raise ZoodipError(f"{flag} {out} is a model's folder (it holds model_index.json): choose a new folder for "
                          "the demo, e.g. demo_out")
    model = out / "model"
    if model.is_dir() and any(model.iterdir()) and not (model / MANIFEST).is_file():
        raise ZoodipError(f"{flag} {out}: its model/ is not a zoodip export (a model's folder?), which the demo would "
                          "replace: choose a new folder for the demo, e.g. demo_out")
    return out


def default_steps(use_reference: bool) -> int:
    """The demo's training length when no --steps is given: the built-in world's budget, or the fallback tiny
    model's (``use_reference``: the built-in model is there, ``reference_available()``)."""
    return REFERENCE_STEPS if use_reference else DEFAULT_STEPS


def run_demo(out: Path, steps: int | None = None, threads: int = 0, progress: bool = True, seed: int = 0,
             method: dict | None = None) -> dict:
    """Run the demo into ``out``; returns a summary (also written to ``out/summary.json``).

    ``method``: PersonalizeConfig settings that replace the SDK's defaults (e.g. ``{"learning_rate": 0.02}``).
    """
    from zoodip.embeddings import load_embedding_file
    from zoodip.model import ExportedModel, RuntimeOptions

    out = check_demo_out(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    photos_dir, export_dir, concept = prepare(out, progress)
    use_reference = concept is not None
    exported_s = time.monotonic() - started

    steps = default_steps(use_reference) if steps is None else steps
    result = _personalize(export_dir, photos_dir, out / "run", steps, seed, threads, progress, use_reference,
                          method or {})
    trained_s = time.monotonic() - started - exported_s

    model = ExportedModel.load(export_dir, RuntimeOptions(threads=threads))
    token, vectors = load_embedding_file(result.embedding_path)
    before_prompt, after_prompt = f"a photo of a {DEMO_INITIALIZER}", f"a photo of {token}"
    if not use_reference:
        after_prompt = f"a photo of a {token}"
    before, after, grid_path = _before_after(model, out, photos_dir, token, vectors, before_prompt, after_prompt,
                                             NUM_IMAGES if use_reference else 4)

    summary = {
        "model": "reference" if use_reference else "tiny-random",
        "export_dir": str(export_dir), "embedding": str(result.embedding_path), "grid": str(grid_path),
        "grid_rows": ["training photos", f"before: '{before_prompt}'", f"after: '{after_prompt}'"],
        "steps": result.steps, "seed": seed, "status": result.status,
        "eval_loss_initializer": result.initial_eval_loss, "eval_loss_final": result.final_eval_loss,
        "eval_history": result.eval_history,
    }
    print(f"demo: eval loss {result.initial_eval_loss:.5f} (initializer '{DEMO_INITIALIZER}') -> "
          f"{result.final_eval_loss:.5f} after {result.steps} forward-only steps", file=sys.stderr)
    if use_reference:
        summary.update(_score(concept, before, after))
    summary["seconds"] = {"export": round(exported_s, 1), "personalize": round(trained_s, 1),
                          "total": round(time.monotonic() - started, 1)}
    _write_text(out / "summary.json", json.dumps(summary, indent=2))
    print(f"demo: embedding {result.embedding_path}\ndemo: before/after grid {grid_path} "
          f"(rows: photos / before / after)\ndemo: {summary['seconds']['total']} s in all")
    return summary


def _personalize(export_dir: Path, photos_dir: Path, run_dir: Path, steps: int, seed: int, threads: int,
                 progress: bool, use_reference: bool, method: dict):
    """Learn the demo token; a finished or interrupted run of the same model and length is resumed. A Ctrl-C or
    SIGTERM during training saves the current step, then interrupts (KeyboardInterrupt)."""
    from zoodip.trainer import PersonalizeConfig, personalize

    config = PersonalizeConfig(export_dir=export_dir, images=photos_dir, output_dir=run_dir,
                               placeholder_token=DEMO_TOKEN, initializer_token=DEMO_INITIALIZER,
                               max_train_steps=steps, seed=seed, eval_every=max(1, steps // 10), checkpoint_every=max(1, steps // 5),
                               # tau: the default (the paper's 128 on the 768-wide built-in model; half the
                               # width on the 32-wide fallback, since Subspace Gradient needs tau < d).
                               threads=threads, **method)
    config.validate()  # (before an earlier run of another length is removed below)
    stamp = {"model": json.loads((export_dir / SOURCE_STAMP).read_text()) if use_reference else "tiny",
             "steps": steps, "run": config.fingerprint()}
    resume = (run_dir / CHECKPOINT_NAME).is_file()
    if resume:
        try:
            previous = json.loads((run_dir / "demo_run.json").read_text())
        except (OSError, ValueError):
            previous = None
        if previous != stamp:
            resume = False  # a run on another model (or with another length): start over
            import shutil

            shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    _write_text(run_dir / "demo_run.json", json.dumps(stamp))
    bar = ProgressBar(steps, enabled=progress)
    try:
        # A Ctrl-C or SIGTERM stops after the current step and saves it (a second one interrupts at once), as
        # `zoodip personalize` does: the next demo resumes there, not at the last periodic checkpoint.
        with GracefulStop() as stop:
            result = personalize(config, bar, resume=resume, cancel_event=stop.event)
    finally:
        bar.close()
    if result.status == "cancelled":
        stop.interrupt()  # script_main's one 'interrupted:' line, status 130 (143 for SIGTERM)
    return result


def _before_after(model, out: Path, photos_dir: Path, token: str, vectors, before_prompt: str, after_prompt: str,
                  num_images: int):
    """Images of the initializer and of the learned token (same seeds), and the grid photos / before / after."""
    from zoodip.generate import generate
    from zoodip.images import image_grid, load_images, to_pil

    before = generate(model, before_prompt, num_images=num_images, **GENERATION)
    after = after_images(model, token, vectors, num_images, after_prompt)
    size = before[0].size
    _, photos = load_images(photos_dir, size[0])
    grid = image_grid([_upscale(to_pil(photos[:num_images])), _upscale(before), _upscale(after)])
    grid_path = out / "before_after.png"
    atomic_write_bytes(grid_path, lambda handle: grid.save(handle, format="PNG"), then="run the demo again")
    return before, after, grid_path


def after_images(model, token: str, vectors, num_images: int = NUM_IMAGES, prompt: str | None = None) -> list:
    """The demo's "after" row for an embedding: ``prompt`` (default "a photo of TOKEN") with its generation settings."""
    from zoodip.generate import generate

    return generate(model, prompt or f"a photo of {token}", num_images=num_images, added_embeddings={token: vectors},
                    **GENERATION)


def concept_reading(concept, images: list) -> tuple[dict, float, dict]:
    """The evaluator's reading of ``images`` against the concept: (accuracy per attribute, share of images with
    all five right, the predicted attributes)."""
    _, Evaluator = _world()
    from reference.evaluator import attribute_accuracy

    predicted = Evaluator.load().predict(images)
    acc, joint = attribute_accuracy(predicted, concept.attributes.as_dict())
    return acc, joint, predicted


def _score(concept, before: list, after: list) -> dict:
    """The evaluator's reading of the before and after images: per-attribute accuracy and all five at once."""
    world, _ = _world()
    scores: dict = {"concept": {"token": concept.name, "attributes": concept.attributes.as_dict()}}
    for name, images in (("before", before), ("after", after)):
        # The share of images whose five attributes are all the concept's, next to the per-attribute mean.
        acc, joint, predicted = concept_reading(concept, images)
        scores[f"concept_accuracy_{name}"] = acc
        scores[f"concept_all_five_{name}"] = joint
        parts = " ".join(f"{a}={acc[a]:.2f}" for a in world.ATTRIBUTE_NAMES)
        print(f"demo: concept attributes matched {name}: {parts} "
              f"(mean {sum(acc.values()) / len(acc):.2f}; images with all five: {joint:.2f})", file=sys.stderr)
    scores["predicted_after"] = predicted
    return scores


# The method flags the demo passes on to the SDK, each defaulting to the SDK's own setting: flag -> its argparse
# settings. A flag's dest is also its PersonalizeConfig field. benchmarks/demo_seeds.py passes the same flags on.
METHOD_FLAGS = {
    "--learning_rate": dict(type=float, help="ZO-Adam's rate (default: the SDK's)"),
    "--lr_scheduler": dict(choices=LR_SCHEDULERS, help="the rate's schedule (default: the SDK's)"),
    "--clip-estimate": dict(type=float, metavar="KAPPA",
                            help="clip each gradient estimate's norm (the SDK's --clip-estimate; default: the SDK's)"),
}


def method_flag_dest(flag: str) -> str:
    """The argparse dest (and PersonalizeConfig field) of a METHOD_FLAGS flag."""
    return flag.lstrip("-").replace("-", "_")


def add_method_flags(parser) -> None:
    """Add METHOD_FLAGS to ``parser``."""
    for flag, settings in METHOD_FLAGS.items():
        parser.add_argument(flag, dest=method_flag_dest(flag), default=None, **settings)


def method_settings(args) -> dict:
    """The METHOD_FLAGS given in ``args``, checked, as PersonalizeConfig settings. A bad value is refused here,
    before any export or run (ZoodipError)."""
    from zoodip.config import PersonalizeConfig

    from zoodip.cli_flags import in_flag_words

    values = {method_flag_dest(flag): getattr(args, method_flag_dest(flag)) for flag in METHOD_FLAGS}
    settings = {field: value for field, value in values.items() if value is not None}
    try:
        PersonalizeConfig.check_method_settings(**settings)
    except ZoodipError as exc:  # the SDK names the API's settings; these flags are spelled as zoodip's own
        raise ZoodipError(in_flag_words(str(exc))) from None
    return settings


# What a Ctrl-C leaves: the export is swapped in whole (or the earlier one kept), the training checkpoints are written
# whole and resumed by the next run of the same settings, and the other files are each replaced whole.
@script_main("what the demo finished in --out is kept (its export, the training's last checkpoint): run it again to "
             "resume")
def main(argv: list[str] | None = None) -> int:
    """The demo's command line; a bad flag or output folder is one line ``error: ...`` and exit status 2."""
    import warnings

    parser = OneLineParser(prog="python -m reference.demo",
                           description="export the built-in model, personalize it on its photos, write a before/after grid")
    parser.add_argument("--out", default="demo_out")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the demo's)")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0, help="training seed (photos, noise and timesteps stay the demo's)")
    add_method_flags(parser)
    parser.add_argument("--save_steps", type=int, default=0, metavar="N",
                        help="also save the embedding every N steps, as learned_embeds-steps-N.safetensors (0: never)")
    parser.add_argument("--no-progress", action="store_true")
    try:
        args = parser.parse_args(argv)
        check_demo_out(Path(args.out))
        if args.seed < 0 or args.save_steps < 0 or args.threads < 0:  # before the export
            raise ZoodipError(f"--seed {args.seed} --save_steps {args.save_steps} --threads {args.threads}: "
                              "each must be 0 or more")
        if args.steps is not None and not 1 <= args.steps <= MAX_TRAIN_STEPS:  # before the export and the folders
            raise ZoodipError(f"--steps {args.steps}: give 1 to {MAX_TRAIN_STEPS:,} (or leave it out for the demo's "
                              "own length)")
        with warnings.catch_warnings():
            warnings.showwarning = one_line_warning
            method = method_settings(args)  # refused now, not after the export
            if args.save_steps:
                method["save_steps"] = args.save_steps
            run_demo(Path(args.out), steps=args.steps, threads=args.threads, progress=not args.no_progress, seed=args.seed,
                     method=method)
    except ZoodipError as exc:
        return print_error(exc)
    return 0


if __name__ == "__main__":
    sys.exit(main())

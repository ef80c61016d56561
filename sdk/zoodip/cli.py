"""``zoodip`` command line: a thin shell over the SDK.

    zoodip export SRC_DIR OUT_DIR            (or --tiny)   diffusers folder -> INT8 ONNX export
    zoodip personalize --model EXPORT --train_data_dir PHOTOS --output_dir OUT --placeholder_token "<my-dog>" ...
    zoodip generate --model EXPORT --embedding OUT/learned_embeds.safetensors --prompt "a photo of <my-dog>"
    zoodip verify EXPORT                                      check every file of an export against its sha256
    zoodip demo                                               the whole thing on the built-in model

Every user error prints one line ``error: ...`` and exits with status 2; a warning is one line
``warning: ...``. Output locations are checked before any work starts.
"""
from __future__ import annotations

import argparse
import signal
import sys
import threading
import warnings
from pathlib import Path
from typing import Sequence

from .errors import ZoodipError
from .zo import ADAM_STATE_DTYPES


def _add_personalize_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "--pretrained_model_name_or_path", dest="model", required=True, help="zoodip export folder")
    p.add_argument("--train_data_dir", required=True, help="folder with 3-10 photos of the concept")
    p.add_argument("--output_dir", required=True, help="where the embedding, checkpoint and log go")
    p.add_argument("--placeholder_token", default="<concept>", help="the new word, e.g. '<my-dog>'")
    p.add_argument("--initializer_token", default="object", help="one existing word close to the concept")
    p.add_argument("--learnable_property", choices=["object", "style"], default="object")
    p.add_argument("--resolution", type=int, default=None, help="training resolution (default: the model's)")
    p.add_argument("--max_train_steps", type=int, default=1000,
                   help="ZO steps, n+1 UNet forwards each. Forward-only training needs more forwards than backprop: "
                        "on the reference world 1500 steps reach 0.95 of backprop's concept fidelity, 9000 steps 0.99 "
                        "of its concept and 0.96 of its prompt fidelity (benchmarks/README.md)")
    p.add_argument("--learning_rate", type=float, default=1e-2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n", type=int, default=2, help="random directions per step (n+1 forwards per step)")
    p.add_argument("--mu", type=float, default=1e-3, help="finite-difference perturbation")
    p.add_argument("--tau", type=int, default=None,
                   help="Subspace Gradient history length (default: the paper's 128, or half the embedding width "
                        "on models narrower than 256)")
    p.add_argument("--nu", type=float, default=1e-3, help="Subspace Gradient: variance fraction dropped")
    p.add_argument("--no-subspace", action="store_true", help="turn Subspace Gradient off (ablation)")
    p.add_argument("--subspace-mode", choices=["history-span", "principal"], default="history-span",
                   help="history-span: the authors' code (default); principal: project onto the kept components "
                        "only (stalls over long runs, see benchmarks/README.md)")
    p.add_argument("--vocabulary-subspace", type=float, default=None, metavar="FRACTION",
                   help="draw the random directions inside the token table's principal subspace holding FRACTION "
                        "of its variance (not in the paper; default: the whole embedding space). Try 0.95 on "
                        "768-wide models such as SD1.5; on narrow, near-isotropic tables it costs a little")
    p.add_argument("--t-range", nargs=2, type=int, default=[500, 900], metavar=("T_MIN", "T_MAX"),
                   help="PUTS timestep range [T_MIN, T_MAX); 0 1000 is uniform sampling")
    p.add_argument("--optimizer", choices=["adam", "sgd"], default="adam")
    p.add_argument("--adam-state-dtype", choices=ADAM_STATE_DTYPES, default="float64",
                   help="ZO-Adam's moment storage. float16 reproduces the ZOODiP authors' code, whose fp16 second "
                        "moment stays near 0 for small estimates, so their steps are close to lr * m_hat / eps "
                        "(default: float64)")
    p.add_argument("--captions", default=None, help="JSON {image file name: caption containing the placeholder}")
    p.add_argument("--flip", action="store_true", help="random horizontal flips")
    p.add_argument("--sequential", action="store_true", help="run the n+1 UNet evaluations one by one (less memory; the default for SD-size UNets, small ones run them as one batch)")
    p.add_argument("--eval-every", type=int, default=50, help="steps between evaluation losses (0: never)")
    p.add_argument("--checkpointing_steps", type=int, default=50)
    p.add_argument("--early-stop-patience", type=int, default=0, help="stop after this many evaluations without improvement")
    p.add_argument("--threads", type=int, default=0, help="onnxruntime threads (0: all cores)")
    p.add_argument("--memory-budget", type=int, default=None, metavar="MB", help="low-memory mode within MB (implies --sequential)")
    p.add_argument("--resume", action="store_true", help="continue the run in --output_dir from its checkpoint")
    p.add_argument("--progress-jsonl", default=None, metavar="PATH", help="also stream progress as JSON lines ('-' = stdout)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _config_from_args(args: argparse.Namespace):
    from .trainer import PersonalizeConfig

    return PersonalizeConfig(
        export_dir=Path(args.model), images=Path(args.train_data_dir), output_dir=args.output_dir,
        placeholder_token=args.placeholder_token, initializer_token=args.initializer_token,
        learnable_property=args.learnable_property, resolution=args.resolution,
        max_train_steps=args.max_train_steps, learning_rate=args.learning_rate, seed=args.seed,
        n=args.n, mu=args.mu, tau=args.tau, nu=args.nu, subspace=not args.no_subspace,
        subspace_mode=args.subspace_mode, vocabulary_variance=args.vocabulary_subspace, t_range=tuple(args.t_range), optimizer=args.optimizer,
        adam_state_dtype=args.adam_state_dtype,
        captions=Path(args.captions) if args.captions else None, flip=args.flip, batched=False if args.sequential else None,
        eval_every=args.eval_every, checkpoint_every=args.checkpointing_steps,
        early_stop_patience=args.early_stop_patience, threads=args.threads,
        memory_budget_mb=args.memory_budget,
    )


class _ProgressBar:
    """tqdm bar on stderr: loss, evaluation loss, forwards/s and ETA."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="step", dynamic_ncols=True, file=sys.stderr)
        self.eval_loss: float | None = None

    def __call__(self, progress) -> None:
        if self.bar is None:
            return
        if progress.eval_loss is not None:
            self.eval_loss = progress.eval_loss
        self.bar.n = progress.step
        postfix = {"fwd/s": f"{progress.forwards_per_s:.2f}"}
        if progress.loss is not None:
            postfix["loss"] = f"{progress.loss:.4f}"
        if self.eval_loss is not None:
            postfix["eval"] = f"{self.eval_loss:.4f}"
        if progress.kept_dims is not None:
            postfix["sg_dims"] = progress.kept_dims
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class _GracefulStop:
    """SIGINT/SIGTERM ask the run to stop after the current step (checkpoint saved, "cancelled" event).

    An app cancels a job by signalling the process (Android's Process.destroy() sends SIGTERM), so
    a signal must not throw away the steps since the last periodic checkpoint. A second signal
    interrupts at once (the last checkpoint is still intact).
    """

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: object) -> None:
        if self.event.is_set():
            raise KeyboardInterrupt
        self.signum = signum
        self.event.set()

    def __enter__(self) -> _GracefulStop:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    @property
    def exit_code(self) -> int:
        # The shell convention for "stopped by signal N".
        return 128 + int(self.signum or signal.SIGINT)


class _LazyJsonl:
    """``--progress-jsonl PATH``: checked up front, opened (for appending) at the first event only,
    so a run refused during setup leaves no progress file behind."""

    def __init__(self, target: str) -> None:
        from .paths import check_output_file

        self.stream = sys.stdout if target == "-" else None
        self.path = None if target == "-" else check_output_file(target, "--progress-jsonl")
        self.write = None

    def __call__(self, progress) -> None:
        from .api import jsonl_progress_writer

        if self.write is None:
            if self.stream is None:
                try:
                    self.stream = open(self.path, "a", encoding="utf-8")
                except OSError as exc:
                    raise ZoodipError(f"cannot write --progress-jsonl {self.path} ({exc.strerror or exc}): choose another file") from None
            self.write = jsonl_progress_writer(self.stream)
        self.write(progress)

    def close(self) -> None:
        if self.stream is not None and self.stream is not sys.stdout:
            self.stream.close()


def cmd_personalize(args: argparse.Namespace) -> int:
    from .paths import check_output_dir
    from .trainer import personalize

    config = _config_from_args(args)
    config.validate()  # a bad setting is one line on stderr, before any progress bar is drawn
    check_output_dir(config.output_dir)
    jsonl = _LazyJsonl(args.progress_jsonl) if args.progress_jsonl else None
    bar = _ProgressBar(config.max_train_steps, enabled=not args.no_progress)
    callbacks = [bar] + ([jsonl] if jsonl else [])
    try:
        with _GracefulStop() as stop:
            result = personalize(config, lambda p: [cb(p) for cb in callbacks], resume=args.resume,
                                 cancel_event=stop.event)
    finally:
        bar.close()
        if jsonl is not None:
            jsonl.close()
    out = sys.stderr if args.progress_jsonl == "-" else sys.stdout
    print(f"{result.status}: {result.steps} steps; eval loss {result.initial_eval_loss} -> {result.final_eval_loss}", file=out)
    if result.embedding_path:
        print(f"embedding: {result.embedding_path}", file=out)
    if result.status == "cancelled":
        print(f"stopped at step {result.steps} (checkpoint saved): resume with --resume and the same flags", file=sys.stderr)
        return stop.exit_code
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from .embeddings import check_hidden_size, load_embedding_file
    from .generate import generate
    from .images import image_grid
    from .limits import check_image_size
    from .model import ExportedModel, RuntimeOptions
    from .paths import check_output_file

    out = check_output_file(args.out, "--out", (".png", ".jpg", ".jpeg", ".webp"))
    if args.threads < 0:
        raise ZoodipError(f"--threads must be an integer >= 0 (0: all cores), got {args.threads}")
    model = ExportedModel.load(args.model, RuntimeOptions(threads=args.threads))
    added = {}
    for path in args.embedding or []:
        token, vectors = load_embedding_file(path)
        check_hidden_size(vectors, model.hidden_size, path)
        added[token] = vectors
    factor = model.vae_scale_factor
    height, width = args.height or model.default_resolution, args.width or model.default_resolution
    if height > 0 and width > 0 and not (height % factor or width % factor):  # other sizes: generate() says why
        check_image_size(height, width, factor, f"--height {height} --width {width}")
    images = generate(model, args.prompt, negative_prompt=args.negative_prompt, steps=args.steps,
                      guidance_scale=args.guidance_scale, sampler=args.sampler, seed=args.seed,
                      height=args.height, width=args.width, num_images=args.num_images, added_embeddings=added)
    picture = images[0] if len(images) == 1 else image_grid([images])
    tmp = out.with_name(f".{out.name}.tmp{out.suffix}")  # keeps the suffix: Pillow picks the format by it
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        picture.save(tmp)
        tmp.replace(out)
    except BaseException as exc:  # also Ctrl-C mid-save: no temp file left in the user's folder
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise ZoodipError(f"cannot write --out {out} ({exc.strerror or exc}): free space or choose another file") from None
        raise
    print(f"wrote {out}")
    return 0


def cmd_export(argv: Sequence[str]) -> int:
    try:
        from zoodip_export.export_model import main as export_main
    except ImportError as exc:
        raise ZoodipError(
            f"export needs torch and diffusers ({exc.name} is missing): install them with "
            "pip install 'zoodip[export]' (the SDK itself does not need them)"
        ) from None
    return export_main(list(argv))


def cmd_verify(args: argparse.Namespace) -> int:
    from .integrity import verify_files
    from .model import read_manifest

    manifest = read_manifest(Path(args.model))
    files, size = verify_files(Path(args.model), manifest["files"], force=True)
    print(f"ok: {files} files ({size / 2**20:.1f} MiB) match the manifest's sha256 values")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo
    from .paths import check_output_dir

    check_output_dir(args.out, "--out")
    if args.seed < 0:
        raise ZoodipError(f"--seed {args.seed}: must be 0 or more")
    run_demo(Path(args.out), steps=args.steps, threads=args.threads, progress=not args.no_progress, seed=args.seed)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zoodip", description="Forward-only textual inversion for INT8 ONNX Stable Diffusion")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("export", help="export a diffusers SD folder to INT8 ONNX (see 'zoodip export --help')", add_help=False)
    _add_personalize_flags(sub.add_parser("personalize", help="learn a new token from a few photos"))

    g = sub.add_parser("generate", help="generate images, optionally with learned tokens")
    g.add_argument("--model", required=True, help="zoodip export folder")
    g.add_argument("--prompt", required=True)
    g.add_argument("--negative-prompt", default="")
    g.add_argument("--embedding", action="append", help="learned embedding file (diffusers or A1111 .safetensors); repeatable")
    g.add_argument("--steps", type=int, default=25)
    g.add_argument("--guidance-scale", type=float, default=7.5)
    g.add_argument("--sampler", choices=["dpmpp_2m", "ddim", "euler"], default="dpmpp_2m")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--height", type=int, default=None)
    g.add_argument("--width", type=int, default=None)
    g.add_argument("--num-images", type=int, default=1)
    g.add_argument("--threads", type=int, default=0)
    g.add_argument("--out", default="out.png")

    v = sub.add_parser("verify", help="check every file of an export folder against the manifest's sha256 values")
    v.add_argument("model", help="zoodip export folder")

    d = sub.add_parser("demo", help="export the built-in model, personalize it on bundled photos, write a before/after grid")
    d.add_argument("--out", default="demo_out")
    d.add_argument("--steps", type=int, default=None, help="training steps (default: the demo's)")
    d.add_argument("--threads", type=int, default=0)
    d.add_argument("--seed", type=int, default=0, help="training seed (photos, noise and timesteps stay the demo's)")
    d.add_argument("--no-progress", action="store_true")
    return parser


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one line on stderr (Python's default adds the source line and the file name)."""
    print("warning: " + " ".join(str(message).split()), file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] == "export":
            return cmd_export(argv[1:])
        args = build_parser().parse_args(argv)
        handler = {"personalize": cmd_personalize, "generate": cmd_generate, "verify": cmd_verify,
                   "demo": cmd_demo}[args.command]
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warning
            return handler(args)
    except ZoodipError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return ZoodipError.exit_code
    except KeyboardInterrupt:
        print("interrupted: resume with --resume (the last checkpoint is kept)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

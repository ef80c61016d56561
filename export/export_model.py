"""Export a diffusers Stable Diffusion folder (SD1.x/2.x) to zoodip's ONNX folder (docs/export-format.md).

    python export/export_model.py SRC_FOLDER OUT_DIR [--precision fp32|int8] [--recipe w8a32|w4a32|dynamic-int8]
    python export/export_model.py model.safetensors OUT_DIR  # A1111's single-file checkpoint (single_file.py)
    python export/export_model.py --tiny OUT_DIR          # a small seeded random SD-shaped model
    python export/export_model.py SRC OUT_DIR --lora style.safetensors:0.8   # LoRAs fused in first (lora.py)

The folder is built next to OUT_DIR under a temporary name and renamed at the very end, so a
failed or interrupted export never leaves a half-written OUT_DIR behind.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import shutil
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from zoodip.errors import ZoodipError
from zoodip.export_folder import check_out_dir, export_write_failure, output_target, publish, staging_folder
from zoodip.integrity import file_sha256
from zoodip.manifest import FORMAT, FORMAT_VERSION, MANIFEST  # one definition of the folder format, shared with the reader
from zoodip.paths import missing_parents
from zoodip.runtime_options import NOT_SMOOTH_RECIPES
from zoodip_export.export_args import (DEFAULT_PRECISION, PRECISIONS, check_export_args, export_flag_words,
                                      resolve_recipe, unknown_arguments_problem)
from zoodip_export.lora import LoraSpec, fuse_loras, lora_entries, lora_specs
from zoodip_export.requirements import check_export_requirements
from zoodip_export.source_folder import check_source, model_info, pipeline_scheduler_config, read_source, source_warnings
from zoodip_export.weights import load_checked

TOKEN_EMBEDDINGS = "token_embeddings.npy"
SCHEDULER_CONFIG = "scheduler_config.json"

class _Progress:
    """One-line progress messages on stderr (stdout stays clean for scripts)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.start = time.perf_counter()

    def __call__(self, message: str) -> None:
        if self.enabled:
            print(f"[export {time.perf_counter() - self.start:6.1f}s] {message}", file=sys.stderr, flush=True)


# --- the export -----------------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet_libraries() -> Iterator[None]:
    """Silence tracer warnings and library chatter that say nothing about this export."""
    import torch

    loggers = [logging.getLogger(n) for n in ("", "diffusers", "transformers")]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=UserWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        try:
            for lg in loggers:  # (a failed load is one line of ours: the libraries' own error logs would repeat it)
                lg.setLevel(logging.CRITICAL)
            from diffusers.utils import logging as diffusers_logging
            from transformers.utils import logging as transformers_logging

            dl, tl = diffusers_logging.get_verbosity(), transformers_logging.get_verbosity()
            bars = [(library, library.is_progress_bar_enabled()) for library in (diffusers_logging, transformers_logging)]
            diffusers_logging.set_verbosity(logging.CRITICAL)
            transformers_logging.set_verbosity(logging.CRITICAL)
            for library, _ in bars:  # ("Loading checkpoint shards" of a sharded folder; the export says its own steps)
                library.disable_progress_bar()
            try:
                yield
            finally:
                diffusers_logging.set_verbosity(dl)
                transformers_logging.set_verbosity(tl)
                for library, enabled in bars:
                    if enabled:
                        library.enable_progress_bar()
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)


def _graph_entry(path: Path, data_file: str | None) -> dict[str, Any]:
    """File name, external data and IO shapes/dtypes, read back from the written graph."""
    import onnx

    from zoodip_export.onnx_export import load_graph

    graph = load_graph(path).graph

    def describe(values: Any) -> dict[str, Any]:
        out = {}
        for value in values:
            tensor_type = value.type.tensor_type
            shape = [d.dim_param if d.dim_param else int(d.dim_value) for d in tensor_type.shape.dim]
            dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).name
            out[value.name] = {"shape": shape, "dtype": dtype}
        return out

    initializer_names = {t.name for t in graph.initializer}
    inputs = [v for v in graph.input if v.name not in initializer_names]
    return {"file": path.name, "external_data": data_file, "inputs": describe(inputs), "outputs": describe(graph.output)}


def _file_table(folder: Path) -> dict[str, dict[str, Any]]:
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = path.relative_to(folder).as_posix()
        if relative != MANIFEST:
            files[relative] = {"bytes": path.stat().st_size, "sha256": file_sha256(path)}
    return files


def _versions() -> dict[str, str]:
    import diffusers
    import onnx
    import onnxruntime
    import torch
    import transformers

    import zoodip

    return {"zoodip": zoodip.__version__, "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__}


class _GraphExporter:
    """Traces one component to fp32 ONNX in a scratch folder (checked against torch), then quantizes it
    into the staging folder (checked against fp32) and drops the scratch copy."""

    def __init__(self, staging: Path, info: dict[str, Any], recipe: str, seed: int, parity: bool, log: _Progress) -> None:
        from zoodip_export.quantize import SESSION_SETTINGS

        self.staging, self.info, self.recipe, self.seed, self.parity, self.log = staging, info, recipe, seed, parity, log
        self.session = SESSION_SETTINGS[recipe]
        self.work = staging / "_work"
        self.graphs: dict[str, Any] = {}
        self.results: dict[str, Any] = {}
        self.token_table: Any = None  # the saved token table, once written (parity inputs use it)

    def parity_inputs(self, name: str) -> Any:
        from zoodip_export import parity as par

        return par.parity_inputs(name, self.info, seed=self.seed, token_embeddings=self.token_table)

    def export_one(self, name: str, module: Any) -> Path:
        from zoodip_export import onnx_export as ox
        from zoodip_export import parity as par

        spec = ox.GRAPH_SPECS[name]
        self.log(f"exporting {name} ({list(ox.GRAPH_SPECS).index(name) + 1}/{len(ox.GRAPH_SPECS)})")
        raw = ox.export_graph(module, spec, ox.example_inputs(name, self.info, latent_size=par.parity_latent_size(self.info)),
                              self.work / name / spec.file)
        if self.parity:
            self.results[name] = {"fp32_vs_torch_max_abs": par.fp32_vs_torch(module, spec, raw, self.parity_inputs(name)),
                                  "int8_vs_fp32_rel": None}
        return raw

    def odd_side_parity(self, unet_graph: Any, raw: Path) -> float:
        """The fp32 UNet graph against torch at a latent side every halving rounds up (the parity side less one)."""
        from zoodip_export import onnx_export as ox
        from zoodip_export import parity as par

        inputs = dict(self.parity_inputs("unet"))
        inputs["sample"] = inputs["sample"][..., :-1]  # e.g. 16x15 latents: 15 -> 8 -> 4 -> 2 and back on SD
        return par.fp32_vs_torch(unet_graph, ox.GRAPH_SPECS["unet"], raw, inputs)

    def finish_one(self, name: str, raw: Path) -> None:
        from zoodip_export import onnx_export as ox
        from zoodip_export import parity as par
        from zoodip_export.quantize import graph_recipe, quantize_graph

        spec, staging = ox.GRAPH_SPECS[name], self.staging
        recipe = graph_recipe(self.recipe, name)
        if recipe != "fp32":
            self.log(f"quantizing {name} ({recipe})")
        # w4a32 picks each layer's width on the parity inputs (fixed and seeded, also without --no-parity).
        calibration = self.parity_inputs(name) if recipe == "w4a32" else None
        stats = quantize_graph(self.recipe, raw, staging / spec.file, graph=name, warn=False, calibration=calibration)
        data_file = spec.file + ".data"
        self.graphs[name] = _graph_entry(staging / spec.file, data_file if (staging / data_file).exists() else None)
        if "layers" in stats:  # the per-layer widths and the measured errors they were chosen by
            self.graphs[name]["quantization"] = {key: stats[key] for key in ("int4_blocks", "max_layer_error",
                                                                             "int4_conv_max_side", "int8_readers_of",
                                                                             "layers")}
        if self.parity and recipe != "fp32":
            self.results[name]["int8_vs_fp32_rel"] = par.quantized_vs_fp32(staging / spec.file, raw,
                                                                           self.parity_inputs(name), self.session)
        shutil.rmtree(raw.parent)


def _export_graphs(source: Path, staging: Path, info: dict[str, Any], recipe: str, *, seed: int,
                   parity: bool, log: _Progress) -> tuple[dict[str, Any], dict[str, Any]]:
    """Export, quantize and check the four graphs into ``staging``; returns (graphs, parity).

    One component is in memory at a time: load it, trace it to fp32 ONNX in a scratch folder,
    compare with torch, free torch, quantize into ``staging``, compare with fp32, drop the scratch.
    """
    import numpy as np

    from zoodip_export import onnx_export as ox
    from zoodip_export import parity as par

    exporter = _GraphExporter(staging, info, recipe, seed, parity, log)
    # Text encoder (+ the token embedding table the SDK looks prompts up in).
    text_encoder = load_checked("text encoder", ox.load_text_encoder, source / "text_encoder")
    table = text_encoder.text_model.embeddings.token_embedding.weight.detach().numpy().astype(np.float16)
    np.save(staging / TOKEN_EMBEDDINGS, table, allow_pickle=False)
    exporter.token_table = np.load(staging / TOKEN_EMBEDDINGS, mmap_mode="r")
    del table
    raw = exporter.export_one("text_encoder", ox.TextEncoderGraph(text_encoder.text_model, info["max_length"],
                                                                  clip_skip_states=True))
    del text_encoder
    exporter.finish_one("text_encoder", raw)

    unet_graph = ox.UNetGraph(load_checked("UNet", ox.load_unet, source / "unet"))
    info["unet_upsampling_follows_skips"] = unet_graph.upsampling_follows_skips  # image sides: see docs/export-format
    raw = exporter.export_one("unet", unet_graph)
    if parity and unet_graph.upsampling_follows_skips:
        exporter.results["unet"][par.ODD_SIDE_KEY] = exporter.odd_side_parity(unet_graph, raw)
    del unet_graph
    exporter.finish_one("unet", raw)

    vae = load_checked("VAE", ox.load_vae, source / "vae")
    raw_encoder = exporter.export_one("vae_encoder", ox.VaeEncoderGraph(vae))
    raw_decoder = exporter.export_one("vae_decoder", ox.VaeDecoderGraph(vae))
    del vae
    exporter.finish_one("vae_encoder", raw_encoder)
    exporter.finish_one("vae_decoder", raw_decoder)
    shutil.rmtree(exporter.work, ignore_errors=True)
    return exporter.graphs, exporter.results


def export_model(source: Path | None, out_dir: Path, *, tiny: bool = False, precision: str = DEFAULT_PRECISION,
                 recipe: str | None = None, seed: int = 0, parity: bool = True, sample_size: int | None = None,
                 progress: bool = True, overwrite: bool = False, curvature_samples: int | None = None,
                 config: Path | None = None, loras: Sequence[str | LoraSpec] = ()) -> dict[str, Any]:
    """Export ``source`` (a diffusers SD1.x/2.x folder, or a single-file ``.safetensors`` checkpoint in the original
    layout, whose architecture is ``config``'s, a diffusers folder, or SD1.5's: ``single_file``), or with ``tiny`` a
    seeded tiny model, to ``out_dir``.

    Returns the manifest (also written as ``out_dir/manifest.json``). Raises ``ZoodipError`` for
    bad inputs, before anything is written. ``curvature_samples``: draws averaged into the curvature
    subspace (0: none; None: ``zoodip_export.curvature.DEFAULT_CURVATURE_SAMPLES``, or its
    ``RANDOM_MODEL_CURVATURE_SAMPLES`` for the seeded random-weight models). ``loras``: ``FILE[:SCALE]`` (or
    ``LoraSpec``) fused into the weights first, in order (``zoodip_export.lora``).
    """
    check_export_requirements()
    precision, recipe = resolve_recipe(precision, recipe)
    specs = lora_specs(loras)
    check_export_args(source, tiny, curvature_samples, sample_size, config, seed, out_dir)
    out_dir = output_target(out_dir)
    check_out_dir(out_dir, overwrite, None if tiny else source)
    config = None if config is None else Path(config).expanduser().absolute()
    source, configs, source_entry = read_source(source, sample_size, seed, config)
    source_entry.update(lora_entries(specs))
    for warning in source_warnings(source, configs, config):  # (security notes too: under --quiet too)
        print(warning, file=sys.stderr)
    if recipe in NOT_SMOOTH_RECIPES:  # (the SDK's list: its training refuses these exports)
        from zoodip_export.quantize import DYNAMIC_INT8_WARNING
        print(DYNAMIC_INT8_WARNING, file=sys.stderr)

    log = _Progress(progress)
    created_parents = missing_parents(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = staging_folder(out_dir)
    try:
        with _quiet_libraries():
            if tiny or source.is_file() or specs:
                source, configs = _built_source(source, staging, seed, config, specs, log)
            info = model_info(configs, sample_size)
            graphs, parity_results = _export_graphs(source, staging, info, recipe, seed=seed, parity=parity, log=log)

        _write_tokenizer_and_scheduler(source, staging, configs, info)
        from zoodip_export.curvature import export_curvature

        with _quiet_libraries():
            curvature = export_curvature(source, staging, curvature_samples, "tiny" if tiny else source_entry["kind"],
                                         seed, log)
        _remove_built_source(staging)
        manifest = _manifest(staging, source_entry, precision, recipe, info, graphs, parity_results, curvature)
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        if parity_results:
            from zoodip_export.parity import format_parity_table

            log("parity:\n" + format_parity_table(parity_results))
        publish(staging, out_dir, overwrite)
    except BaseException as exc:
        _discard(staging, created_parents, exc, out_dir)
        raise
    log(f"done: {out_dir}")
    return manifest


def _discard(staging: Path, created_parents: list[Path], exc: BaseException, out_dir: Path) -> None:
    """Remove what a failed export made (the staging folder, the parents it created, innermost first); a write that
    failed (a full disk: reads are load_checked's) as one line naming where."""
    shutil.rmtree(staging, ignore_errors=True)
    for parent in created_parents:
        with contextlib.suppress(OSError):
            parent.rmdir()
    failure = export_write_failure(exc, staging, out_dir)
    if failure is not None:
        raise failure from None


def _remove_built_source(staging: Path) -> None:
    """The folders ``_built_source`` wrote (the tiny model's, a single file's, the LoRAs'), done with."""
    for scratch in ("_source", "_source-config", "_source-lora"):
        shutil.rmtree(staging / scratch, ignore_errors=True)
    (staging / "_source-checkpoint.safetensors").unlink(missing_ok=True)


def _built_source(source: Path | None, staging: Path, seed: int, config: Path | None, specs: Sequence[LoraSpec],
                  log: _Progress) -> tuple[Path, dict[str, dict[str, Any]]]:
    """The folder an export reads where it has to be written first (the tiny model, a single file converted, LoRAs
    fused into either or into a folder) and its configs."""
    from zoodip_export.single_file import single_file_to_folder
    from zoodip_export.tiny import build_tiny_sd_folder

    folder = source
    if source is None:
        log("building the tiny random model")
        folder = build_tiny_sd_folder(staging / "_source", seed=seed)
    elif source.is_file():
        log(f"converting the single-file checkpoint {source.name} (diffusers' conversion, offline)")
        folder = single_file_to_folder(source, staging / "_source", config, log)
    if specs:
        folder = fuse_loras(folder, staging / "_source-lora", specs, log)
    return folder, check_source(folder)


def _write_tokenizer_and_scheduler(source: Path, staging: Path, configs: dict[str, dict[str, Any]],
                                   info: dict[str, Any]) -> None:
    """The tokenizer folder and the scheduler config (with the model's prediction type, as diffusers' pipelines read it)
    into ``staging``."""
    from zoodip_export.clip_vocab import copy_tokenizer_folder

    copy_tokenizer_folder(source / "tokenizer", staging / "tokenizer")
    scheduler, _ = pipeline_scheduler_config(configs["scheduler"])
    scheduler.setdefault("prediction_type", info["prediction_type"])
    (staging / SCHEDULER_CONFIG).write_text(json.dumps(scheduler, indent=2) + "\n", encoding="utf-8")


def _manifest(staging: Path, source_entry: dict[str, Any], precision: str, recipe: str, info: dict[str, Any],
              graphs: dict[str, Any], parity_results: dict[str, Any], curvature: dict[str, Any] | None) -> dict[str, Any]:
    """The export's manifest: what it is, where it came from, its graphs and files (with sha256), its checks."""
    import numpy as np

    from zoodip_export.quantize import RECIPE_REVISION, SESSION_SETTINGS

    table = np.load(staging / TOKEN_EMBEDDINGS, mmap_mode="r")
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "source": source_entry,
        "precision": precision,
        "recipe": recipe,
        "recipe_revision": RECIPE_REVISION[recipe],
        "model": info,
        "graphs": graphs,
        "session": dict(SESSION_SETTINGS[recipe]),
        "token_embeddings": {"file": TOKEN_EMBEDDINGS, "dtype": "float16", "shape": list(table.shape)},
        "tokenizer": "tokenizer",
        "scheduler": SCHEDULER_CONFIG,
        "files": _file_table(staging),
        "versions": _versions(),
        "parity": parity_results,
    }
    if curvature is not None:
        manifest["curvature"] = curvature
    del table
    return manifest


# --- command line --------------------------------------------------------------------------------


def _parser(prog: str = "python export/export_model.py") -> argparse.ArgumentParser:
    from zoodip_export.curvature import DEFAULT_CURVATURE_SAMPLES
    from zoodip_export.quantize import DEFAULT_RECIPE, RECIPES

    from zoodip.console import OneLineParser  # one line for a bad flag; either spelling of a flag's name

    parser = OneLineParser(
        prog=prog,
        description="Export a diffusers Stable Diffusion 1.x/2.x folder to zoodip's ONNX folder (4-bit/INT8 weights).",
        epilog=f"examples: {prog} ./stable-diffusion-v1-5 ./sd15-zoodip   |   {prog} --tiny ./tiny-zoodip",
    )
    parser.add_argument("paths", nargs="+", metavar="PATH",
                        help="SOURCE OUT_DIR (SOURCE: a diffusers folder, or a single-file .safetensors checkpoint as "
                             "A1111 keeps them; with --tiny: OUT_DIR only)")
    parser.add_argument("--config", default=None, metavar="FOLDER",
                        help="a single file's architecture: a diffusers folder of its kind, whose configs and tokenizer "
                             "are read (default for SD1.x files: SD1.5's; SD2.x files need it)")
    parser.add_argument("--lora", action="append", default=[], metavar="FILE[:SCALE]",
                        help="a LoRA (kohya's/A1111's or diffusers' .safetensors) fused into the weights first, at SCALE "
                             "(default 1; A1111's <lora:NAME:SCALE>); repeat for several")
    parser.add_argument("--tiny", action="store_true", help="export a small seeded random SD-shaped model")
    parser.add_argument("--precision", default=None, choices=PRECISIONS,
                        help=f"weight precision (default: {DEFAULT_PRECISION}, or what --recipe implies)")
    parser.add_argument("--recipe", default=None, choices=RECIPES,
                        help=f"quantization recipe (default {DEFAULT_RECIPE[DEFAULT_PRECISION]} for {DEFAULT_PRECISION}; w4a32: 4-bit weights where "
                             "they hold, int8 elsewhere; w8a32: int8 weights everywhere; "
                             "dynamic-int8 breaks forward-only gradients)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the tiny model and of the parity inputs")
    parser.add_argument("--sample-size", type=int, default=None,
                        help="latent side recorded for the SDK (default: the UNet's, 64 for SD1.5)")
    parser.add_argument("--curvature-samples", type=int, default=None, metavar="N",
                        help="draws averaged into the curvature subspace that lets training search few dimensions "
                             f"(default {DEFAULT_CURVATURE_SAMPLES}, reused from SRC_FOLDER/curvature.safetensors when it was "
                             "computed for these weights; 0: none, training then searches the whole space)")
    parser.add_argument("--no-parity", dest="parity", action="store_false", help="skip the numerical parity checks")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT_DIR")
    parser.add_argument("--quiet", action="store_true", help="no progress messages")
    return parser


# What an empty path of the command line is told to name (Path("") would be the current folder).
_EMPTY_ADVICE = {"SOURCE": "the diffusers folder or .safetensors checkpoint to export",
                 "OUT_DIR": "the folder to export into", "--config": "a diffusers folder of the checkpoint's kind, or drop --config"}


def main(argv: list[str] | None = None, prog: str = "python export/export_model.py") -> int:
    """The exporter's command line (``python export/export_model.py``; ``zoodip export`` passes its own ``prog``)."""
    from zoodip.console import interrupt_on_termination, print_error, print_interrupted, said_as_given
    from zoodip.foreign_flags import foreign_flag_problem

    argv, parser, args = sys.argv[1:] if argv is None else list(argv), None, None
    try:
        check_export_requirements()  # before the parser, whose recipe choices import onnx
        from zoodip_export.quantize import RECIPE_PRECISION

        parser = _parser(prog)
        args, unknown = parser.parse_known_args(argv)
        if unknown:  # (diffusers' flag names said with zoodip's way to give the same)
            raise ZoodipError(foreign_flag_problem(unknown, "export") or unknown_arguments_problem(unknown, prog))
        expected = 1 if args.tiny else 2
        if len(args.paths) != expected:
            usage = "--tiny OUT_DIR" if args.tiny else "SOURCE OUT_DIR"
            raise ZoodipError(f"expected {usage}, got {len(args.paths)} path(s)")
        given = {**dict(zip(("SOURCE", "OUT_DIR")[-expected:], args.paths)), "--config": args.config}
        blank = next((name for name, path in given.items() if path is not None and not path.strip()), None)
        if blank is not None:  # Path("") would be the current folder
            raise ZoodipError(f"{blank} is empty: name {_EMPTY_ADVICE[blank]}")
        source = None if args.tiny else Path(args.paths[0])
        precision = args.precision or RECIPE_PRECISION.get(args.recipe or "", DEFAULT_PRECISION)
        with interrupt_on_termination():  # SIGTERM too removes the staging folder, not only the next export
            export_model(source, Path(args.paths[-1]), tiny=args.tiny, precision=precision, recipe=args.recipe,
                         seed=args.seed, parity=args.parity, sample_size=args.sample_size, progress=not args.quiet,
                         overwrite=args.overwrite, curvature_samples=args.curvature_samples,
                         config=None if args.config is None else Path(args.config), loras=args.lora)
    except ZoodipError as exc:  # (its paths as the user typed them, not as the export made them absolute)
        paths = [] if args is None else [*args.paths, *args.lora, *([args.config] if args.config else [])]
        return print_error(said_as_given(export_flag_words(exc.parts, parser, argv), paths))
    except KeyboardInterrupt as exc:  # (the staging folder is gone: export_model removes it)
        return print_interrupted("nothing was written", exc)
    print(Path(args.paths[-1]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

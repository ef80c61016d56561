#!/usr/bin/env python3
"""Convert a zoodip export folder to ORT format (.ort) for onnxruntime mobile / reduced-size builds.

    python android_harness/convert_to_ort.py EXPORT_DIR OUT_DIR [--level extended|basic] [--no-verify]

OUT_DIR is a complete export folder (docs/export-format.md) whose manifest points to ``*.ort``
graphs; ``zoodip personalize --model OUT_DIR`` loads it like any other export. It also holds

    required_operators.config            ops list for a reduced-size onnxruntime build
                                         (build.sh --minimal_build --include_ops_by_config ...)
    required_operators_and_types.config  the same with per-op types (--enable_reduced_operator_type_support)
    ort_conversion.json                  sizes, int8 weight bytes, op counts and the verification numbers

The conversion runs each graph through onnxruntime with the session settings the export's manifest
asks for (for W8A32: ``session.disable_quant_qdq=1`` and ConstantFolding disabled), so the saved
graph keeps its int8 weights and DequantizeLinear nodes, and no activation-quantized kernels.
The layout transformer (NCHWc) is excluded because it is x86-specific. Then, unless --no-verify, it
checks on random inputs that every .ort graph gives the .onnx graph's outputs, and that the
finite-difference losses L(v), L(v + mu z_i) of the denoising loss (the quantities the training
step uses) agree between the two formats.

Needs the full onnxruntime Python package (any platform); the SDK never imports this file.
The .ort export is for onnxruntime minimal (reduced-size) builds, which read only ORT format. With the
full onnxruntime, keep the .onnx export: opened by path, an .ort file is read into memory and its
initializers copied (SD1.5 UNet: 1.8 GB load peak vs ~0.1 GB for the .onnx; android_harness/README.md).
"""
from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if (REPO / "sdk" / "zoodip").is_dir() and str(REPO / "sdk") not in sys.path:
    sys.path.insert(0, str(REPO / "sdk"))

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402

from zoodip.console import OneLineParser, print_error, script_main  # noqa: E402
from zoodip.errors import ZoodipError  # noqa: E402
from zoodip.manifest import MANIFEST  # noqa: E402
from zoodip.model import GRAPHS, ExportedModel, RuntimeOptions, read_manifest  # noqa: E402
from zoodip.paths import lies_within  # noqa: E402
from zoodip.runtime_options import NOT_SMOOTH_RECIPES  # noqa: E402
from zoodip.export_folder import check_out_dir, output_target, publish, staging_folder  # noqa: E402

LEVELS = {
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
}
# x86-only layout transform: never in a model meant for ARM.
ALWAYS_DISABLED = ["NchwcTransformer"]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def _session_options(manifest: dict[str, Any], level: str) -> tuple[ort.SessionOptions, list[str]]:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = LEVELS[level]
    session = manifest.get("session", {}) or {}
    if session.get("disable_quant_qdq"):
        opts.add_session_config_entry("session.disable_quant_qdq", "1")
    disabled = list(session.get("disabled_optimizers", [])) + ALWAYS_DISABLED
    return opts, disabled


def ort_graph_stats(path: Path) -> dict[str, Any]:
    """Initializer dtypes/bytes and op counts of an .ort file (read from its flatbuffer)."""
    from onnxruntime.tools.ort_format_model.ort_flatbuffers_py import fbs

    buf = bytearray(path.read_bytes())
    graph = fbs.InferenceSession.InferenceSession.GetRootAsInferenceSession(buf, 0).Model().Graph()
    names = {v: k for k, v in vars(fbs.TensorDataType.TensorDataType).items() if not k.startswith("_")}
    counts: Counter = Counter()
    nbytes: Counter = Counter()
    for i in range(graph.InitializersLength()):
        tensor = graph.Initializers(i)
        dtype = names.get(tensor.DataType(), str(tensor.DataType())).lower()
        counts[dtype] += 1
        nbytes[dtype] += tensor.RawDataLength()
    ops: Counter = Counter()
    for i in range(graph.NodesLength()):
        node = graph.Nodes(i)
        domain = (node.Domain() or b"").decode()
        ops[(domain + "." if domain else "") + node.OpType().decode()] += 1
    return {"initializers": dict(counts), "initializer_bytes": dict(nbytes), "ops": dict(sorted(ops.items()))}


def convert_graph(src: Path, dst: Path, manifest: dict[str, Any], level: str) -> None:
    opts, disabled = _session_options(manifest, level)
    opts.optimized_model_filepath = str(dst)
    opts.add_session_config_entry("session.save_model_format", "ORT")
    try:
        ort.InferenceSession(str(src), sess_options=opts, providers=["CPUExecutionProvider"], disabled_optimizers=disabled)
    except Exception as exc:  # onnxruntime raises several unrelated types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        hint = " (an ORT format file holds at most 2 GB: use the int8 export)" if src.stat().st_size > (1 << 30) else ""
        raise ZoodipError(f"onnxruntime cannot convert {src} to ORT format: {first}{hint}") from None
    if not dst.is_file():
        raise ZoodipError(f"onnxruntime wrote no {dst}: this onnxruntime build cannot save ORT format")


def write_operator_configs(ort_files: list[Path], out_dir: Path) -> None:
    import logging

    from onnxruntime.tools.ort_format_model import create_config_from_models

    logging.getLogger("ort_format_model.utils").setLevel(logging.WARNING)  # it logs the staging path
    for name, typed in (("required_operators.config", False), ("required_operators_and_types.config", True)):
        create_config_from_models(ort_files, out_dir / name, typed)
        # The generator writes absolute paths of the models in a comment: keep only the file names.
        path = out_dir / name
        lines = [f"# - {Path(line[4:].strip()).name}" if line.startswith("# - ") else line
                 for line in path.read_text().splitlines()]
        path.write_text("\n".join(lines) + "\n")


def _random_inputs(session: ort.InferenceSession, model: ExportedModel, rng: np.random.Generator) -> dict[str, np.ndarray]:
    symbols = {"batch": 1, "latent_height": model.sample_size, "latent_width": model.sample_size,
               "height": model.default_resolution, "width": model.default_resolution, "text_length": model.max_length}
    feeds = {}
    for item in session.get_inputs():
        shape = [d if isinstance(d, int) else symbols.get(str(d), model.sample_size) for d in item.shape]
        if item.name == "timestep":
            feeds[item.name] = np.full(shape, 700.0, np.float32)
        else:
            feeds[item.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def verify(onnx_dir: Path, ort_dir: Path, directions: int = 4, mu: float = 1e-3, threads: int = 1,
           seed: int = 0) -> dict[str, Any]:
    """Outputs of every graph and the finite-difference losses, .onnx vs .ort, on random inputs."""
    from zoodip.trainer import DenoisingLoss

    options = RuntimeOptions(threads=threads)
    a = ExportedModel.load(onnx_dir, options)
    b = ExportedModel.load(ort_dir, options)
    rng = np.random.default_rng(seed)
    report: dict[str, Any] = {"graphs": {}}
    for name in GRAPHS:
        sa, sb = a.session(name), b.session(name)
        feeds = _random_inputs(sa, a, rng)
        ya, yb = sa.run(None, feeds)[0], sb.run(None, feeds)[0]
        report["graphs"][name] = {
            "max_abs_diff": float(np.max(np.abs(ya - yb))),
            "rel_diff": float(np.linalg.norm(ya - yb) / max(np.linalg.norm(ya), 1e-30)),
            "bit_identical": bool(np.array_equal(ya, yb)),
        }
        a.release(name)
        b.release(name)

    # The training step's quantities: L(v) and L(v + mu z_i) on one fixed (x_t, t, target, prompt).
    token = "<ort-check>"
    losses = {}
    for key, model in (("onnx", a), ("ort", b)):
        placeholder = model.tokenizer.add_placeholder(token)[0]
        ids = model.tokenizer(f"a photo of a {token}")[0]
        init = model.tokenizer.token_ids_for_word("dog")
        v0 = np.asarray(model.token_embeddings[init[0]], np.float32)
        prng = np.random.default_rng(seed + 1)
        shape = (model.latent_channels, model.sample_size, model.sample_size)
        x_t = prng.standard_normal(shape).astype(np.float32)
        target = prng.standard_normal(shape).astype(np.float32)
        z = prng.standard_normal((directions, model.hidden_size)).astype(np.float32)
        candidates = np.concatenate([v0[None], v0[None] + mu * z]).astype(np.float32)
        losses[key] = DenoisingLoss(model, placeholder, batched=True)(ids, candidates, x_t, 700, target)
    fd = {key: (value[1:] - value[0]) / mu for key, value in losses.items()}
    report["losses"] = {
        "mu": mu, "directions": directions,
        "onnx": [float(x) for x in losses["onnx"]], "ort": [float(x) for x in losses["ort"]],
        "max_abs_loss_diff": float(np.max(np.abs(losses["onnx"] - losses["ort"]))),
        "finite_differences_onnx": [float(x) for x in fd["onnx"]],
        "finite_differences_ort": [float(x) for x in fd["ort"]],
        "max_rel_fd_diff": float(np.max(np.abs(fd["onnx"] - fd["ort"]) / np.maximum(np.abs(fd["onnx"]), 1e-12))),
        "bit_identical": bool(np.array_equal(losses["onnx"], losses["ort"])),
    }
    return report


def convert_export(export_dir: str | Path, out_dir: str | Path, level: str = "extended", check: bool = True,
                   overwrite: bool = False, log=print) -> dict[str, Any]:
    """Write OUT_DIR: the export with .ort graphs, operator configs and ``ort_conversion.json``. OUT_DIR is checked
    as ``zoodip export`` checks its own (``--overwrite`` replaces an earlier export only, never a folder holding
    EXPORT_DIR) and published the same way, in one rename at the end."""
    if level not in LEVELS:
        raise ZoodipError(f"unknown --level {level!r}: use one of {', '.join(LEVELS)}")
    manifest = read_manifest(export_dir)
    export_dir, out_dir = Path(export_dir), output_target(out_dir)
    if lies_within(out_dir, export_dir):
        raise ZoodipError(f"OUT_DIR {out_dir} is EXPORT_DIR or lies inside it: choose a folder outside the export")
    check_out_dir(out_dir, overwrite, source=export_dir)
    if manifest.get("recipe") in NOT_SMOOTH_RECIPES:  # (the recipes the SDK's training refuses)
        log(f"warning: the {manifest['recipe']} recipe quantizes activations at run time; its losses are not smooth "
            "at the finite-difference scale (use an export with the default recipe, w4a32, or with w8a32)")

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = staging_folder(out_dir)  # (and those of killed conversions removed)
    try:
        new = json.loads(json.dumps(manifest))
        graph_files = {info["file"] for info in manifest["graphs"].values()}
        graph_files |= {info["external_data"] for info in manifest["graphs"].values() if info.get("external_data")}
        # Everything but the graphs is copied as it is.
        for name in manifest["files"]:
            if name in graph_files:
                continue
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(export_dir / name, staging / name)
        sizes: dict[str, Any] = {}
        ort_files = []
        for name in GRAPHS:
            info = manifest["graphs"][name]
            src = export_dir / info["file"]
            dst_name = Path(info["file"]).with_suffix(".ort").name
            if Path(info["file"]).suffix == ".ort":
                raise ZoodipError(f"{export_dir} already holds ORT graphs ({info['file']})")
            started = time.perf_counter()
            convert_graph(src, staging / dst_name, manifest, level)
            onnx_bytes = src.stat().st_size + ((export_dir / info["external_data"]).stat().st_size if info.get("external_data") else 0)
            stats = ort_graph_stats(staging / dst_name)
            sizes[name] = {"onnx_bytes": onnx_bytes, "ort_bytes": (staging / dst_name).stat().st_size,
                           "seconds": round(time.perf_counter() - started, 2), **stats}
            log(f"{name}: {info['file']} {onnx_bytes / 1e6:.2f} MB -> {dst_name} {sizes[name]['ort_bytes'] / 1e6:.2f} MB; "
                f"int8 weights {stats['initializer_bytes'].get('int8', 0) / 1e6:.2f} MB, "
                f"DequantizeLinear nodes {stats['ops'].get('DequantizeLinear', 0)}")
            new["graphs"][name]["file"] = dst_name
            new["graphs"][name]["external_data"] = None
            ort_files.append(staging / dst_name)
        write_operator_configs(ort_files, staging)

        new["mobile"] = {
            "format": "ort", "optimization_level": level,
            "disabled_optimizers": _session_options(manifest, level)[1],
            "converted_with_onnxruntime": ort.__version__,
            "source_files": {info["file"]: manifest["files"].get(info["file"], {}).get("sha256")
                             for info in manifest["graphs"].values()},
            "required_operators": "required_operators.config",
            "required_operators_and_types": "required_operators_and_types.config",
        }
        files = {}
        for path in sorted(p for p in staging.rglob("*") if p.is_file()):
            rel = path.relative_to(staging).as_posix()
            files[rel] = {"bytes": path.stat().st_size, "sha256": _sha256(path)}
        new["files"] = files
        (staging / MANIFEST).write_text(json.dumps(new, indent=2) + "\n", encoding="utf-8")

        report: dict[str, Any] = {"level": level, "onnxruntime": ort.__version__, "graphs": sizes,
                                  "total_onnx_bytes": sum(s["onnx_bytes"] for s in sizes.values()),
                                  "total_ort_bytes": sum(s["ort_bytes"] for s in sizes.values())}
        if check:
            log("verifying: .ort vs .onnx outputs and finite-difference losses ...")
            report["verification"] = verify(export_dir, staging)
            for name, item in report["verification"]["graphs"].items():
                log(f"  {name}: max |onnx - ort| = {item['max_abs_diff']:.3g} (bit-identical: {item['bit_identical']})")
            lv = report["verification"]["losses"]
            log(f"  losses L(v), L(v+mu z_i): max |diff| = {lv['max_abs_loss_diff']:.3g}, finite differences max rel "
                f"diff = {lv['max_rel_fd_diff']:.3g} (bit-identical: {lv['bit_identical']})")
        (staging / "ort_conversion.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        publish(staging, out_dir, overwrite)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    log(f"wrote {out_dir} (graphs {report['total_onnx_bytes'] / 1e6:.2f} MB .onnx -> {report['total_ort_bytes'] / 1e6:.2f} MB .ort)")
    return report


@script_main("OUT_DIR was not written (an earlier conversion there is kept as it was)")
def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="python android_harness/convert_to_ort.py", description=__doc__.splitlines()[0])
    parser.add_argument("export_dir")
    parser.add_argument("out_dir")
    parser.add_argument("--level", choices=sorted(LEVELS), default="extended",
                        help="graph optimization level baked into the .ort files (default: extended)")
    parser.add_argument("--no-verify", action="store_true", help="skip the .onnx vs .ort comparison")
    parser.add_argument("--overwrite", action="store_true")
    try:
        args = parser.parse_args(argv)
        convert_export(args.export_dir, args.out_dir, level=args.level, check=not args.no_verify,
                       overwrite=args.overwrite, log=lambda m: print(m, file=sys.stderr))
    except ZoodipError as exc:
        return print_error(exc)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""An export folder's manifest (docs/export-format.md): its format, the graphs it must list, and the checks of its
fields, types and in-folder paths, one line per problem, before any file is opened."""
from __future__ import annotations

import json
import math
import os
import posixpath
from pathlib import Path
from typing import Any

from .errors import Given, ZoodipError
from .paths import lies_within, set_aside_note, why_missing
from .tokenizer_files import TOKENIZER_FILES, VOCABULARY_FILES
from .json_text import parse_json

FORMAT = "zoodip-export"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"  # the file that makes a folder an export (docs/export-format.md)
GRAPHS = ("text_encoder", "unet", "vae_encoder", "vae_decoder")
# A manifest holds a few settings and one short entry per graph, file and quantized layer: an SD-sized export's is
# far below this. A larger one is damaged or hostile, refused before it is read whole into memory.
MAX_MANIFEST_BYTES = 16 << 20


def _bad_manifest(path: Path, what: str) -> ZoodipError:
    return ZoodipError(f"{path} {what}: the export is damaged or foreign, re-run 'zoodip export'")


def _inside(folder: Path, relative: object, path: Path, field_name: str) -> Path:
    """``folder / relative`` for a manifest path that must stay inside the folder (no absolute, no '..')."""
    if not isinstance(relative, str) or not relative.strip() or "\0" in relative:
        raise _bad_manifest(path, f"has {field_name} = {relative!r}, not a file name")
    try:
        inside = not Path(relative).is_absolute() and lies_within(folder / relative, folder)
    except OSError:  # a loop of links on the way
        raise ZoodipError(f"{folder / relative} (in the manifest: {field_name}) is a loop of symbolic links: point the "
                          "link at a real file, or re-run 'zoodip export'") from None
    if not inside:
        raise _bad_manifest(path, f"points {field_name} outside the export folder ({relative!r})")
    return folder / relative


def _typed(obj: dict[str, Any], key: str, kinds: tuple[type, ...], path: Path, where: str, required: bool = True,
           positive: bool = False) -> Any:
    """``obj[key]`` checked to be one of ``kinds`` (bool never counts as a number)."""
    if key not in obj or obj[key] is None:
        if required:
            raise _bad_manifest(path, f"lacks {where}{key}")
        return None
    value = obj[key]
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        raise _bad_manifest(path, f"has {where}{key} = {value!r} of the wrong type")
    if positive and not (value > 0 and (not isinstance(value, float) or value < float("inf"))):
        raise _bad_manifest(path, f"has {where}{key} = {value!r}, not a positive number")
    return value


def latent_scale_problem(value: object) -> str | None:
    """None for a usable VAE latent scale (``scaling_factor``: a positive finite number), else what is wrong with it.
    The one rule for the manifest's copy and for the source folder an export reads it from."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
        return f"{value!r}, not a positive number"
    return None


def check_manifest(manifest: dict[str, Any], folder: Path, path: Path) -> None:
    """Types, required fields and in-folder paths of a manifest (docs/export-format.md); one line per problem."""
    for key in ("model", "graphs", "files", "token_embeddings"):
        _typed(manifest, key, (dict,), path, "")
    _typed(manifest, "session", (dict,), path, "", required=False)
    model = manifest["model"]
    for key in ("hidden_size", "latent_channels", "vae_scale_factor", "sample_size"):
        _typed(model, key, (int,), path, "model.", positive=True)
    for key in ("cross_attention_dim", "max_length"):
        _typed(model, key, (int,), path, "model.", required=False, positive=True)
    halvings = _typed(model, "unet_halvings", (int,), path, "model.", required=False)
    if halvings is not None and not (0 <= halvings <= 8 and model["sample_size"] % 2 ** halvings == 0):
        raise _bad_manifest(path, f"has model.unet_halvings = {halvings}, not 0 to 8 or more than its sample_size allows")
    _typed(model, "unet_upsampling_follows_skips", (bool,), path, "model.", required=False)
    scale_problem = latent_scale_problem(_typed(model, "scaling_factor", (int, float), path, "model."))
    if scale_problem:
        raise _bad_manifest(path, f"has model.scaling_factor = {scale_problem}")
    _typed(model, "prediction_type", (str,), path, "model.", required=False)
    files = manifest["files"]
    for name, info in files.items():
        _inside(folder, name, path, "a files entry")
        if not isinstance(info, dict):
            raise _bad_manifest(path, f"has files[{name!r}] = {info!r}, not an object")
        size = _typed(info, "bytes", (int,), path, f"files[{name!r}].", required=False)
        if size is not None and size < 0:
            raise _bad_manifest(path, f"has a negative size for {name!r}")
        digest = _typed(info, "sha256", (str,), path, f"files[{name!r}].")  # (export lists every file's)
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise _bad_manifest(path, f"has files[{name!r}].sha256 = {digest!r}, not a sha256")
    for name in GRAPHS:
        graph = _typed(manifest["graphs"], name, (dict,), path, "graphs.")
        for key in ("file", "external_data"):
            relative = _typed(graph, key, (str,), path, f"graphs.{name}.", required=key == "file")
            if relative is not None:
                _inside(folder, relative, path, f"graphs.{name}.{key}")
                if not _listed(folder, relative, files):  # every weight file is size- and hash-checked
                    raise _bad_manifest(path, f"does not list graphs.{name}.{key} {relative!r} among its files")
        _typed(graph, "inputs", (dict,), path, f"graphs.{name}.", required=False)
    table = _typed(manifest["token_embeddings"], "file", (str,), path, "token_embeddings.")
    _inside(folder, table, path, "token_embeddings.file")
    for key in ("tokenizer", "scheduler"):
        _inside(folder, _typed(manifest, key, (str,), path, ""), path, key)
    tokenizer = manifest["tokenizer"]
    read = {"token_embeddings.file": table, "scheduler": manifest["scheduler"],  # what the SDK reads: hash-checked
            **{f"tokenizer's {name}": f"{tokenizer}/{name}" for name in VOCABULARY_FILES}}
    for key, relative in read.items():
        if not _listed(folder, relative, files):
            raise _bad_manifest(path, f"does not list {key} {relative!r} among its files")
    curvature = _typed(manifest, "curvature", (dict,), path, "", required=False)
    if curvature is not None:
        relative = _typed(curvature, "file", (str,), path, "curvature.")
        _inside(folder, relative, path, "curvature.file")
        if not _listed(folder, relative, files):
            raise _bad_manifest(path, f"does not list curvature.file {relative!r} among its files")
    _check_source(_typed(manifest, "source", (dict,), path, "", required=False) or {}, path)
    session = manifest.get("session") or {}
    _typed(session, "disable_quant_qdq", (bool,), path, "session.", required=False)
    disabled = _typed(session, "disabled_optimizers", (list,), path, "session.", required=False)
    if disabled is not None and not all(isinstance(x, str) for x in disabled):
        raise _bad_manifest(path, "has session.disabled_optimizers that are not all names")


MAX_LORAS = 64  # far more than anyone fuses: a longer list is a damaged manifest


def _check_source(source: dict[str, Any], path: Path) -> None:
    """The source entry's LoRAs (``zoodip export --lora``): each a file name, its SHA-256 and a finite scale."""
    loras = _typed(source, "loras", (list,), path, "source.", required=False) or []
    if len(loras) > MAX_LORAS:
        raise _bad_manifest(path, f"lists {len(loras)} LoRAs under source.loras, more than {MAX_LORAS}")
    names = [str(entry.get("file")) for entry in loras if isinstance(entry, dict)]
    if len(set(names)) < len(names):  # each file is fused once, and named once in tags and Lora hashes
        raise _bad_manifest(path, "names one LoRA file twice under source.loras")
    for i, entry in enumerate(loras):
        where = f"source.loras[{i}]."
        if not isinstance(entry, dict):
            raise _bad_manifest(path, f"has source.loras[{i}] = {str(entry)[:40]!r}, not an object")
        if not str(_typed(entry, "file", (str,), path, where)).strip():
            raise _bad_manifest(path, f"has an empty {where}file")
        digest = _typed(entry, "sha256", (str,), path, where)
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise _bad_manifest(path, f"has {where}sha256 = {digest[:70]!r}, not a sha256")
        scale = _typed(entry, "scale", (int, float), path, where)
        if not (isinstance(scale, float) or abs(scale) < 1 << 53) or not math.isfinite(float(scale)):
            raise _bad_manifest(path, f"has {where}scale = {str(scale)[:40]}, not a finite number")


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """Read and check ``MANIFEST`` of an export folder (fields, paths, files present, sizes)."""
    if not str(folder).strip():
        raise ZoodipError("the export folder's path is empty: pass the folder 'zoodip export' wrote")
    folder = Path(folder)
    if folder.is_file():
        raise ZoodipError(Given(folder), " is a file, not an export folder: " + (f"export it once with 'zoodip export {folder.name} "
                          "OUT_DIR', then pass OUT_DIR" if folder.suffix.lower() in (".safetensors", ".ckpt") else f"pass the folder that holds {MANIFEST}"))
    if not folder.is_dir():
        raise ZoodipError("export folder ", Given(folder), f" {why_missing(folder)}" + (set_aside_note(folder)
                          or ": create it with 'zoodip export'"))
    path = folder / MANIFEST
    if not path.is_file():
        if (folder / "model_index.json").is_file():  # the diffusers folder itself, as diffusers' scripts take it
            raise ZoodipError(f"{folder} is a diffusers folder, not a zoodip export: convert it once with "
                              f"'zoodip export {folder} EXPORT_DIR' and pass EXPORT_DIR")
        if os.path.lexists(path):  # (there, but a folder or a pipe: not "no manifest.json")
            raise ZoodipError(f"{path} {why_missing(path)}, not the export's manifest file: re-run 'zoodip export'")
        raise ZoodipError(f"{folder} has no manifest.json: it is not a zoodip export (run 'zoodip export')")
    try:
        manifest = parse_json(manifest_text(path))
    except ValueError as exc:
        raise ZoodipError(f"{path} is not valid JSON ({exc}): re-run 'zoodip export'") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ZoodipError(f"{path} is not a zoodip export manifest: re-run 'zoodip export'")
    version = manifest.get("format_version")
    if isinstance(version, bool) or version != FORMAT_VERSION:  # (true is no 1, and "1" is said with its quotes)
        raise ZoodipError(
            f"{path} has format_version {json.dumps(version)}, this SDK reads {FORMAT_VERSION}: "
            "re-export with this version of zoodip"
        )
    for key in ("model", "graphs", "files", "token_embeddings", "tokenizer", "scheduler"):
        if key not in manifest:
            raise ZoodipError(f"{path} lacks '{key}': the export is incomplete, re-run 'zoodip export'")
    for name in GRAPHS:
        if not isinstance(manifest["graphs"], dict) or name not in manifest["graphs"]:
            raise ZoodipError(f"{path} lists no '{name}' graph: re-run 'zoodip export'")
    check_manifest(manifest, folder, path)
    for name, info in manifest["files"].items():
        file = folder / name
        if not file.is_file():
            why = why_missing(file)  # (a folder or a pipe where a file was: not "missing")
            raise ZoodipError(f"{file} is missing: the export folder is partial, re-run 'zoodip export'"
                              if why == "does not exist" else
                              f"{file} {why}, where the export has a file: the export is damaged, re-run 'zoodip export'")
        if "bytes" in info and file.stat().st_size != info["bytes"]:
            raise ZoodipError(
                f"{file} has {file.stat().st_size} bytes, the manifest says {info['bytes']}: "
                "the file is damaged, re-run 'zoodip export'"
            )
    return manifest


def manifest_text(path: Path) -> str:
    """The text of the manifest file ``path``, refused unread past ``MAX_MANIFEST_BYTES``."""
    try:
        size = path.stat().st_size
        if size > MAX_MANIFEST_BYTES:
            raise _bad_manifest(path, f"is {size >> 20} MB, far past any export's manifest (at most "
                                      f"{MAX_MANIFEST_BYTES >> 20} MB read)")
        return path.read_text(encoding="utf-8")
    except OSError as exc:  # (not its text: its permissions, or the disk)
        raise ZoodipError(f"cannot read {path} ({exc.strerror or exc}): check the file's permissions") from None
    except ValueError as exc:
        raise ZoodipError(f"{path} is not valid JSON ({exc}): re-run 'zoodip export'") from None


def unlisted_tokenizer_files(folder: Path, manifest: dict[str, Any]) -> list[str]:
    """The files the SDK reads from the export's tokenizer folder that its manifest does not list (none from an
    export: one would be read unchecked, e.g. a saved textual-inversion pipeline's added_tokens.json copied in)."""
    tokenizer = manifest["tokenizer"]
    read = [f"{tokenizer}/{name}" for name in TOKENIZER_FILES if (Path(folder) / tokenizer / name).exists()]
    return [posixpath.normpath(name) for name in read if not _listed(folder, name, manifest["files"])]


def _listed(folder: Path, relative: str, files: dict[str, Any]) -> bool:
    """Whether the file the SDK opens at ``folder / relative`` is one of ``files`` (hash-checked), however either is
    written ("./unet.onnx" is "unet.onnx"): compared as opened, links and ".." resolved, so that "link/../x" is not
    taken for "x" where the link leads elsewhere (a file no hash covers)."""
    return manifest_file(folder, relative) in {manifest_file(folder, name) for name in files}


def manifest_file(folder: Path, relative: str) -> Path:
    """The file a manifest path names, as the SDK opens it: links and ".." resolved (one key for every spelling)."""
    return Path(os.path.realpath(Path(folder) / relative))

"""What ``zoodip info PATH`` says: what an embedding file holds and how zoodip trained it, what an export folder
offers, or the settings an image was generated with. Each returns its lines; the CLI prints them."""
from __future__ import annotations

import os
from pathlib import Path

from .errors import CONTROL_ESCAPES, Given, ZoodipError
from .json_text import parse_json
from .paths import set_aside_note


def describe(path: str | Path) -> list[str]:
    """The lines ``zoodip info`` prints for ``path``, or a one-line error for what it cannot read."""
    from .embeddings import EMBEDDING_NAME
    from .images import IMAGE_EXTENSIONS
    from .model import MANIFEST

    if not str(path).strip():
        raise ZoodipError("the path is empty: pass an embedding file, an export folder or an image")
    path = Path(path)
    if not os.path.lexists(path) and set_aside_note(path):  # (an export killed while replacing it: not "a file")
        raise ZoodipError(Given(path), f" does not exist{set_aside_note(path)}")
    if path.is_dir() and os.path.lexists(path / MANIFEST):  # (not a file: the export's check says what it is)
        return describe_export(path)
    if path.is_dir() and (path / EMBEDDING_NAME).is_file():  # a personalize --output_dir
        raise ZoodipError(Given(path), " is a run folder: pass its embedding, ", Given(path / EMBEDDING_NAME))
    if path.is_dir():
        raise ZoodipError(Given(path), " is a folder: 'zoodip info' reads one embedding file, an export folder or an image")
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        return describe_image(path)
    return describe_embedding(path)


def describe_embedding(path: Path) -> list[str]:
    """Its token(s) and vectors, and for zoodip's files the run that made it."""
    from .embeddings import load_embeddings, read_embedding_metadata

    added, groups = load_embeddings([str(path)])
    vectors = added[groups[0][0]]
    names = [_one_line(name) for name in groups[0]]  # (the file's key or name: another's, escape sequences and all)
    lines = [f"token: {' or '.join(names)} ({vectors.shape[0]} vector{'s' if vectors.shape[0] != 1 else ''} "
             f"of width {vectors.shape[1]})" + (f"; {names[-1]} (the file's name, A1111's trigger word) only on a "
                                                "model whose vocabulary does not hold it" if len(names) > 1 else "")]
    meta = read_embedding_metadata(str(path))
    if "steps" not in meta:
        return lines + ["trained by: not recorded (not a zoodip file, or an older one)"]
    try:
        settings = parse_json(meta.get("settings", "{}"))
    except ValueError:
        settings = None
    said = {key: _one_line(meta.get(key, "?")) for key in ("steps", "forwards", "model_name", "model")}
    return lines + [f"trained: {said['steps']} steps, {said['forwards']} training forwards",
                    f"model: {said['model_name']} (manifest {said['model']})",
                    "settings: " + (", ".join(f"{_one_line(k)}={_one_line(v)}" for k, v in sorted(settings.items()))
                                    if isinstance(settings, dict) else "unreadable (the file's record is damaged)")]


def _one_line(value: object) -> str:
    """A value a file recorded, as one line (a newline in it would print as a line of its own)."""
    text = str(value)
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def describe_export(folder: Path) -> list[str]:
    """What an export folder holds and which generation features it offers (no weights read, sizes checked)."""
    from .extra_networks import fused_loras
    from .image_side import side_rule
    from .model import ExportedModel

    model = ExportedModel.load(folder, verify_hashes=False)
    manifest = model.manifest
    source = manifest.get("source") or {}
    layers = model.clip_skip_layers
    lines = [f"export: recipe {manifest.get('recipe', '?')} (revision {manifest.get('recipe_revision', 1)}), "
             f"from {source.get('kind', '?')}",
             f"model: text width {model.hidden_size}, {model.max_length} tokens, native {model.default_resolution} px, "
             f"{model.prediction_type} prediction",
             f"clip skip: up to {layers} (generate --clip-skip)" if layers else
             "clip skip: no (exported before it; re-export to use --clip-skip)",
             "long prompts: A1111's 75-token chunks (generate --prompt-weighting a1111)" if model.text_length_free else
             "long prompts: no, 77 tokens (exported before them; re-export to read A1111's chunks)",
             f"image sides: {side_rule(model)}",
             f"curvature subspace: {'yes' if model.curvature() is not None else 'no'}",
             "LoRAs fused in: " + (", ".join(f"{name} at {entry.get('scale', 1.0):g} (sha256 {str(entry.get('sha256'))[:12]})"
                                             for name, entry in fused_loras(model).items()) or "none")]
    # The manifest's words (recipe, source kind, LoRA names) are the export's author's: control characters shown escaped.
    return [line.translate(CONTROL_ESCAPES) for line in lines]


def describe_image(path: Path) -> list[str]:
    """The generation parameters an image holds (A1111's text, which zoodip writes too)."""
    from .image_parameters import read_parameters

    text = read_parameters(path)
    if text is None:
        return [f"{path} holds no generation parameters (zoodip and A1111 write them into the images they save, unless "
                "told not to)"]
    # Another tool's image may hold terminal control characters (escape sequences, BEL, carriage returns): shown escaped.
    return [line.translate(CONTROL_ESCAPES) for line in text.split("\n")]


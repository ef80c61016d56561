"""The models the benchmarks run on, built and exported once into a cache folder and reused.

    <cache>/sd15-random-s<seed>/          SD1.5 architecture, seeded random fp32 weights (diffusers folder)
    <cache>/sd15-s<seed>-<recipe>/         its export through export/export_model.py (parity off)
    <cache>/tiny-random-s<seed>/, <cache>/tiny-s<seed>-<recipe>/   the same for the tiny model (tests)

A folder is only used when complete: the source folder when its marker file exists, an export
when its manifest exists (export_model writes it last and publishes atomically).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

if str(Path(__file__).resolve().parents[1]) not in sys.path:  # imported from benchmarks/ or run as a file
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reference.repo import REPO  # noqa: E402

DEFAULT_CACHE = REPO / ".cache" / "bench"


def _log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def cache_lock(cache: Path) -> contextlib.AbstractContextManager[None]:
    """The cache folder's lock: two benchmark processes started together (one per half of the concepts, say)
    would otherwise build the same entry at once, and one would replace the folder the other reads."""
    from zoodip.paths import exclusive_lock

    return exclusive_lock(Path(cache) / ".lock")


def source_folder(cache: Path, tiny: bool, seed: int = 0) -> Path:
    """The diffusers folder (built on first use)."""
    from zoodip_export.tiny import SOURCE_MARKER, build_sd15_random_folder, build_tiny_sd_folder

    dest = Path(cache) / (f"tiny-random-s{seed}" if tiny else f"sd15-random-s{seed}")
    if (dest / SOURCE_MARKER).is_file():
        return dest
    if dest.exists():
        shutil.rmtree(dest)
    partial = dest.with_name(dest.name + f".partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    _log(f"building {'tiny' if tiny else 'SD1.5'} random-weight folder -> {dest}")
    started = time.perf_counter()
    (build_tiny_sd_folder if tiny else build_sd15_random_folder)(partial, seed=seed)
    partial.rename(dest)
    _log(f"built in {time.perf_counter() - started:.0f}s")
    return dest


def export_name(tiny: bool, recipe: str, chunks: int, seed: int = 0) -> str:
    """Cache folder name of an export: model, seed, quantization recipe, attention query chunks (0 = full)."""
    return f"{'tiny' if tiny else 'sd15'}-s{seed}-{recipe}-q{chunks}"


def is_current_export(folder: Path, recipe: str) -> bool:
    """``folder`` holds a finished export made with the current revision of ``recipe``."""
    from zoodip_export.quantize import RECIPE_REVISION

    from zoodip.manifest import MANIFEST

    manifest = Path(folder) / MANIFEST
    if not manifest.is_file():
        return False
    return json.loads(manifest.read_text(encoding="utf-8")).get("recipe_revision", 1) == RECIPE_REVISION[recipe]


def checked_export(folder: str | Path, flag: str) -> Path:
    """``folder`` as an export a benchmark runs on, checked before any work (its manifest, files and sizes): a
    missing or damaged one is one line naming ``flag``, not a traceback or a failure in a contender's process."""
    from zoodip.errors import ZoodipError
    from zoodip.manifest import read_manifest

    try:
        read_manifest(folder)
    except ZoodipError as exc:
        raise ZoodipError(f"{flag}: {exc}") from None
    return Path(folder)


def export_folder(cache: Path, tiny: bool, recipe: str, chunks: int, seed: int = 0) -> Path:
    """The export of the source folder with ``recipe`` and ``chunks`` (exported on first use, in this process)."""
    from zoodip_export import onnx_export
    from zoodip_export.export_model import export_model
    from zoodip_export.quantize import RECIPE_PRECISION

    from zoodip.manifest import MANIFEST

    dest = Path(cache) / export_name(tiny, recipe, chunks, seed)
    if is_current_export(dest, recipe):
        return dest
    if (dest / MANIFEST).is_file():
        _log(f"{dest.name} was exported with an older layout of recipe {recipe}: exporting it again")
    source = source_folder(cache, tiny, seed)
    onnx_export.ATTENTION_QUERY_CHUNKS = chunks
    _log(f"exporting {source.name} with recipe {recipe}, attention query chunks {chunks} -> {dest}")
    started = time.perf_counter()
    export_model(source, dest, precision=RECIPE_PRECISION[recipe], recipe=recipe, parity=True, seed=seed,
                 progress=not tiny, overwrite=True)
    _log(f"exported in {time.perf_counter() - started:.0f}s")
    return dest


if __name__ == "__main__":  # python benchmarks/_models.py CACHE tiny|sd15 RECIPE CHUNKS  (prints the folder)
    cache_arg, model_arg, recipe_arg, chunks_arg = sys.argv[1:5]
    print(export_folder(Path(cache_arg), model_arg == "tiny", recipe_arg, int(chunks_arg)))

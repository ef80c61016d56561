"""``export_model()``'s arguments that need no file, checked before anything is written: the precision and recipe,
the source or ``tiny``, the counts and the seed; and their refusals in the words of ``zoodip export``'s flags."""
from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from zoodip.console import dashed_path_hint
from zoodip.errors import ZoodipError
from zoodip.paths import check_utf8_path

PRECISIONS = ("int8", "fp32")
DEFAULT_PRECISION = "int8"
# The largest seed: NumPy's and torch's seeding take 0 to 2**64 - 1, and the tiny model seeds its parts seed + k.
MAX_SEED = 2**32 - 1


def resolve_recipe(precision: str, recipe: str | None) -> tuple[str, str]:
    """Check ``precision``/``recipe`` and fill in the default recipe of the precision."""
    from zoodip_export.quantize import DEFAULT_RECIPE, RECIPE_PRECISION

    if precision not in PRECISIONS:
        raise ZoodipError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    if recipe is None:
        return precision, DEFAULT_RECIPE[precision]
    if recipe not in RECIPE_PRECISION:
        raise ZoodipError(f"unknown recipe {recipe!r}: use one of {', '.join(RECIPE_PRECISION)}")
    if RECIPE_PRECISION[recipe] != precision:
        raise ZoodipError(f"recipe {recipe!r} does not go with precision {precision!r}")
    return precision, recipe


def check_export_args(source: Path | None, tiny: bool, curvature_samples: int | None, sample_size: int | None,
                      config: Path | None = None, seed: int = 0, out_dir: Path | None = None) -> None:
    """export_model()'s arguments that need no file, each refused in one line."""
    from zoodip_export.curvature import DEFAULT_CURVATURE_SAMPLES, MAX_CURVATURE_SAMPLES

    if tiny and source is not None:
        raise ZoodipError("give either a source folder or --tiny, not both")
    if tiny and config is not None:
        raise ZoodipError("--config is for a single-file checkpoint, not --tiny: drop it")
    if not tiny and source is None:
        raise ZoodipError("no source folder given (pass a diffusers Stable Diffusion folder, or --tiny)")
    if curvature_samples is not None and (isinstance(curvature_samples, bool) or not isinstance(curvature_samples, int)
                                          or not 0 <= curvature_samples <= MAX_CURVATURE_SAMPLES):
        raise ZoodipError(f"curvature_samples must be a whole number from 0 (no curvature subspace) to "
                          f"{MAX_CURVATURE_SAMPLES}, not {curvature_samples!r:.40} (default {DEFAULT_CURVATURE_SAMPLES}; "
                          "each draw costs backward passes of the whole model)")
    if sample_size is not None and (not isinstance(sample_size, int) or sample_size <= 0):
        raise ZoodipError(f"sample_size must be a positive integer, not {sample_size!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:  # (-1 and 2**64 were tracebacks
        # of NumPy's and torch's seeding, deep in the export)
        raise ZoodipError(f"seed must be a whole number from 0 to {MAX_SEED} (the seed of the tiny model, the parity "
                          f"inputs and the curvature draws), not {seed!r:.40}")
    for what, path in (("SOURCE", source), ("OUT_DIR", out_dir), ("--config", config)):
        if path is not None:  # (safetensors' own error said a weights file may be damaged)
            check_utf8_path(path, what, "safetensors (which reads and writes the weights)")


def export_flag_words(message: str | Sequence[str], parser: argparse.ArgumentParser | None, argv: Sequence[str]) -> str:
    """An export refusal (its text, or a ZoodipError's ``parts``) that names ``export_model()``'s arguments (``seed
    must be ...``) in the words of the command line (``--seed must be ...``): the names of the flags given in
    ``argv`` only, since a refusal of the source's own config (``sample_size 4096 latents ...`` of its
    unet/config.json) names no flag the user gave."""
    from zoodip.cli_flags import in_flag_words, parser_flags

    if parser is None:  # (the refusal came before the parser: what the export needs is missing)
        return message if isinstance(message, str) else " ".join("".join(message).split())
    given = {word.partition("=")[0].lstrip("-").replace("-", "_") for word in argv if word.startswith("--")}
    flags = {name: flag for name, flag in parser_flags(parser).items()
             if name in given or flag.lstrip("-").replace("-", "_") in given}
    return in_flag_words(message, flags=flags)


def unknown_arguments_problem(unknown: Sequence[str], prog: str) -> str:
    """argparse's leftovers as one line; a path that begins with '-' (a folder named -model), which argparse takes
    for a flag, is told how to write it (console.dashed_path_hint)."""
    return f"unrecognized arguments: {' '.join(unknown)}{dashed_path_hint(unknown)}: see '{prog} --help'"

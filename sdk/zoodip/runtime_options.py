"""How an export's onnxruntime sessions run (``RuntimeOptions``), and the check of those settings."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import ZoodipError

DEFAULT_SPIN_WAIT = False  # chosen by benchmarks/threads.py on a quiet and a busy machine (benchmarks/README.md)


@dataclass
class RuntimeOptions:
    """How the onnxruntime sessions run.

    ``threads``: intra-op threads (0 = onnxruntime's default, all cores).
    ``low_memory``: turn off onnxruntime's buffer reuse and memory-pattern planning. Buffer reuse
    hands a freed buffer to the next tensor of the same size, which keeps one fp32 copy of a weight
    per distinct weight shape alive across the whole UNet (benchmarks/README.md has the size for SD1.5);
    without it each dequantized weight is freed as soon as its layer has run. The CPU arena stays
    on: it recycles those freed buffers instead of faulting fresh pages in (faster, and smaller than
    glibc's fragmented heap: benchmarks/README.md, lever 5).
    ``memory_budget_mb``: the memory the process may use (MB). Forces ``low_memory``; loading a
    model whose text encoder and UNet weights alone exceed it is an error. The C heap then returns
    large blocks to the OS when they are freed (``zoodip.heap``). (The VAE decoder runs without the
    arena either way.) The trainer runs the n+1 evaluations one by one, and ``generate`` holds one graph at
    a time and decodes in tiles where the whole image would not fit (``zoodip.memory_plan``).
    ``spin_wait``: whether onnxruntime's idle intra-op threads spin (poll) instead of sleeping between
    parallel sections. Spinning saves a few microseconds per wake-up on an idle machine, but on a CPU
    shared with other processes the spinning threads take cores the busy threads need
    (benchmarks/threads.py measures both; benchmarks/README.md has the figures behind the default).
    ``extra_config``: onnxruntime session config entries (``add_session_config_entry``); one the export's recipe
    sets (``recipe_config_entries``) is refused at load if it would change the recipe's value.
    ``session_attributes``: onnxruntime ``SessionOptions`` attributes, set after everything else
    (e.g. ``{"enable_cpu_mem_arena": False}``); the memory benchmark's lever rows use these two.
    """

    threads: int = 0
    low_memory: bool = True
    spin_wait: bool = DEFAULT_SPIN_WAIT
    extra_config: dict[str, str] = field(default_factory=dict)
    memory_budget_mb: int | None = None
    session_attributes: dict[str, Any] = field(default_factory=dict)


# Recipes that quantize activations at run time: the loss is piecewise constant at the finite-difference scale
# (benchmarks/fd_fidelity.py measures it), so forward-only training on such an export would learn from noise.
NOT_SMOOTH_RECIPES = ("dynamic-int8",)


def check_trainable(manifest: dict[str, Any]) -> None:
    """Refuse training on an export whose recipe is in ``NOT_SMOOTH_RECIPES`` (generation may still use it)."""
    recipe = manifest.get("recipe")
    if recipe in NOT_SMOOTH_RECIPES:
        raise ZoodipError(f"this export's recipe {recipe} quantizes activations, so its loss is not smooth at the "
                          "finite-difference step mu and forward-only training would follow noise: train on an export "
                          "of the default recipe (w4a32) or w8a32 ('zoodip export --recipe')")


MAX_THREADS = 256  # more than any phone or desktop has cores; onnxruntime would start every one of them


def check_runtime_options(options: object) -> None:
    """``RuntimeOptions`` (or None) whose values are what they say, refused in one line before any session opens:
    a thread count onnxruntime can start, real booleans ("no" is not False), dicts where dicts belong."""
    if options is None:
        return
    if not isinstance(options, RuntimeOptions):
        raise ZoodipError(f"options must be a zoodip.model.RuntimeOptions, got {type(options).__name__}")
    threads = options.threads
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or not 0 <= threads <= MAX_THREADS:
        raise ZoodipError(f"threads must be an integer from 0 (all cores) to {MAX_THREADS}, got {threads!r}")
    for name in ("low_memory", "spin_wait"):
        if not isinstance(getattr(options, name), (bool, np.bool_)):
            raise ZoodipError(f"RuntimeOptions.{name} must be True or False, got {getattr(options, name)!r}")
    budget = options.memory_budget_mb
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or budget <= 0):
        raise ZoodipError(f"memory_budget_mb must be a positive number of MB, got {budget!r}")
    for name in ("extra_config", "session_attributes"):
        if not isinstance(getattr(options, name), dict):
            raise ZoodipError(f"RuntimeOptions.{name} must be a dict, got {type(getattr(options, name)).__name__}")


def apply_export_session(opts: Any, session: dict[str, Any] | None) -> list[str]:
    """Apply an export manifest's ``session`` entry (what its recipe needs from onnxruntime) to ``opts``.

    Returns the graph optimizers to disable (``InferenceSession(disabled_optimizers=...)``). The one
    reading of that entry: the exporter's parity sessions use it too.
    """
    session = session or {}
    for key, value in recipe_config_entries(session).items():
        opts.add_session_config_entry(key, value)
    return list(session.get("disabled_optimizers", []))


def recipe_config_entries(session: dict[str, Any] | None) -> dict[str, str]:
    """The onnxruntime session config entries an export manifest's ``session`` entry asks for."""
    return {"session.disable_quant_qdq": "1"} if (session or {}).get("disable_quant_qdq") else {}


def check_recipe_kept(extra_config: dict[str, Any], manifest: dict[str, Any]) -> None:
    """Refuse an ``extra_config`` entry that would replace one the export's recipe sets: onnxruntime keeps the last
    value, and the recipe's keep the loss smooth at the finite-difference scale (``SESSION_SETTINGS`` in the export)."""
    for key, value in recipe_config_entries(manifest.get("session")).items():
        if key in extra_config and str(extra_config[key]) != value:
            raise ZoodipError(f"RuntimeOptions.extra_config[{key!r}] = {extra_config[key]!r:.40} would undo this "
                              f"export's {manifest.get('recipe')} recipe, which sets it to {value!r} so that the loss "
                              "stays smooth for training: drop it")

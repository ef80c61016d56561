"""The loss stays smooth at mu under every runtime setting that changes how the training forwards run (threads,
spinning, low-memory sessions, the memory budget's one-by-one evaluations, the arena). The checks of tests/integration/test_fidelity.py, per setting."""
from __future__ import annotations

import numpy as np
import pytest

from benchmarks._fidelity import finite_difference_fidelity
from zoodip.model import ExportedModel, RuntimeOptions

torch = pytest.importorskip("torch")

# name -> (options, batched): what --threads, --spin-wait, --memory-budget/--sequential and the API's levers set.
SETTINGS = {
    "threads 2": (RuntimeOptions(threads=2), True),
    "threads 0 (all cores)": (RuntimeOptions(threads=0), True),
    "spin wait": (RuntimeOptions(threads=2, spin_wait=True), True),
    "buffer reuse on": (RuntimeOptions(threads=1, low_memory=False), True),
    "arena off": (RuntimeOptions(threads=1, session_attributes={"enable_cpu_mem_arena": False}), True),
    "sequential": (RuntimeOptions(threads=1), False),
    "memory budget": (RuntimeOptions(threads=1, memory_budget_mb=10_000), False),
}
# These change where and when arithmetic runs, not the arithmetic: the differences must be those of threads=1.
SAME_ARITHMETIC = ("threads 2", "threads 0 (all cores)", "spin wait", "buffer reuse on", "arena off")


def fidelity(export, source, photos, options=None, batched=True):
    return finite_difference_fidelity(export, source, photos, directions=16, options=options, batched=batched)


@pytest.mark.parametrize("name", list(SETTINGS))
def test_finite_differences_stay_smooth_under_each_runtime_setting(tiny_sd_folder, tiny_export, photos, name):
    options, batched = SETTINGS[name]
    correlation, slope = fidelity(tiny_export, tiny_sd_folder, photos, options, batched)
    assert correlation >= 0.9 and 0.5 < slope < 1.5
    if name in SAME_ARITHMETIC:
        assert (correlation, slope) == pytest.approx(fidelity(tiny_export, tiny_sd_folder, photos), rel=1e-6)


def test_the_check_fails_on_a_loss_that_is_not_smooth(tiny_sd_folder, tiny_export, photos, monkeypatch):
    """What it would catch: a setting that quantized activations (here the text encoder's input, to steps of 1/32).
    (Rounding a wide activation such as the UNet's output barely shows: its many elements dither the steps away.)"""
    text_encoder = ExportedModel.text_encoder
    monkeypatch.setattr(ExportedModel, "text_encoder", lambda self, x, *a: text_encoder(self, np.round(x * 32) / 32, *a))
    correlation, _ = fidelity(tiny_export, tiny_sd_folder, photos)
    assert correlation < 0.9  # the bound every setting above meets


"""The loss stays smooth at mu under every runtime setting that changes how the training forwards run (threads,
spinning, low-memory sessions, the memory budget's one-by-one evaluations, the arena), and training refuses an export
whose recipe makes it piecewise constant. The checks of tests/integration/test_fidelity.py, per setting."""
from __future__ import annotations

import functools
import json
import shutil

import numpy as np
import pytest

from benchmarks._fidelity import finite_difference_fidelity
from zoodip.errors import ZoodipError
from zoodip.model import ExportedModel, RuntimeOptions
from zoodip.trainer import PersonalizeConfig, Personalizer

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


@functools.cache
def baseline(export, source, photos):
    """threads=1, batched: computed once for the whole module (each check costs a few seconds on a busy CPU)."""
    return fidelity(export, source, photos)


@pytest.mark.parametrize("name", list(SETTINGS))
def test_finite_differences_stay_smooth_under_each_runtime_setting(tiny_sd_folder, tiny_export, photos, name):
    options, batched = SETTINGS[name]
    correlation, slope = fidelity(tiny_export, tiny_sd_folder, photos, options, batched)
    assert correlation >= 0.9 and 0.5 < slope < 1.5
    if name in SAME_ARITHMETIC:
        assert (correlation, slope) == pytest.approx(baseline(tiny_export, tiny_sd_folder, photos), rel=1e-6)


def test_the_check_fails_on_a_loss_that_is_not_smooth(tiny_sd_folder, tiny_export, photos, monkeypatch):
    """What it would catch: a setting that quantized activations (here the text encoder's input, to steps of 1/32).
    (Rounding a wide activation such as the UNet's output barely shows: its many elements dither the steps away.)"""
    text_encoder = ExportedModel.text_encoder
    monkeypatch.setattr(ExportedModel, "text_encoder", lambda self, x, *a: text_encoder(self, np.round(x * 32) / 32, *a))
    correlation, _ = fidelity(tiny_export, tiny_sd_folder, photos)
    assert correlation < 0.9  # the bound every setting above meets


def test_training_refuses_an_export_whose_recipe_quantizes_activations(tiny_export, photos, tmp_path):
    """personalize on a dynamic-int8 export trained on noise without a word (its finite differences correlate
    about -0.2 with the gradient): the export's warning says so, training did not."""
    folder = shutil.copytree(tiny_export, tmp_path / "dynamic")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest.update(recipe="dynamic-int8", session={})
    (folder / "manifest.json").write_text(json.dumps(manifest))
    config = PersonalizeConfig(export_dir=folder, images=photos, output_dir=tmp_path / "run", placeholder_token="<t>",
                               initializer_token="star", max_train_steps=2, threads=1)
    with pytest.raises(ZoodipError, match=r"^this export's recipe dynamic-int8 quantizes activations"):
        Personalizer(config)
    assert not (tmp_path / "run").exists()
    ExportedModel.load(folder).unet  # (generation may still use it)

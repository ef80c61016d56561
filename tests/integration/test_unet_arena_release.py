"""Without a memory budget the UNet stays open while the image is decoded: its last run of a generation returns
onnxruntime's arena to the system (the arena would keep the UNet's peak activations beside the decode), earlier runs
keep it (no allocating again each step), and the training loss's runs never release it."""
from __future__ import annotations

import numpy as np
import pytest

from zoodip.denoising_loss import DenoisingLoss
from zoodip.generate import generate
from zoodip.model import ExportedModel, RuntimeOptions

SHRINK = "memory.enable_memory_arena_shrinkage"


class RunRecorder:
    """A session that records, for each run, the arena shrinkage its run options ask for (None: none)."""

    def __init__(self, session) -> None:
        self.session, self.shrinks = session, []

    def run(self, outputs, feeds, run_options=None):
        asked = None
        if run_options is not None:
            try:
                asked = run_options.get_run_config_entry(SHRINK)
            except RuntimeError:  # (onnxruntime: the entry is not set)
                asked = None
        self.shrinks.append(asked)
        return self.session.run(outputs, feeds, run_options)

    def __getattr__(self, name):
        return getattr(self.session, name)


def recorded(model: ExportedModel, monkeypatch) -> RunRecorder:
    recorder = RunRecorder(model.session("unet"))
    opened = model.session
    monkeypatch.setattr(model, "session", lambda name: recorder if name == "unet" else opened(name))
    return recorder


@pytest.mark.parametrize("batch_cfg, calls_per_step", [(True, 1), (False, 2)])
def test_only_the_last_unet_run_releases_the_arena(tiny_export, monkeypatch, batch_cfg, calls_per_step):
    model = ExportedModel.load(tiny_export)
    recorder = recorded(model, monkeypatch)
    generate(model, "a photo of a dog", steps=3, seed=0, batch_cfg=batch_cfg)
    assert recorder.shrinks == [None] * (3 * calls_per_step - 1) + ["cpu:0"]


def test_image_to_image_releases_on_its_last_run_step(tiny_export, monkeypatch):
    model = ExportedModel.load(tiny_export)
    recorder = recorded(model, monkeypatch)
    start = np.zeros((model.sample_size * 8, model.sample_size * 8, 3), np.uint8)
    from PIL import Image

    generate(model, "a photo of a dog", steps=4, strength=0.5, seed=0, image=Image.fromarray(start))
    assert recorder.shrinks == [None, "cpu:0"]  # int(4 * 0.5) steps run


def test_the_release_leaves_the_images_as_they_were(tiny_export, monkeypatch):
    model = ExportedModel.load(tiny_export)
    released = np.asarray(generate(model, "a photo of a dog", steps=2, seed=0)[0])
    monkeypatch.setattr("zoodip.generate._last_step", lambda *_: None)
    kept = np.asarray(generate(model, "a photo of a dog", steps=2, seed=0)[0])
    assert np.array_equal(released, kept)


def test_a_budgeted_run_never_asks(tiny_export, monkeypatch):
    model = ExportedModel.load(tiny_export, RuntimeOptions(memory_budget_mb=200))  # (closes the UNet before the decode)
    recorder = recorded(model, monkeypatch)
    generate(model, "a photo of a dog", steps=2, seed=0)
    assert recorder.shrinks == [None] * 4  # one image and one guidance branch per run


def test_the_training_loss_never_releases_the_arena(tiny_export, monkeypatch):
    model = ExportedModel.load(tiny_export)
    recorder = recorded(model, monkeypatch)
    ids = model.tokenizer(["a photo of a star"])[0]
    star = int(ids[4])  # the "star" token stands in for a placeholder
    rng = np.random.default_rng(0)
    candidates = model.token_embeddings[[star, star]] + 0.01 * rng.standard_normal((2, model.hidden_size))
    x_t = rng.standard_normal((model.latent_channels, model.sample_size, model.sample_size)).astype(np.float32)
    for batched in (True, False):
        DenoisingLoss(model, star, batched=batched)(ids, candidates, x_t, 700, np.zeros_like(x_t))
    assert recorder.shrinks == [None] * 3  # one batched run, then two one by one

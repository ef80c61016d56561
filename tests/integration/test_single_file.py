"""``zoodip export FILE.safetensors``: A1111's single-file checkpoints (the original LDM layout), converted offline by
diffusers' own conversion with configs given here, then exported as a folder would be."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import save_file

from zoodip.image_parameters import read_parameters

from cli_helpers import assert_one_line_error, run_cli
from zoodip_export.ldm_layout import folder_to_ldm

GRAPH_FILES = ("text_encoder.onnx", "unet.onnx", "vae_encoder.onnx", "vae_decoder.onnx", "token_embeddings.npy")
FAST = ["--quiet", "--no-parity", "--curvature-samples", "0", "--recipe", "w8a32"]


def _graph_hashes(export: Path) -> dict[str, str]:
    files = json.loads((export / "manifest.json").read_text())["files"]
    return {name: info["sha256"] for name, info in files.items() if name.split(".")[0] in
            {Path(g).stem for g in GRAPH_FILES}}


@pytest.fixture(scope="module")
def folder_export(tiny_sd_folder, tmp_path_factory) -> Path:
    from zoodip_export.export_model import export_model

    out = tmp_path_factory.mktemp("folder") / "export"
    export_model(tiny_sd_folder, out, recipe="w8a32", parity=False, progress=False, curvature_samples=0)
    return out


def test_a_single_file_exports_the_same_graphs_as_its_diffusers_folder(tiny_sd_folder, folder_export, tmp_path, capsys):
    checkpoint = folder_to_ldm(tiny_sd_folder, tmp_path / "tiny-model.safetensors")
    out = tmp_path / "from-file"
    code, _, err = run_cli(["export", checkpoint, out, "--config", tiny_sd_folder, *FAST], capsys)
    assert code == 0, err
    assert _graph_hashes(out) == _graph_hashes(folder_export) and len(_graph_hashes(out)) == len(GRAPH_FILES)
    source = json.loads((out / "manifest.json").read_text())["source"]
    assert source["kind"] == "single-file" and source["path"] == str(checkpoint)
    assert source["sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in folder_export.iterdir())  # no scratch left
    # The scheduler's config too is the folder's (diffusers' conversion adds a timestep spacing of its own, which
    # changed every sampler's steps): the two exports make the same images.
    assert (out / "scheduler_config.json").read_bytes() == (folder_export / "scheduler_config.json").read_bytes()
    images = [tmp_path / "file.png", tmp_path / "folder.png"]
    for export, image in zip((out, folder_export), images):
        assert run_cli(["generate", "--model", export, "--prompt", "a star", "--steps", "2", "--out", image],
                       capsys)[0] == 0
    assert np.array_equal(np.asarray(Image.open(images[0])), np.asarray(Image.open(images[1])))
    # Its images name the checkpoint as A1111 does: the file's SHA-256, first 10 hex digits.
    assert f"Model hash: {source['sha256'][:10]}," in read_parameters(images[0])


def test_an_sd2_file_needs_its_configs_and_keeps_v_prediction(tmp_path, capsys):
    from zoodip_export.tiny import build_tiny_sd_folder

    folder = build_tiny_sd_folder(tmp_path / "sd2", seed=1, flavor="sd2")
    checkpoint = folder_to_ldm(folder, tmp_path / "sd2-model.safetensors")
    out = tmp_path / "out"
    assert_one_line_error(*run_cli(["export", checkpoint, out, *FAST], capsys)[::2], "pass --config FOLDER")
    assert not out.exists()
    code, _, err = run_cli(["export", checkpoint, out, "--config", folder, *FAST], capsys)
    assert code == 0, err
    assert json.loads((out / "manifest.json").read_text())["model"]["prediction_type"] == "v_prediction"


def _fake_checkpoint(path: Path, names: list[str]) -> Path:
    save_file({name: np.zeros(2, np.float32) for name in names}, str(path))
    return path


@pytest.mark.parametrize("name, names, words", [
    ("model.ckpt", None, "is a pickled checkpoint"),
    ("lora.safetensors", ["lora_unet_down_blocks_0.lora_up.weight"], "is a LoRA"),
    ("xl.safetensors", ["conditioner.embedders.0.transformer.x", "model.diffusion_model.x"], "SDXL"),
    ("vae.safetensors", ["encoder.conv_in.weight"], "not a Stable Diffusion checkpoint"),
    ("unet-only.safetensors", ["model.diffusion_model.x"], "no text encoder"),
    ("damaged.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{not json", "cannot read"),
    ("model.onnx", [], "neither a diffusers folder nor a .safetensors checkpoint"),
    ("renamed.safetensors", b"PK\x03\x04 a torch.save zip", "pickled checkpoint under a .safetensors name"),
])
def test_files_that_are_not_sd_checkpoints_are_refused_before_any_work(tmp_path, capsys, name, names, words):
    path = tmp_path / name
    if isinstance(names, list) and name.endswith(".safetensors"):
        _fake_checkpoint(path, names)
    else:
        path.write_bytes(names if isinstance(names, bytes) else b"\x80\x04 a pickle")
    out = tmp_path / "out"
    assert_one_line_error(*run_cli(["export", path, out, *FAST], capsys)[::2], words)
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_a_file_of_another_architecture_and_misplaced_config_flags(tiny_sd_folder, tmp_path, capsys):
    checkpoint = folder_to_ldm(tiny_sd_folder, tmp_path / "tiny-model.safetensors")
    out = tmp_path / "out"
    # Without --config an SD1.x file is read with SD1.5's configs, which the tiny model's tensors do not fit.
    assert_one_line_error(*run_cli(["export", checkpoint, out, *FAST], capsys)[::2], "do not fit that architecture")
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["tiny-model.safetensors"]
    assert_one_line_error(*run_cli(["export", tiny_sd_folder, out, "--config", tiny_sd_folder, *FAST], capsys)[::2],
                          "--config is for a single-file checkpoint")
    assert_one_line_error(*run_cli(["export", "--tiny", out, "--config", tiny_sd_folder, *FAST], capsys)[::2],
                          "--config is for a single-file checkpoint")
    assert_one_line_error(*run_cli(["export", checkpoint, out, "--config", tmp_path, *FAST], capsys)[::2],
                          "not a diffusers Stable Diffusion folder")


def test_a_checkpoint_given_where_an_embedding_goes_says_to_export_it(tiny_export, tmp_path, capsys):
    checkpoint = _fake_checkpoint(tmp_path / "model.safetensors",
                                  ["model.diffusion_model.x", "cond_stage_model.transformer.y"])
    for args in (["info", checkpoint], ["generate", "--model", tiny_export, "--prompt", "a star", "--embedding",
                                        checkpoint, "--out", tmp_path / "x.png"]):
        assert_one_line_error(*run_cli(args, capsys)[::2], "export it with 'zoodip export CHECKPOINT.safetensors")


@pytest.fixture(scope="module")
def tiny_checkpoint(tiny_sd_folder, tmp_path_factory) -> Path:
    return folder_to_ldm(tiny_sd_folder, tmp_path_factory.mktemp("ckpt") / "tiny-model.safetensors")


def _edited(checkpoint: Path, dest: Path, edit) -> Path:
    from safetensors.torch import load_file, save_file as save_torch

    tensors = load_file(str(checkpoint))
    edit(tensors)
    save_torch(tensors, str(dest))
    return dest


@pytest.mark.parametrize("name, edit, words", [
    ("missing.safetensors", lambda t: t.pop(next(k for k in t if k.endswith("attn1.to_q.weight"))),
     "lacks 1 of the model's tensors"),
    ("nan.safetensors", lambda t: t["model.diffusion_model.out.2.weight"].fill_(float("nan")), "non-finite values"),
    ("inpainting.safetensors", lambda t: t.__setitem__("model.diffusion_model.input_blocks.0.0.weight",
                                                       t["model.diffusion_model.input_blocks.0.0.weight"].repeat(1, 3, 1, 1)[:, :9].contiguous()),
     "is an inpainting model"),  # (9 channels: repeat(1, 2, 1, 1) made 8, an InstructPix2Pix UNet's)
    ("ip2p.safetensors", lambda t: t.__setitem__("model.diffusion_model.input_blocks.0.0.weight",
                                                 t["model.diffusion_model.input_blocks.0.0.weight"].repeat(1, 2, 1, 1)),
     "is an image-editing model such as InstructPix2Pix"),
])
def test_an_incomplete_or_damaged_checkpoint_is_refused_not_filled_with_random_values(
        tiny_sd_folder, tiny_checkpoint, tmp_path, capsys, name, edit, words):
    checkpoint = _edited(tiny_checkpoint, tmp_path / name, edit)
    out = tmp_path / "out"
    assert_one_line_error(*run_cli(["export", checkpoint, out, "--config", tiny_sd_folder, *FAST], capsys)[::2], words)
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_an_upper_case_suffix_exports_and_a_missing_file_is_named(tiny_sd_folder, tiny_checkpoint, tmp_path, capsys):
    upper = tmp_path / "MODEL.SAFETENSORS"
    upper.write_bytes(tiny_checkpoint.read_bytes())
    code, _, err = run_cli(["export", upper, tmp_path / "out", "--config", tiny_sd_folder, *FAST], capsys)
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["MODEL.SAFETENSORS", "out"]
    assert_one_line_error(*run_cli(["export", tmp_path / "typo.safetensors", tmp_path / "x", "--config", tiny_sd_folder,
                                    *FAST], capsys)[::2], "typo.safetensors does not exist")


def test_a_checkpoint_passed_as_the_model_says_to_export_it(tmp_path, capsys):
    checkpoint = _fake_checkpoint(tmp_path / "v1-5.safetensors", ["model.diffusion_model.x"])
    assert_one_line_error(*run_cli(["generate", "--model", checkpoint, "--prompt", "a star"], capsys)[::2],
                          "export it once with 'zoodip export v1-5.safetensors OUT_DIR', then pass OUT_DIR")


def test_a_folder_with_non_finite_weights_is_refused_not_quantized(tiny_sd_folder, tmp_path, capsys):
    import shutil

    from safetensors.torch import load_file, save_file as save_torch

    folder = tmp_path / "nan-folder"
    shutil.copytree(tiny_sd_folder, folder)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(str(weights))
    tensors["conv_out.weight"].fill_(float("inf"))
    save_torch(tensors, str(weights))
    out = tmp_path / "out"
    assert_one_line_error(*run_cli(["export", folder, out, *FAST], capsys)[::2], "non-finite values (NaN or infinity) "
                          "in conv_out.weight")
    assert not out.exists()


def test_extra_tensors_are_said_and_ema_only_files_and_one_layer_text_encoders_refused(tiny_sd_folder, tiny_checkpoint,
                                                                                       tmp_path, capsys):
    import shutil

    import torch

    extra = _edited(tiny_checkpoint, tmp_path / "extra.safetensors",
                    lambda t: t.__setitem__("model.diffusion_model.label_emb.0.0.weight", torch.zeros(4, 4)))
    code, _, err = run_cli(["export", extra, tmp_path / "out", "--config", tiny_sd_folder, *FAST], capsys)
    assert code == 0 and "leaves out 1 of extra.safetensors's model tensors (e.g. model.diffusion_model.label_emb" in err
    ema = _fake_checkpoint(tmp_path / "ema.safetensors", ["model_ema.diffusion_modelinput_blocks00weight",
                                                          "cond_stage_model.transformer.x", "first_stage_model.x"])
    assert_one_line_error(*run_cli(["export", ema, tmp_path / "o2", *FAST], capsys)[::2], "only as EMA weights")
    one_layer = tmp_path / "one-layer"
    shutil.copytree(tiny_sd_folder, one_layer)
    config = one_layer / "text_encoder" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "num_hidden_layers": 1}))
    assert_one_line_error(*run_cli(["export", one_layer, tmp_path / "o3", *FAST], capsys)[::2],
                          "its text encoder has 1 layer(s)")


def test_a_checkpoint_shared_without_a_vae_takes_the_config_folders(tiny_sd_folder, tiny_checkpoint, folder_export,
                                                                    tmp_path, capsys):
    checkpoint = _edited(tiny_checkpoint, tmp_path / "no-vae.safetensors",
                         lambda t: [t.pop(k) for k in list(t) if k.startswith("first_stage_model.")])
    assert_one_line_error(*run_cli(["export", checkpoint, tmp_path / "o", *FAST], capsys)[::2],
                          "holds no VAE (first_stage_model.* tensors; a checkpoint shared without one): pass --config")
    out = tmp_path / "out"
    code, _, err = run_cli(["export", checkpoint, out, "--config", tiny_sd_folder, *FAST], capsys)
    assert code == 0, err
    assert _graph_hashes(out) == _graph_hashes(folder_export)  # the folder's VAE, the file's UNet and text encoder


def test_an_outdated_scheduler_config_of_config_is_said_as_a_folders_is(tiny_sd_folder, tiny_checkpoint, tmp_path,
                                                                         capsys):
    """A single file with --config FOLDER whose scheduler config has steps_offset 0 and clip_sample on: the export
    rewrote it as diffusers' pipelines read it without the line a diffusers folder gets."""
    import shutil

    config = shutil.copytree(tiny_sd_folder, tmp_path / "configs")
    path = config / "scheduler" / "scheduler_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "steps_offset": 0, "clip_sample": True}))
    code, _, err = run_cli(["export", tiny_checkpoint, tmp_path / "out", "--config", config, *FAST], capsys)
    assert code == 0, err
    assert err.count("\n") == 1 and str(config) in err and "steps_offset: 0 -> 1, clip_sample: True -> False" in err, err
    exported = json.loads((tmp_path / "out" / "scheduler_config.json").read_text())
    assert (exported["steps_offset"], exported["clip_sample"]) == (1, False)

"""Source folders as people have them: pickled (.bin) weights, VAEs of another depth."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from zoodip.errors import ZoodipError  # noqa: E402
from zoodip_export.export_model import main  # noqa: E402
from zoodip_export.onnx_export import load_vae  # noqa: E402
from zoodip_export.tiny import build_tiny_sd_folder  # noqa: E402
from zoodip_export.weights import load_checked  # noqa: E402


@pytest.fixture(scope="module")
def bin_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny SD folder with its weights saved as diffusers/transformers save them with safe_serialization=False."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    source = build_tiny_sd_folder(tmp_path_factory.mktemp("bin") / "tiny_sd", seed=0)
    for part, cls in (("unet", UNet2DConditionModel), ("vae", AutoencoderKL), ("text_encoder", CLIPTextModel)):
        model = cls.from_pretrained(source / part)
        for weights in (source / part).glob("*.safetensors"):
            weights.unlink()
        model.save_pretrained(source / part, safe_serialization=False)
    return source


def test_a_folder_of_pickled_weights_exports_with_a_warning(bin_source: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(bin_source), str(tmp_path / "out"), "--quiet", "--curvature-samples", "0", "--no-parity"]) == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("warning: ") and "pickled (.bin)" in err, err
    assert "unet, vae, text_encoder" in err and ".safetensors" in err


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # what a malicious .bin holds: a call run while it is unpickled
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_would_run_code_is_refused_unrun(bin_source: Path, tmp_path: Path) -> None:
    vae = tmp_path / "vae"
    shutil.copytree(bin_source / "vae", vae)
    marker = tmp_path / "ran"
    torch.save({"encoder.conv_in.weight": _Payload(marker)}, vae / "diffusion_pytorch_model.bin")
    with pytest.raises(ZoodipError, match=r"pickled weights file \(\.bin\) .* holds more than tensors .*GLOBAL posix"
                                          r"\.system.*use the model's \.safetensors"):
        load_checked("VAE", load_vae, vae)
    assert not marker.exists()


@pytest.mark.parametrize("edit,needle", [
    ({"block_out_channels": [32, 32, 32, 32], "down_block_types": ["DownEncoderBlock2D"] * 3,
      "up_block_types": ["UpDecoderBlock2D"] * 3}, "has 4 block_out_channels but 3 down_block_types and 3 up_block_types"),
    ({"up_block_types": ["UpDecoderBlock2D"] * 2}, "has 4 block_out_channels but 4 down_block_types and 2 up_block"),
    ({"block_out_channels": 128}, "must be non-empty lists"),
])
def test_a_vae_whose_blocks_disagree_on_its_depth_is_refused(tiny_sd_folder: Path, tmp_path: Path, edit: dict,
                                                               needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    """The export records pixels per latent as 2^(len(block_out_channels) - 1); diffusers builds the VAE's depth from
    its block lists without comparing them (a crash in the trace, or every image of the wrong size)."""
    source = tmp_path / "source"
    shutil.copytree(tiny_sd_folder, source, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))  # (configs only)
    config = source / "vae" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), **edit}))
    assert main([str(source), str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and needle in err and "vae/config.json" in err, err
    assert not (tmp_path / "out").exists()


def test_an_outdated_scheduler_config_is_exported_as_diffusers_pipelines_read_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from diffusers import StableDiffusionPipeline

    source = build_tiny_sd_folder(tmp_path / "tiny_sd", seed=0)
    path = source / "scheduler" / "scheduler_config.json"
    config = json.loads(path.read_text())
    config.update(_class_name="DDIMScheduler", steps_offset=0, clip_sample=True)
    path.write_text(json.dumps(config))
    assert main([str(source), str(tmp_path / "out"), "--quiet", "--curvature-samples", "0", "--no-parity"]) == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "steps_offset: 0 -> 1, clip_sample: True -> False" in err, err
    exported = json.loads((tmp_path / "out" / "scheduler_config.json").read_text())
    loaded = StableDiffusionPipeline.from_pretrained(source, safety_checker=None).scheduler.config
    assert (exported["steps_offset"], exported["clip_sample"]) == (loaded.steps_offset, loaded.clip_sample) == (1, False)


def test_pickled_weights_loaded_beside_an_fp16_safetensors_variant_are_warned_of(tmp_path: Path) -> None:
    """A folder as the Hub has some: diffusion_pytorch_model.bin beside diffusion_pytorch_model.fp16.safetensors. The
    export loads the .bin (the variant only when no plain weights are there), but no warning was said: any
    .safetensors counted as the safe format."""
    from zoodip_export.source_folder import pickled_weights_warning

    for part, plain in (("unet", "diffusion_pytorch_model"), ("vae", "diffusion_pytorch_model"),
                        ("text_encoder", "pytorch_model")):
        (tmp_path / part).mkdir()
        (tmp_path / part / f"{plain}.bin").write_bytes(b"")
        (tmp_path / part / f"{plain.replace('pytorch_model', 'model') if part == 'text_encoder' else plain}"
                               ".fp16.safetensors").write_bytes(b"")
    (tmp_path / "vae" / "diffusion_pytorch_model.safetensors").write_bytes(b"")  # plain safetensors: read first
    warning = pickled_weights_warning(tmp_path)
    assert warning is not None and "'s unet, text_encoder weights are pickled" in warning, warning
    (tmp_path / "unet" / "diffusion_pytorch_model.bin").unlink()  # only variants: the fp16 safetensors are read
    assert "'s text_encoder weights" in pickled_weights_warning(tmp_path)


def test_the_curvature_tool_warns_of_pickled_weights_as_the_export_does(bin_source: Path, tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """``python -m zoodip_export.curvature`` read a folder of pickled weights without the export's warning."""
    from zoodip_export.curvature import main as curvature_main
    from zoodip_export.source_folder import pickled_weights_warning

    assert curvature_main([str(bin_source), str(tmp_path / "c.safetensors"), "--samples", "1"]) == 0
    err = capsys.readouterr().err
    assert pickled_weights_warning(bin_source) in err.splitlines(), err


@pytest.mark.parametrize("file, needle", [
    ("unet/diffusion_pytorch_model.safetensors", "cannot load the UNet: {folder}/unet/diffusion_pytorch_model"
     ".safetensors is a symbolic link to ../../blobs/gone, which does not exist"),
    ("unet/config.json", "unet/config.json is a symbolic link to ../../blobs/gone, which does not exist"),
])
def test_a_link_into_a_cache_whose_file_is_gone_is_named(tiny_sd_folder: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str], file: str,
                                                         needle: str) -> None:
    """An HF cache snapshot whose blob was deleted: the weights link was said as 'no file named
    diffusion_pytorch_model.bin found', the config link as 'missing', sending the user after files they never had."""
    source = tmp_path / "snapshot"
    shutil.copytree(tiny_sd_folder, source)
    (source / file).unlink()
    (source / file).symlink_to("../../blobs/gone")
    assert main([str(source), str(tmp_path / "out"), "--quiet", "--no-parity", "--curvature-samples", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and needle.format(folder=source) in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["snapshot"]


def test_a_controlnet_pipeline_folder_exports_its_base_model_and_says_so(tiny_sd_folder: Path, tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """A StableDiffusionControlNetPipeline saved whole: the export took its base model and dropped the ControlNet
    without a word, so the user expected a ControlNet to steer the images it generates."""
    source = tmp_path / "controlnet_pipeline"
    shutil.copytree(tiny_sd_folder, source)
    index = source / "model_index.json"
    index.write_text(json.dumps({**json.loads(index.read_text()), "_class_name": "StableDiffusionControlNetPipeline",
                                 "controlnet": ["diffusers", "ControlNetModel"]}))
    (source / "controlnet").mkdir()
    (source / "controlnet" / "config.json").write_text(json.dumps({"_class_name": "ControlNetModel"}))
    assert main([str(source), str(tmp_path / "out"), "--quiet", "--curvature-samples", "0", "--no-parity"]) == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("warning: ") and "ControlNet" in err, err
    assert "not exported" in err and "text-to-image" in err and "controlnet" in err, err
    assert (tmp_path / "out" / "manifest.json").is_file()


@pytest.mark.parametrize("edit, parts", [
    ({"_class_name": "StableDiffusionAdapterPipeline", "adapter": ["diffusers", "T2IAdapter"]}, "adapter is"),
    ({"image_encoder": ["transformers", "CLIPVisionModelWithProjection"]}, "image_encoder is"),
    ({"image_encoder": [None, None], "adapter": ["diffusers", "MultiAdapter"]}, "adapter is"),
])
def test_an_adapter_pipeline_folder_exports_its_base_model_and_says_so(tiny_sd_folder: Path, tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str],
                                                                       edit: dict, parts: str) -> None:
    """A T2I-Adapter pipeline, or one saved with an IP-Adapter's image encoder, exported without a word that these
    parts were dropped (a ControlNet's was warned of): the user expected adapters or image prompts to work."""
    source = tmp_path / "adapter_pipeline"
    shutil.copytree(tiny_sd_folder, source)
    index = source / "model_index.json"
    index.write_text(json.dumps({**json.loads(index.read_text()), **edit}))
    assert main([str(source), str(tmp_path / "out"), "--quiet", "--curvature-samples", "0", "--no-parity"]) == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("warning: ") and f"its {parts} not exported" in err, err
    assert (tmp_path / "out" / "manifest.json").is_file()


def test_a_damaged_weights_file_beside_a_pruned_cache_link_is_the_one_named(tmp_path: Path) -> None:
    """A snapshot whose .bin blob was deleted (the .safetensors kept, as diffusers loads those) and whose
    .safetensors is damaged: the failure was blamed on the .bin link, which diffusers never reads there."""
    (tmp_path / "diffusion_pytorch_model.safetensors").write_bytes(b"\xff" * 16)
    (tmp_path / "diffusion_pytorch_model.bin").symlink_to("../../blobs/gone")

    def damaged(folder: Path) -> None:
        raise OSError("Error while deserializing header: HeaderTooLarge")

    with pytest.raises(ZoodipError, match=r"\(Error while deserializing header: HeaderTooLarge\): a weights file "
                                          r"there may be damaged"):
        load_checked("UNet", damaged, tmp_path)


def _refused(argv: list[str], capsys: pytest.CaptureFixture[str], out: Path) -> str:
    assert main([*argv, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert not out.exists()
    return err


@pytest.mark.parametrize("part,edit", [("vae", "drop-a-tensor"), ("text_encoder", "config-without-its-depth")])
def test_weights_that_leave_tensors_of_the_config_unfilled_are_refused(tiny_sd_folder: Path, tmp_path: Path, part: str,
                                                                       edit: str, capsys) -> None:
    """diffusers and transformers give a tensor the weights lack its random initial values, warning only in a log the
    export keeps quiet: a VAE weights file missing a tensor, or a text_encoder/config.json without num_hidden_layers
    (transformers' 12, 10 of them random for 2-layer weights), was exported, and every image was wrong."""
    from safetensors.torch import load_file, save_file

    source = tmp_path / "source"
    shutil.copytree(tiny_sd_folder, source)
    if edit == "drop-a-tensor":
        weights = source / part / "diffusion_pytorch_model.safetensors"
        tensors = load_file(str(weights))
        save_file({name: tensor for name, tensor in tensors.items() if name != "decoder.conv_out.bias"}, str(weights))
    else:
        config = source / part / "config.json"
        config.write_text(json.dumps({k: v for k, v in json.loads(config.read_text()).items()
                                      if k != "num_hidden_layers"}))
    err = _refused([str(source), str(tmp_path / "out")], capsys, tmp_path / "out")
    assert f"the weights in {(source / part).resolve()} lack" in err and "would be left random" in err, err
    assert f"copy the model's {part} folder again" in err


@pytest.mark.parametrize("sample_size,said", [
    ("64", "sample_size is '64', not a whole number of latents"), (None, "sample_size is None, not a whole number"),
    ("abc", "sample_size is 'abc'"), (32.5, "sample_size is 32.5"), ([32, 16], "sample_size is [32, 16]"),
    (True, "sample_size is True"), (-2, "sample_size -2 must be a positive multiple of 2 for this UNet: fix "
                                         "unet/config.json or pass --sample-size")])
def test_a_unet_config_whose_sample_size_is_no_side_is_refused(tiny_sd_folder: Path, tmp_path: Path, sample_size,
                                                                said: str, capsys) -> None:
    """null and "abc" were tracebacks of int(); "64", 32.5, [32, 16] and true were taken as 64, 32, 32 and 1."""
    source = tmp_path / "source"
    shutil.copytree(tiny_sd_folder, source, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))  # (configs only)
    config = source / "unet" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "sample_size": sample_size}))
    err = _refused([str(source), str(tmp_path / "out")], capsys, tmp_path / "out")
    assert said in err and "--sample-size" in err, err


@pytest.mark.parametrize("text,said", [("", "is not readable JSON (Expecting value"), ("[1, 2]", "is not a JSON "
                                       "object (it holds a list)"), (b"{\"_class_name\": \"\xff\"}", "is not readable JSON ('utf-8'")])
def test_a_damaged_model_index_says_what_to_do(tiny_sd_folder: Path, tmp_path: Path, text, said: str, capsys) -> None:
    """'cannot read .../model_index.json: Expecting value: line 1 column 1 (char 0)' said no more."""
    source = tmp_path / "source"
    shutil.copytree(tiny_sd_folder, source, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    index = source / "model_index.json"
    index.write_bytes(text) if isinstance(text, bytes) else index.write_text(text)
    err = _refused([str(source), str(tmp_path / "out")], capsys, tmp_path / "out")
    assert f"model_index.json {said}" in err and err.endswith(": copy the file again from the model's source\n"), err

"""Tests of the exporter (export/): folder format, parity, INT8 graph structure, bad inputs, and the
fidelity of forward-only (finite-difference) gradients through the exported INT8 graphs."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")

from zoodip.errors import ZoodipError  # noqa: E402
from zoodip_export import onnx_export as ox  # noqa: E402
from zoodip_export.export_model import export_model, main  # noqa: E402
from zoodip_export.quantize import (MIN_QUANT_ELEMENTS, SESSION_SETTINGS, W4A32_CONV_GRAPHS,  # noqa: E402
                                   W4A32_INT8_GRAPHS, graph_recipe, open_session, quantize_graph,
                                   quantize_w8a32, session_options)
from zoodip_export.tiny import build_tiny_sd_folder, save_safetensors_streaming  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
GRAPH_FILES = ("text_encoder.onnx", "unet.onnx", "vae_encoder.onnx", "vae_decoder.onnx")
# Measured on the tiny model (seed 0): INT8 (w8a32) vs fp32 ONNX relative error 0.011-0.014 per graph.
INT8_REL_BOUND = 0.05
FP32_ABS_BOUND = 1e-4


# --- fixtures: one tiny source folder and its exports, shared by the module ----------------------


@pytest.fixture(scope="module")
def tiny_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_sd_folder(tmp_path_factory.mktemp("src") / "tiny-sd", seed=0)


@pytest.fixture(scope="module")
def int8_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("int8") / "tiny-int8"
    return out, export_model(None, out, tiny=True, seed=0, recipe="w8a32", progress=False)


@pytest.fixture(scope="module")
def fp32_export(tmp_path_factory: pytest.TempPathFactory, tiny_source: Path) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("fp32") / "tiny-fp32"
    return out, export_model(tiny_source, out, precision="fp32", seed=0, progress=False)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- folder format ---------------------------------------------------------------------------------


def test_int8_export_folder_and_manifest(int8_export: tuple[Path, dict[str, Any]]) -> None:
    out, manifest = int8_export
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert manifest["format"] == "zoodip-export" and manifest["format_version"] == 1
    assert manifest["source"] == {"kind": "tiny", "path": None, "seed": 0}
    assert (manifest["precision"], manifest["recipe"]) == ("int8", "w8a32")
    assert manifest["session"] == {"disable_quant_qdq": True, "disabled_optimizers": ["ConstantFolding"]}
    model = manifest["model"]
    assert model == {"hidden_size": 32, "cross_attention_dim": 32, "max_length": 77, "vocab_size": 49408,
                     "latent_channels": 4, "vae_scale_factor": 8, "scaling_factor": 0.18215, "sample_size": 16,
                     "unet_halvings": 1, "unet_upsampling_follows_skips": True, "prediction_type": "epsilon",
                     "num_train_timesteps": 1000}

    graphs = manifest["graphs"]
    assert set(graphs) == {"text_encoder", "unet", "vae_encoder", "vae_decoder"}
    assert graphs["text_encoder"]["inputs"] == {"inputs_embeds": {"shape": ["batch", 77, 32], "dtype": "float32"}}
    assert graphs["text_encoder"]["outputs"] == {  # the tiny text encoder has 2 layers: 1 to skip
        "last_hidden_state": {"shape": ["batch", 77, 32], "dtype": "float32"},
        "clip_skip_states": {"shape": ["batch", 1, 77, 32], "dtype": "float32"}}
    latent = ["batch", 4, "latent_height", "latent_width"]
    assert graphs["unet"]["inputs"] == {
        "sample": {"shape": latent, "dtype": "float32"},
        "timestep": {"shape": ["batch"], "dtype": "float32"},
        "encoder_hidden_states": {"shape": ["batch", "text_length", 32], "dtype": "float32"},
    }
    assert graphs["unet"]["outputs"] == {"noise_pred": {"shape": latent, "dtype": "float32"}}
    image = ["batch", 3, "image_height", "image_width"]
    assert graphs["vae_encoder"]["inputs"] == {"sample": {"shape": image, "dtype": "float32"}}
    assert graphs["vae_encoder"]["outputs"] == {
        "latent_parameters": {"shape": ["batch", 8, "latent_height", "latent_width"], "dtype": "float32"}}
    assert graphs["vae_decoder"]["inputs"] == {"latent_sample": {"shape": latent, "dtype": "float32"}}
    assert graphs["vae_decoder"]["outputs"] == {"sample": {"shape": image, "dtype": "float32"}}
    for name, entry in graphs.items():
        assert entry["file"] == f"{name}.onnx" and entry["external_data"] is None

    table = np.load(out / "token_embeddings.npy", mmap_mode="r", allow_pickle=False)
    assert table.dtype == np.float16 and list(table.shape) == manifest["token_embeddings"]["shape"] == [49408, 32]
    assert manifest["token_embeddings"] == {"file": "token_embeddings.npy", "dtype": "float16", "shape": [49408, 32]}
    scheduler = json.loads((out / manifest["scheduler"]).read_text())
    assert scheduler["beta_schedule"] == "scaled_linear" and scheduler["prediction_type"] == "epsilon"
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"):
        assert (out / manifest["tokenizer"] / name).is_file()

    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} - {"manifest.json"}
    assert set(manifest["files"]) == on_disk
    for relative, entry in manifest["files"].items():
        assert entry["bytes"] == (out / relative).stat().st_size
        assert entry["sha256"] == _sha256(out / relative)
    assert set(manifest["versions"]) == {"zoodip", "torch", "onnx", "onnxruntime", "diffusers", "transformers"}
    # Nothing of the build is left next to the result.
    assert [p.name for p in out.parent.iterdir()] == [out.name]


def test_parity_numbers(int8_export: tuple[Path, dict[str, Any]], fp32_export: tuple[Path, dict[str, Any]]) -> None:
    for name, values in int8_export[1]["parity"].items():
        assert values["fp32_vs_torch_max_abs"] < FP32_ABS_BOUND, name
        assert 0 < values["int8_vs_fp32_rel"] < INT8_REL_BOUND, name
    for name, values in fp32_export[1]["parity"].items():
        assert values["fp32_vs_torch_max_abs"] < FP32_ABS_BOUND, name
        assert values["int8_vs_fp32_rel"] is None


def test_fp32_export(fp32_export: tuple[Path, dict[str, Any]], tiny_source: Path) -> None:
    out, manifest = fp32_export
    assert (manifest["precision"], manifest["recipe"], manifest["session"]) == ("fp32", "fp32", {})
    assert manifest["source"] == {"kind": "tiny", "path": str(tiny_source), "seed": 0}
    unet = onnx.load(str(out / "unet.onnx"))
    assert not any(node.op_type == "DequantizeLinear" for node in unet.graph.node)
    assert all(t.data_type != onnx.TensorProto.INT8 for t in unet.graph.initializer)


def test_int8_unet_holds_int8_weights(int8_export: tuple[Path, dict[str, Any]],
                                      fp32_export: tuple[Path, dict[str, Any]]) -> None:
    out, _ = int8_export
    graph = onnx.load(str(out / "unet.onnx")).graph
    initializers = {t.name: t for t in graph.initializer}
    int8 = {name for name, t in initializers.items() if t.data_type == onnx.TensorProto.INT8 and len(t.dims) >= 2}
    dequantize = [node for node in graph.node if node.op_type == "DequantizeLinear"]
    assert len(int8) >= 50
    assert {node.input[0] for node in dequantize} == int8
    for node in dequantize:  # per-output-channel: one scale per channel along the node's axis
        axis = next(a.i for a in node.attribute if a.name == "axis")
        scale = initializers[node.input[1]]
        assert list(scale.dims) == [initializers[node.input[0]].dims[axis]]
    # Every Conv/MatMul weight now comes through a DequantizeLinear (no fp32 weight copies left).
    dequantized = {node.output[0] for node in dequantize}
    for node in graph.node:
        if node.op_type in ("Conv", "Gemm") or (node.op_type == "MatMul" and node.input[1] in initializers):
            assert node.input[1] in dequantized, node.name
    # MatMul weights are stored [N, K] (dequantized along the fast first axis) and read transposed.
    fused = [node for node in graph.node if node.op_type == "FusedMatMul"]
    assert fused and all(node.input[1] in dequantized for node in fused)
    assert all(next(a.i for a in node.attribute if a.name == "transB") == 1 for node in fused)
    def weight_bytes(g: onnx.GraphProto) -> int:
        return sum(len(t.raw_data) or 4 * len(t.float_data) for t in g.initializer)

    assert weight_bytes(graph) < 0.3 * weight_bytes(onnx.load(str(fp32_export[0] / "unet.onnx")).graph)


def test_graphs_run_in_onnxruntime_with_session_settings(int8_export: tuple[Path, dict[str, Any]]) -> None:
    out, manifest = int8_export
    options, kwargs = session_options(manifest["session"])
    assert options.get_session_config_entry("session.disable_quant_qdq") == "1"
    assert kwargs == {"disabled_optimizers": ["ConstantFolding"]}
    sizes = {"batch": 3, "latent_height": 16, "latent_width": 8, "image_height": 128, "image_width": 64,
             "text_length": 154}
    rng = np.random.default_rng(0)
    for name, entry in manifest["graphs"].items():
        session = open_session(out / entry["file"], manifest["session"])
        feeds = {k: rng.standard_normal([sizes.get(d, d) for d in v["shape"]]).astype(np.float32)
                 for k, v in entry["inputs"].items()}
        results = session.run(None, feeds)
        assert len(results) == len(entry["outputs"]), name
        for result, output in zip(results, entry["outputs"].values()):
            assert list(result.shape) == [sizes.get(d, d) for d in output["shape"]], name
            assert np.isfinite(result).all()


def test_clip_skip_states_are_diffusers_clip_skip(tiny_source: Path, fp32_export: tuple[Path, dict[str, Any]]) -> None:
    """The text encoder's clip_skip_states[:, k - 1] are what diffusers' encode_prompt(clip_skip=k) conditions on."""
    from diffusers import StableDiffusionPipeline
    from zoodip.model import ExportedModel

    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_source), safety_checker=None)
    model = ExportedModel.load(fp32_export[0])
    table = pipe.text_encoder.text_model.embeddings.token_embedding.weight
    table.data = table.data.half().float()  # the export's table is float16
    assert model.clip_skip_layers == pipe.text_encoder.config.num_hidden_layers - 1 >= 1
    prompt = "a photo of a red dog"
    states = []
    for skip in range(model.clip_skip_layers + 1):
        with torch.no_grad():
            reference, _ = pipe.encode_prompt(prompt, "cpu", 1, False, clip_skip=skip or None)
        states.append(model.encode_text(model.tokenizer([prompt]), clip_skip=skip))
        assert np.abs(states[-1] - reference.numpy()).max() < FP32_ABS_BOUND, skip
    assert np.abs(states[0] - states[1]).max() > 0.1  # another layer's states, not the last one's


def test_the_unet_reads_text_states_of_any_length(tiny_source: Path, fp32_export: tuple[Path, dict[str, Any]]) -> None:
    """A1111's long prompts (77 states per chunk, end to end): the fp32 graph against the torch UNet at each length."""
    unet = ox.UNetGraph(ox.load_unet(tiny_source / "unet"))
    session = open_session(fp32_export[0] / "unet.onnx")
    rng = np.random.default_rng(2)
    for length in (77, 154, 308):
        feeds = {"sample": rng.standard_normal((2, 4, 16, 16), dtype=np.float32),
                 "timestep": np.array([700.0, 20.0], np.float32),
                 "encoder_hidden_states": rng.standard_normal((2, length, 32), dtype=np.float32)}
        (ours,) = session.run(None, feeds)
        with torch.no_grad():
            reference = unet(*(torch.from_numpy(feeds[k]) for k in ("sample", "timestep", "encoder_hidden_states")))
        assert np.abs(ours - reference.numpy()).max() < FP32_ABS_BOUND, length


@pytest.mark.parametrize("halvings", [1, 3])  # the tiny UNet's, SD's
def test_the_exported_unet_runs_every_latent_side_as_diffusers_does(tmp_path: Path, halvings: int) -> None:
    """diffusers' UNet resizes its upsamplings to its skip connections at sides its halvings do not divide (17 latents:
    17 -> 9 -> 5 -> 3 and back); the graph traced at an exact side does the same, and at exact sides it doubles."""
    from diffusers import UNet2DConditionModel

    from zoodip_export.tiny import tiny_configs

    config = dict(tiny_configs()["unet"], block_out_channels=(8, 8, 16, 16)[-halvings - 1:], attention_head_dim=2,
                  down_block_types=("CrossAttnDownBlock2D",) * halvings + ("DownBlock2D",),
                  up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * halvings)
    torch.manual_seed(0)
    reference = UNet2DConditionModel(**config).eval()
    graph = ox.UNetGraph(UNet2DConditionModel(**config).eval())
    graph.unet.load_state_dict(reference.state_dict())
    assert graph.upsampling_follows_skips
    info = {"sample_size": 16, "latent_channels": 4, "vae_scale_factor": 8, "max_length": 77, "cross_attention_dim": 32}
    path = ox.export_graph(graph, ox.GRAPH_SPECS["unet"], ox.example_inputs("unet", info, latent_size=16),
                           tmp_path / "unet.onnx")
    session = open_session(path)
    rng = np.random.default_rng(0)
    for height, width in ((16, 16), (17, 15), (9, 24), (5, 3)):
        feeds = {"sample": rng.standard_normal((2, 4, height, width), dtype=np.float32),
                 "timestep": np.array([900.0, 20.0], np.float32),
                 "encoder_hidden_states": rng.standard_normal((2, 77, 32), dtype=np.float32)}
        (ours,) = session.run(None, feeds)
        with torch.no_grad():
            expected = reference(*(torch.from_numpy(feeds[k]) for k in ("sample", "timestep")),
                                 encoder_hidden_states=torch.from_numpy(feeds["encoder_hidden_states"])).sample
        assert ours.shape == (2, 4, height, width)
        assert np.abs(ours - expected.numpy()).max() < FP32_ABS_BOUND, (height, width)


def test_the_export_checks_its_unet_at_an_odd_side(fp32_export: tuple[Path, dict[str, Any]]) -> None:
    parity = fp32_export[1]["parity"]["unet"]
    assert fp32_export[1]["model"]["unet_upsampling_follows_skips"] is True
    assert 0 < parity["fp32_vs_torch_odd_side_max_abs"] < FP32_ABS_BOUND


def test_text_encoder_graph_matches_clip(tiny_source: Path, int8_export: tuple[Path, dict[str, Any]]) -> None:
    """inputs_embeds = token_embeddings[ids] through our wrapper == CLIPTextModel(input_ids)."""
    text_encoder = ox.load_text_encoder(tiny_source / "text_encoder")
    ids = torch.tensor([[49406, 320, 1125, 539, 320, 1929, 49407] + [49407] * 70])
    with torch.no_grad():
        reference = text_encoder(ids).last_hidden_state
        ours = ox.TextEncoderGraph(text_encoder.text_model, 77)(text_encoder.text_model.embeddings.token_embedding(ids))
    assert torch.allclose(ours, reference, atol=1e-6)
    # The --tiny export is the same seeded model as build_tiny_sd_folder(seed=0).
    table = np.load(int8_export[0] / "token_embeddings.npy")
    weights = text_encoder.text_model.embeddings.token_embedding.weight.detach().numpy()
    assert np.array_equal(table, weights.astype(np.float16))


def test_external_data_round_trip(fp32_export: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    """The >2 GB path (one .data file per graph), forced on the tiny UNet, and w8a32 reading from it."""
    src = fp32_export[0] / "unet.onnx"
    external = tmp_path / "ext" / "unet.onnx"
    assert ox.write_onnx(ox.load_graph(src), src.parent, external, external=True) == "unet.onnx.data"
    assert sorted(p.name for p in external.parent.iterdir()) == ["unet.onnx", "unet.onnx.data"]
    # The weights moved out: the graph file keeps only the structure (on the tiny UNet ~15% of the
    # inline file, the unrolled query-chunked attention being most of it) and small tensors.
    assert external.stat().st_size < 0.2 * src.stat().st_size
    assert (external.parent / "unet.onnx.data").stat().st_size > 0.75 * (src.stat().st_size - external.stat().st_size)
    feeds = {"sample": np.ones((1, 4, 16, 16), np.float32), "timestep": np.array([10.0], np.float32),
             "encoder_hidden_states": np.full((1, 77, 32), 0.5, np.float32)}
    expected = open_session(src).run(None, feeds)[0]
    np.testing.assert_array_equal(open_session(external).run(None, feeds)[0], expected)

    inline_q, external_q = tmp_path / "q1" / "unet.onnx", tmp_path / "q2" / "unet.onnx"
    quantize_w8a32(src, inline_q)
    quantize_w8a32(external, external_q)
    settings = SESSION_SETTINGS["w8a32"]
    np.testing.assert_array_equal(open_session(external_q, settings).run(None, feeds)[0],
                                  open_session(inline_q, settings).run(None, feeds)[0])


def test_w4a32_keeps_its_int8_graphs_w8a32_in_quantize_graph(fp32_export: tuple[Path, dict[str, Any]],
                                                              tmp_path: Path) -> None:
    """quantize_graph applies the recipe's per-graph policy itself: a graph w4a32 keeps whole is w8a32, byte for byte."""
    src = fp32_export[0] / "text_encoder.onnx"
    assert set(W4A32_INT8_GRAPHS) == {"text_encoder"} and graph_recipe("w4a32", "unet") == "w4a32"
    via_w4, plain = tmp_path / "w4" / "text_encoder.onnx", tmp_path / "w8" / "text_encoder.onnx"
    quantize_graph("w4a32", src, via_w4, graph="text_encoder")  # no calibration: w4a32 itself would need it
    quantize_w8a32(src, plain)
    assert via_w4.read_bytes() == plain.read_bytes()
    with pytest.raises(ValueError, match="calibration"):
        quantize_graph("w4a32", src, tmp_path / "u" / "text_encoder.onnx", graph="unet")


def test_torch_style_external_files_are_gathered(fp32_export: tuple[Path, dict[str, Any]], tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """torch writes a >2 GB graph as one file per tensor, with no offset/length entries."""
    from onnx.external_data_helper import convert_model_to_external_data

    model = onnx.load(str(fp32_export[0] / "unet.onnx"))
    convert_model_to_external_data(model, all_tensors_to_one_file=False, size_threshold=1024)
    for tensor in model.graph.initializer:
        kept = [(e.key, e.value) for e in tensor.external_data if e.key == "location"]
        del tensor.external_data[:]
        for key, value in kept:
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
    raw = tmp_path / "raw" / "unet.onnx"
    raw.parent.mkdir()
    onnx.save_model(model, str(raw))
    assert len(list(raw.parent.iterdir())) > 20

    monkeypatch.setattr(ox, "EXTERNAL_DATA_THRESHOLD", 1_000_000)  # the tiny UNet counts as "large"
    gathered = tmp_path / "out" / "unet.onnx"
    assert ox.write_onnx(ox.load_graph(raw), raw.parent, gathered) == "unet.onnx.data"
    feeds = {"sample": np.ones((1, 4, 8, 8), np.float32), "timestep": np.array([10.0], np.float32),
             "encoder_hidden_states": np.full((1, 77, 32), 0.5, np.float32)}
    np.testing.assert_array_equal(open_session(gathered).run(None, feeds)[0],
                                  open_session(fp32_export[0] / "unet.onnx").run(None, feeds)[0])


def test_streaming_safetensors_writer(tiny_source: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    state = ox.load_unet(tiny_source / "unet").state_dict()
    save_safetensors_streaming(state, tmp_path / "w.safetensors", {"format": "pt"})
    loaded = load_file(str(tmp_path / "w.safetensors"))
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) for k in state)


def test_tiny_folder_loads_as_a_diffusers_pipeline(tiny_source: Path) -> None:
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_source), safety_checker=None)
    assert pipe.vae_scale_factor == 8
    assert len(pipe.tokenizer) == 49408
    assert pipe.tokenizer("a photo of a dog").input_ids == [49406, 320, 1125, 539, 320, 1929, 49407]


# --- bad inputs ----------------------------------------------------------------------------------


def _no_leftovers(parent: Path, allowed: set[str]) -> bool:
    return {p.name for p in parent.iterdir()} <= allowed


@pytest.mark.parametrize("case", ["missing-source", "not-a-folder", "no-unet", "out-not-empty", "bad-precision",
                                  "bad-recipe", "recipe-precision-mismatch", "tiny-with-source", "bad-sample-size",
                                  "huge-sample-size",
                                  "overwrite-foreign-folder"])
def test_bad_inputs(case: str, tiny_source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    src = str(tiny_source)
    if case == "no-unet":
        broken = tmp_path / "broken"
        (broken / "text_encoder").mkdir(parents=True)
        src = str(broken)
    if case == "not-a-folder":
        (tmp_path / "file.txt").write_text("x")
        src = str(tmp_path / "file.txt")
    if case in ("out-not-empty", "overwrite-foreign-folder"):
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    argv = {
        "missing-source": [str(tmp_path / "nope"), str(out)],
        "not-a-folder": [src, str(out)],
        "no-unet": [src, str(out)],
        "out-not-empty": [src, str(out)],
        "bad-precision": [src, str(out), "--precision", "int4"],
        "bad-recipe": [src, str(out), "--recipe", "int2"],
        "recipe-precision-mismatch": [src, str(out), "--precision", "fp32", "--recipe", "w8a32"],
        "tiny-with-source": ["--tiny", src, str(out)],
        "bad-sample-size": [src, str(out), "--sample-size", "7"],
        "huge-sample-size": [src, str(out), "--sample-size", "100000"],  # was refused only by the first generate
        "overwrite-foreign-folder": [src, str(out), "--overwrite"],  # --overwrite only replaces an export
    }[case]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1
    assert "Traceback" not in captured.err and captured.out == ""
    if case in ("out-not-empty", "overwrite-foreign-folder"):
        assert [p.name for p in out.iterdir()] == ["keep.txt"]
    else:
        assert not out.exists()
    assert _no_leftovers(tmp_path, {"out", "broken", "file.txt"})


_MISMATCHED_SOURCES = {  # a config edit -> what the one line says; each exported, then failed at every generate
    "text-wider-than-cross-attention": ("text_encoder/config.json", {"hidden_size": 64}, "are not one model's"),
    "sdxl-like-unet": ("unet/config.json", {"addition_embed_type": "text_time"}, "conditioned on more than the text"),
    "class-conditioned-unet": ("unet/config.json", {"class_embed_type": "timestep"}, "class_embed_type"),
    "unknown-spacing": ("scheduler/scheduler_config.json", {"timestep_spacing": "foo"}, "timestep_spacing 'foo'"),
    "fewer-positions": ("text_encoder/config.json", {"max_position_embeddings": 64}, "takes 64 positions"),
    "other-vocabulary": ("text_encoder/config.json", {"vocab_size": 49000}, "has 49000 token rows"),
    "saved-ti-pipeline": ("text_encoder/config.json", {"vocab_size": 49409}, "textual-inversion pipeline saved whole"),
    "null-positions": ("text_encoder/config.json", {"max_position_embeddings": None}, "max_position_embeddings is None"),
    "sdxl-unet-with-sdxl-width": ("unet/config.json", {"addition_embed_type": "text_time", "cross_attention_dim": 2048},
                                  "conditioned on more than the text"),  # (not "copy the model's own text_encoder")
}


@pytest.mark.parametrize("case", sorted(_MISMATCHED_SOURCES))
def test_a_source_the_sdk_could_not_use_is_refused_before_the_export(case: str, tiny_source: Path, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "source"
    shutil.copytree(tiny_source, source, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))  # (configs only)
    file, edit, needle = _MISMATCHED_SOURCES[case]
    (source / file).write_text(json.dumps({**json.loads((source / file).read_text()), **edit}))
    if case == "saved-ti-pipeline":  # diffusers' textual_inversion.py --save_as_full_pipeline: the token added
        (source / "tokenizer" / "added_tokens.json").write_text(json.dumps({"<cat-toy>": 49408}))
        (source / "learned_embeds.safetensors").write_bytes(b"")
    assert main([str(source), str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and needle in err, err
    assert not (tmp_path / "out").exists()
    if case == "saved-ti-pipeline":
        assert "<cat-toy>" in err and "learned_embeds.safetensors, which diffusers' script saved" in err


def test_refusals_say_the_paths_as_the_user_typed_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """The export works on absolute paths, and its refusals said them so (error: OUT_DIR $PWD/afile is an
    existing file) where the user typed 'afile', unlike the rest of the command line; a path it only begins with
    (afile2) is not the user's."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("x")
    (tmp_path / "src" / "text_encoder").mkdir(parents=True)
    cases = {("--tiny", "afile"): "OUT_DIR afile is an existing file, not a folder: choose a folder path",
             ("--tiny", "./afile/sub"): "OUT_DIR afile/sub lies under afile, which is a file, not a folder: choose",
             ("src", "out"): "src is not a diffusers Stable Diffusion folder: unet/config.json is missing",
             ("../src", "out"): "source folder ../src does not exist",
             (str(tmp_path / "src"), "out"): f"{tmp_path / 'src'} is not a diffusers Stable Diffusion folder"}
    for argv, said in cases.items():
        assert main([*argv, "--quiet"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {said}") and err.count("\n") == 1, err
    from zoodip.console import said_as_given

    assert said_as_given(f"{tmp_path / 'afile2'} and {tmp_path / 'afile'}.", ["afile"]) == f"{tmp_path / 'afile2'} and afile."


def test_diffusers_flag_names_are_told_export_s_own_way(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """zoodip export --pretrained_model_name_or_path X OUT (diffusers' flag for the model) said only 'unrecognized
    arguments: --pretrained_model_name_or_path'; it now says how zoodip export takes the model, and the same for
    diffusers' other names of the source, the output folder and the precision."""
    monkeypatch.chdir(tmp_path)
    cases = {("--pretrained_model_name_or_path", "src", "out"): "give the model to export as the first path: zoodip "
             "export SOURCE OUT_DIR", ("--pretrained-model-name-or-path=src", "out"): "give the model to export as the",
             ("src", "--output_dir", "out"): "give the folder to export into as the second path",
             ("src", "out", "--fp16"): "the weights' precision is --recipe",
             ("src", "out", "--bogus"): "unrecognized arguments: --bogus: see"}
    for argv, said in cases.items():
        assert main([*argv, "--quiet"], prog="zoodip export") == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and said in err and err.count("\n") == 1, err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("flags,said", [
    # -1 (A1111's "random") and 2**64 were tracebacks of NumPy's and torch's seeding, deep in the export
    (["--seed", "-1"], "--seed must be a whole number from 0 to 4294967295 (the seed of the tiny model, "),
    (["--seed", str(2**64)], "--seed must be a whole number from 0 to 4294967295"),
    # the API's names were said where the user had typed a flag
    (["--sample-size", "0"], "--sample-size must be a positive integer, not 0"),
    (["--sample_size", "4096"], "--sample-size 4096 latents is a 32768 px default image"),
    (["--curvature-samples", "2000"], "--curvature-samples must be a whole number from 0 (no curvature subspace)"),
    # an empty path was the current folder: "$PWD is not a diffusers Stable Diffusion folder"
    (["--config", ""], "--config is empty: name a diffusers folder of the checkpoint's kind, or drop --config"),
    (["SOURCE="], "SOURCE is empty: name the diffusers folder or .safetensors checkpoint to export"),
])
def test_refusals_name_the_flags_given(tiny_source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], flags,
                                       said) -> None:
    argv = ["", str(tmp_path / "out")] if flags == ["SOURCE="] else [str(tiny_source), str(tmp_path / "out"), *flags]
    assert main([*argv, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {said}") and err.count("\n") == 1, err
    assert list(tmp_path.iterdir()) == []


def test_a_source_configs_sample_size_is_not_said_as_the_flag(tiny_source: Path, tmp_path: Path, capsys) -> None:
    """The flag is said only where the user gave it: here the UNet's config.json said the size."""
    source = tmp_path / "source"
    shutil.copytree(tiny_source, source, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    config = source / "unet" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "sample_size": 4096}))
    assert main([str(source), str(tmp_path / "out"), "--quiet"]) == 2
    assert capsys.readouterr().err.startswith("error: sample_size 4096 latents is a 32768 px default image")


def test_a_path_that_is_not_utf8_is_refused_before_safetensors_meets_it(tiny_source: Path, tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """safetensors opens UTF-8 paths only: such a SOURCE or OUT_DIR was 'cannot load the text encoder from ... (Path
    ... is not valid UTF-8): a weights file there may be damaged or incomplete: copy it again'."""
    from zoodip.cli import main as zoodip_main  # (its stderr says a name that is not UTF-8 readably: m\\xff)

    from safetensors.numpy import save_file as save_numpy

    foreign = tmp_path / os.fsdecode(b"m\xff")
    shutil.copytree(tiny_source, foreign)
    # A LoRA there was read, and said as "cannot read it (Path ... is not valid UTF-8): the file may be damaged".
    save_numpy({"lora_unet_x.lora_down.weight": np.zeros((1, 1), np.float32)}, str(tmp_path / "style.safetensors"))
    os.replace(tmp_path / "style.safetensors", foreign / "style.safetensors")
    for argv, what in (([str(foreign), str(tmp_path / "out")], "SOURCE"), (["--tiny", str(foreign / "out")], "OUT_DIR"),
                       ([str(tiny_source), str(tmp_path / "out"), "--lora", f"{foreign / 'style.safetensors'}:0.8"],
                        "--lora")):
        assert zoodip_main(["export", *argv, "--quiet"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {what} ") and "has a path that is not UTF-8" in err and err.count("\n") == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == [foreign.name]


def test_bad_inputs_raise_zoodip_error(tiny_source: Path, tmp_path: Path) -> None:
    with pytest.raises(ZoodipError, match="does not exist"):
        export_model(tmp_path / "nope", tmp_path / "out")
    with pytest.raises(ZoodipError, match="unet/config.json is missing"):
        export_model(tmp_path, tmp_path / "out")
    with pytest.raises(ZoodipError, match="precision"):
        export_model(tiny_source, tmp_path / "out", precision="int4")
    with pytest.raises(ZoodipError, match="recipe"):
        export_model(tiny_source, tmp_path / "out", recipe="int2")
    for draws in (-1, 10**12, 1.5):  # 10**12 was taken, and the export ran for ever
        with pytest.raises(ZoodipError, match="curvature_samples must be a whole number from 0 .* to 1024"):
            export_model(tiny_source, tmp_path / "out", curvature_samples=draws)
    assert not (tmp_path / "out").exists()


def test_failed_export_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import zoodip_export.quantize as quantize

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(quantize, "quantize_graph", broken)
    out = tmp_path / "deep" / "out"
    with pytest.raises(RuntimeError, match="disk full"):
        export_model(None, out, tiny=True, parity=False, progress=False)
    assert list(tmp_path.iterdir()) == []  # not even the parent folders it created


def test_what_appears_at_out_dir_during_the_export_is_not_replaced(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """OUT_DIR was checked at the start only: a user's files put there while the export ran were deleted at its end,
    and of two exports into one new OUT_DIR the last silently replaced the other (both exit 0)."""
    import zoodip_export.export_model as exporting

    real_publish = exporting.publish

    def files_appear_first(staging: Path, out_dir: Path, overwrite: bool) -> None:
        out_dir.mkdir()
        (out_dir / "thesis.txt").write_text("mine")
        real_publish(staging, out_dir, overwrite)

    monkeypatch.setattr(exporting, "publish", files_appear_first)
    out = tmp_path / "out"
    for overwrite in (False, True):  # (--overwrite replaces an export only)
        with pytest.raises(ZoodipError, match=r"it appeared while the export ran \(another export, or files put "
                                              r"there\), and nothing was replaced$"):
            export_model(None, out, tiny=True, parity=False, progress=False, curvature_samples=0, overwrite=overwrite)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and (out / "thesis.txt").read_text() == "mine"
        (out / "thesis.txt").unlink()
        out.rmdir()


def test_an_out_dir_that_is_a_link_gets_the_export_where_it_points(tmp_path: Path) -> None:
    """Publishing renamed OUT_DIR: the user's link was moved aside (.LINK.old-PID) and a folder put in its place."""
    (tmp_path / "models").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "models")
    for overwrite in (False, True):
        export_model(None, tmp_path / "link", tiny=True, parity=False, progress=False, curvature_samples=0,
                     overwrite=overwrite)
        assert (tmp_path / "link").is_symlink() and (tmp_path / "models" / "manifest.json").is_file()
        assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "models"]


def test_an_out_dir_linked_to_nothing_yet_is_where_the_export_goes(tmp_path: Path) -> None:
    """(Refused as a link to nothing after the publishing rules moved into the SDK; the export wrote there before.)"""
    from zoodip.export_folder import output_target

    (tmp_path / "link").symlink_to(tmp_path / "later")
    assert output_target(tmp_path / "link") == (tmp_path / "later").resolve()
    with pytest.raises(ZoodipError, match="OUT_DIR is empty"):
        output_target("")


def test_cli_help_runs_as_a_script() -> None:
    result = subprocess.run([sys.executable, str(REPO / "export" / "export_model.py"), "--help"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "--precision" in result.stdout and "--tiny" in result.stdout


def test_dynamic_int8_recipe_warns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "dyn"
    assert main(["--tiny", str(out), "--recipe", "dynamic-int8", "--no-parity", "--quiet"]) == 0
    assert "WARNING" in capsys.readouterr().err
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["precision"], manifest["recipe"], manifest["session"]) == ("int8", "dynamic-int8", {})
    assert manifest["parity"] == {}
    # --overwrite replaces a previous export in one step.
    assert main(["--tiny", str(out), "--overwrite", "--no-parity", "--quiet"]) == 0
    assert json.loads((out / "manifest.json").read_text())["recipe"] == "w4a32"  # the default recipe
    assert [p.name for p in tmp_path.iterdir()] == ["dyn"]


# --- fidelity: finite differences on the INT8 graphs vs autograd on fp32 torch -------------------


def test_fidelity_of_forward_only_gradients(tiny_source: Path, int8_export: tuple[Path, dict[str, Any]]) -> None:
    """The property the SDK relies on.

    L(e) = mean((unet(x_t, t, text_encoder(E with the placeholder row = e)) - eps)^2). Directional
    derivatives by finite differences (L(e + mu z) - L(e)) / mu on the exported INT8 graphs (w8a32,
    run with the manifest's session settings) must track the exact ones, grad L . z, from autograd
    on the fp32 torch model.
    """
    from transformers import CLIPTokenizer

    out, manifest = int8_export
    table = np.load(out / "token_embeddings.npy").astype(np.float32)
    tokenizer = CLIPTokenizer.from_pretrained(str(out / "tokenizer"))
    ids = tokenizer("a photo of a dog", padding="max_length", max_length=77).input_ids
    slot = ids.index(tokenizer.convert_tokens_to_ids("dog</w>"))  # the placeholder's row
    embeds = table[ids][None]
    e0 = embeds[0, slot].copy()

    rng = np.random.default_rng(0)
    batch = 2
    x0 = rng.standard_normal((batch, 4, 16, 16)).astype(np.float32)
    eps = rng.standard_normal((batch, 4, 16, 16)).astype(np.float32)
    t = np.array([500.0, 200.0], np.float32)
    betas = np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000) ** 2
    alpha_bar = np.cumprod(1.0 - betas)[t.astype(int)][:, None, None, None]
    x_t = (np.sqrt(alpha_bar) * x0 + np.sqrt(1 - alpha_bar) * eps).astype(np.float32)

    # Exact directional derivatives: autograd on the fp32 torch modules.
    text_model = ox.TextEncoderGraph(ox.load_text_encoder(tiny_source / "text_encoder").text_model, 77)
    unet = ox.UNetGraph(ox.load_unet(tiny_source / "unet"))
    e = torch.tensor(e0, requires_grad=True)
    rows = torch.tensor(embeds).clone()
    rows[0, slot] = e
    noise_pred = unet(torch.tensor(x_t), torch.tensor(t), text_model(rows).expand(batch, -1, -1))
    ((noise_pred - torch.tensor(eps)) ** 2).mean().backward()
    grad = e.grad.numpy().astype(np.float64)

    # Forward-only: onnxruntime on the INT8 graphs, as the SDK runs them.
    text_session = open_session(out / "text_encoder.onnx", manifest["session"])
    unet_session = open_session(out / "unet.onnx", manifest["session"])

    def loss(vector: np.ndarray) -> float:
        feeds = embeds.copy()
        feeds[0, slot] = vector
        hidden = np.repeat(text_session.run(None, {"inputs_embeds": feeds})[0], batch, axis=0)
        pred = unet_session.run(None, {"sample": x_t, "timestep": t, "encoder_hidden_states": hidden})[0]
        return float(np.mean((pred.astype(np.float64) - eps) ** 2))

    mu = 1e-3
    directions = rng.standard_normal((40, e0.shape[0])).astype(np.float32)
    base = loss(e0)
    finite = np.array([(loss(e0 + mu * z) - base) / mu for z in directions])
    exact = directions.astype(np.float64) @ grad
    correlation = float(np.corrcoef(finite, exact)[0, 1])
    print(f"w8a32 finite-difference vs autograd correlation: {correlation:.4f}")
    assert correlation >= 0.9
    # Not just correlated: the same size (INT8 weights perturb the function by ~1%).
    assert 0.8 < finite.std() / exact.std() < 1.25


def test_int8_weights_are_dequantized_just_in_time(int8_export: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    """onnxruntime runs each DequantizeLinear right before the layer that reads it.

    If it ran them early, every fp32 weight copy would stay alive across the network: the export's
    node order is what keeps the peak at one layer's weights (measured on SD1.5, benchmarks/README.md).
    """
    from zoodip.model import ExportedModel

    out, _ = int8_export
    model = ExportedModel.load(out)
    options, disabled = model.session_options()
    options.enable_profiling = True
    options.profile_file_prefix = str(tmp_path / "profile")
    session = ort.InferenceSession(str(out / "unet.onnx"), sess_options=options,
                                   providers=["CPUExecutionProvider"], disabled_optimizers=disabled)
    assert not options.enable_mem_reuse  # the SDK's low-memory sessions free each weight copy after use
    rng = np.random.default_rng(0)
    hidden = model.manifest["model"]["cross_attention_dim"]
    feeds = {"sample": rng.standard_normal((1, 4, 16, 16)).astype(np.float32), "timestep": np.array([500.0], np.float32),
             "encoder_hidden_states": rng.standard_normal((1, 77, hidden)).astype(np.float32)}
    session.run(None, feeds)
    events = json.loads(Path(session.end_profiling()).read_text())
    order = [e["name"][: -len("_kernel_time")] for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    position = {name: k for k, name in enumerate(order)}
    graph = onnx.load(str(out / "unet.onnx"), load_external_data=False).graph
    readers: dict[str, list[str]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node.name)
    dequantize = [node for node in graph.node if node.op_type == "DequantizeLinear"]
    ran = [node for node in dequantize if node.name in position]
    assert len(ran) == len(dequantize) > 20
    for node in ran:
        first_reader = min(position[r] for r in readers[node.output[0]] if r in position)
        assert first_reader - position[node.name] <= 2, (node.name, first_reader - position[node.name])


def test_large_layers_split_along_output_channels(fp32_export: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    """Splitting big layers into output-channel slices changes the graph, not the function."""
    source = fp32_export[0] / "unet.onnx"
    whole = quantize_w8a32(source, tmp_path / "whole" / "unet.onnx", max_weight_mib=1e6)
    split = quantize_w8a32(source, tmp_path / "split" / "unet.onnx", max_weight_mib=0.02)  # 20 KiB: most layers
    assert whole["split_layers"] == 0 and split["split_layers"] >= 10
    assert split["int8_bytes"] == whole["int8_bytes"]
    graph = onnx.load(str(tmp_path / "split" / "unet.onnx")).graph
    dequantize = [n for n in graph.node if n.op_type == "DequantizeLinear"]
    sizes = {t.name: int(np.prod(t.dims)) for t in graph.initializer}
    split_kinds = {i for n in graph.node if n.op_type in ("Conv", "FusedMatMul") for i in n.input}
    conv_or_matmul = [n for n in dequantize if n.output[0] in split_kinds]
    assert conv_or_matmul and max(sizes[n.input[0]] * 4 for n in conv_or_matmul) <= 0.02 * (1 << 20) * 1.5  # slice rounding
    assert not {t.name for t in graph.initializer} - {i for n in graph.node for i in n.input}  # no orphans left

    rng = np.random.default_rng(0)
    hidden = fp32_export[1]["model"]["cross_attention_dim"]
    feeds = {"sample": rng.standard_normal((2, 4, 16, 16)).astype(np.float32), "timestep": np.array([500.0, 20.0], np.float32),
             "encoder_hidden_states": rng.standard_normal((2, 77, hidden)).astype(np.float32)}
    settings = SESSION_SETTINGS["w8a32"]
    a = open_session(tmp_path / "whole" / "unet.onnx", settings).run(None, feeds)[0]
    b = open_session(tmp_path / "split" / "unet.onnx", settings).run(None, feeds)[0]
    assert np.abs(a - b).max() <= 1e-5 * np.abs(a).max()


# --- w4a32: 4-bit weights where they hold --------------------------------------------------------

# Measured on the tiny model (seed 0), W4A32 vs fp32 ONNX: UNet 0.028, VAE 0.015-0.020 (the text encoder
# stays w8a32 in this recipe).
W4_REL_BOUND = 0.3
QUANTIZED_ACTIVATION_OPS = {"DynamicQuantizeLinear", "MatMulInteger", "ConvInteger", "QLinearConv", "QLinearMatMul",
                            "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QuantizeLinear"}


@pytest.fixture(scope="module")
def w4_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("w4") / "tiny-w4"
    assert main(["--tiny", str(out), "--recipe", "w4a32", "--quiet"]) == 0
    return out, json.loads((out / "manifest.json").read_text())


def _attribute(node: onnx.NodeProto, name: str) -> Any:
    return next(onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == name)


def test_blockwise_int4_is_what_matmulnbits_computes() -> None:
    from zoodip_export.quantize_int4 import INT4_BLOCK, dequantize_blockwise_int4, quantize_blockwise_int4

    rng = np.random.default_rng(0)
    k, n = 80, 24  # K not a whole number of blocks: the last block is padded
    weights = rng.standard_normal((k, n)).astype(np.float32)
    packed, scales = quantize_blockwise_int4(np.ascontiguousarray(weights.T))
    assert packed.shape == (n, 3, INT4_BLOCK // 2) and packed.dtype == np.uint8 and scales.shape == (n, 3)
    restored = dequantize_blockwise_int4(packed, scales, k)  # [N, K]
    # Round to nearest: off by at most half a step wherever the weight is inside the block's range (a scale
    # below max/7 clips the largest), and the 4-bit version is not the original.
    steps = np.repeat(scales, INT4_BLOCK, axis=1)[:, :k]
    inside = (weights.T >= -8 * steps) & (weights.T <= 7 * steps)
    assert np.all(np.abs(restored - weights.T)[inside] <= 0.5 * steps[inside] + 1e-6)
    assert not np.allclose(restored, weights.T)
    # The scale search never does worse than the plain max/7 scale, block by block.
    blocks = np.zeros((n, 3 * INT4_BLOCK), np.float32)
    blocks[:, :k] = weights.T
    blocks = blocks.reshape(n, 3, INT4_BLOCK)
    plain = np.abs(blocks).max(axis=2, keepdims=True) / 7
    plain_error = np.square(np.clip(np.rint(blocks / plain), -8, 7) * plain - blocks).sum(axis=2)
    padded = np.zeros((n, 3 * INT4_BLOCK), np.float32)
    padded[:, :k] = restored
    chosen_error = np.square(padded.reshape(n, 3, INT4_BLOCK) - blocks).sum(axis=2)
    assert np.all(chosen_error <= plain_error * (1 + 1e-5)) and np.any(chosen_error < plain_error * 0.99)
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("MatMulNBits", ["x", "b", "s"], ["y"], domain="com.microsoft", K=k, N=n, bits=4,
                               block_size=INT4_BLOCK, accuracy_level=1)], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [5, k])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [5, n])],
        [onnx.numpy_helper.from_array(packed, "b"), onnx.numpy_helper.from_array(scales, "s")])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17),
                                                         onnx.helper.make_opsetid("com.microsoft", 1)])
    x = rng.standard_normal((5, k)).astype(np.float32)
    (y,) = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    np.testing.assert_allclose(y, x @ restored.T, rtol=1e-4, atol=1e-4)


def test_w4a32_export_records_measured_widths(w4_export: tuple[Path, dict[str, Any]]) -> None:
    out, manifest = w4_export
    assert (manifest["precision"], manifest["recipe"]) == ("int8", "w4a32")
    assert manifest["session"] == SESSION_SETTINGS["w4a32"]
    four_bit_total = 0
    for name in W4A32_INT8_GRAPHS:  # kept w8a32 whole: no 4-bit layer, no widths to record
        entry = manifest["graphs"].pop(name)
        assert "quantization" not in entry
        assert not [n for n in onnx.load(str(out / entry["file"])).graph.node if n.op_type == "MatMulNBits"], name
    for name, entry in manifest["graphs"].items():
        quantization = entry["quantization"]
        limit = quantization["max_layer_error"]
        graph = onnx.load(str(out / entry["file"])).graph
        nbits = {node.name: node for node in graph.node if node.op_type == "MatMulNBits"}
        # Width by measurement: 4 bits exactly where the layer's measured 4-bit error is within the limit
        # (and, for a convolution, where it runs at one of the graph's deepest levels), except the layers
        # that read the text encoder's output (the UNet's cross-attention keys and values): int8 always.
        reads_text = {node.name for node in graph.node
                      if node.input and node.input[0] in quantization["int8_readers_of"]} & set(quantization["layers"])
        assert bool(reads_text) == (name == "unet"), name
        for layer, record in quantization["layers"].items():
            holds = (record["int4_error"] <= limit and record.get("side", 0) <= quantization["int4_conv_max_side"]
                     and layer not in reads_text)
            assert record["bits"] == (4 if holds else 8), (name, layer)
            assert (layer in nbits) == (record["bits"] == 4), (name, layer)
        assert {record["block"] for record in quantization["layers"].values()} <= {None, *quantization["int4_blocks"]}
        assert all(isinstance(record["scale_search"], bool) for record in quantization["layers"].values())
        convs = [record for record in quantization["layers"].values() if "side" in record]
        assert bool(convs) == (name in W4A32_CONV_GRAPHS), name
        assert sum(record["bits"] == 4 for record in convs) >= (20 if name in W4A32_CONV_GRAPHS else 0), name
        assert set(nbits) <= set(quantization["layers"])
        for node in nbits.values():  # fp32 compute: activations never quantized
            assert _attribute(node, "accuracy_level") == 1 and _attribute(node, "bits") == 4
            assert _attribute(node, "block_size") == quantization["layers"][node.name]["block"]
        four_bit_total += len(nbits)
        # Everything else as in w8a32: int8 weights with DequantizeLinear, no fp32 Conv/MatMul weights.
        initializers = {t.name: t for t in graph.initializer}
        dequantized = {node.output[0] for node in graph.node if node.op_type == "DequantizeLinear"}
        for node in graph.node:
            weight = initializers.get(node.input[1]) if len(node.input) > 1 else None
            if node.op_type in ("Conv", "Gemm", "MatMul") and weight is not None:
                assert weight.data_type != onnx.TensorProto.FLOAT or np.prod(weight.dims) < MIN_QUANT_ELEMENTS, node.name
            if node.op_type in ("Conv", "Gemm", "FusedMatMul") and weight is None:
                assert node.input[1] in dequantized or node.op_type == "FusedMatMul", node.name
        assert 0 < manifest["parity"][name]["int8_vs_fp32_rel"] < W4_REL_BOUND, name
    assert four_bit_total >= 40


@pytest.mark.parametrize("recipe", ["w8a32", "w4a32"])
def test_weights_stay_packed_after_onnxruntime_optimizes(recipe: str, int8_export: tuple[Path, dict[str, Any]],
                                                         w4_export: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    """The graph onnxruntime actually runs (optimized with the recipe's session settings, saved) keeps
    the 4/8-bit weights: no fp32 copy folded back, no activation quantization fused in."""
    out, manifest = {"w8a32": int8_export, "w4a32": w4_export}[recipe]

    def weight_bytes(graph: onnx.GraphProto) -> dict[str, int]:
        """Elements per data type of the graph's constant tensors (initializers and Constant nodes:
        onnxruntime turns the latter into initializers)."""
        sizes: dict[str, int] = {}
        constants = [a.t for node in graph.node if node.op_type == "Constant" for a in node.attribute if a.name == "value"]
        for t in [*graph.initializer, *constants]:
            kind = onnx.TensorProto.DataType.Name(t.data_type)
            sizes[kind] = sizes.get(kind, 0) + int(np.prod(t.dims, dtype=np.int64))
        return sizes

    for name, entry in manifest["graphs"].items():
        options, kwargs = session_options(manifest["session"])
        options.optimized_model_filepath = str(tmp_path / f"{name}.optimized.onnx")
        ort.InferenceSession(str(out / entry["file"]), options, providers=["CPUExecutionProvider"], **kwargs)
        source = onnx.load(str(out / entry["file"])).graph
        running = onnx.load(str(tmp_path / f"{name}.optimized.onnx")).graph
        before, after = weight_bytes(source), weight_bytes(running)
        assert after.get("INT8", 0) == before.get("INT8", 0), name
        assert before.get("INT8", 0) + before.get("UINT8", 0) > 0, name  # (a w4a32 graph may be all 4-bit)
        assert after.get("UINT8", 0) == before.get("UINT8", 0), name
        assert after.get("FLOAT", 0) <= before.get("FLOAT", 0), name  # nothing dequantized ahead of time
        ops = {node.op_type for node in running.node}
        assert not ops & QUANTIZED_ACTIVATION_OPS, (name, ops & QUANTIZED_ACTIVATION_OPS)
        nbits = [node for node in running.node if node.op_type == "MatMulNBits"]
        assert len(nbits) == sum(node.op_type == "MatMulNBits" for node in source.node), name
        assert all(_attribute(node, "accuracy_level") == 1 for node in nbits), name
    if recipe == "w4a32":
        assert before.get("UINT8", 0) > 0


def test_the_staging_folder_of_a_killed_export_is_removed_by_the_next(tiny_source, tmp_path, capsys):
    """A SIGKILLed export cannot clean up: its staging folder (named with its process id) goes next time."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".out.{dead.pid}.k3y.partial"
    live = tmp_path / f".out.{os.getpid()}.x9z.partial"  # an export still running in this process
    other = tmp_path / f".other.{dead.pid}.k3y.partial"  # another output's: not this export's business
    for folder in (stale, live, other):
        (folder / "unet").mkdir(parents=True)
        (folder / "unet" / "model.onnx").write_bytes(b"\0" * 2**20)
    export_model(tiny_source, tmp_path / "out", precision="fp32", parity=False, curvature_samples=0, progress=False)
    assert not stale.exists() and live.is_dir() and other.is_dir()
    assert f"removed {stale.name} (1 MiB), left by an export that was killed" in capsys.readouterr().err
    assert (tmp_path / "out" / "manifest.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, other.name, "out"])  # no staging left


@pytest.mark.parametrize("failure", ["numpy", "safetensors"])
def test_a_full_disk_during_the_export_names_the_folder_that_needs_the_room(tmp_path: Path, monkeypatch,
                                                                             failure: str) -> None:
    """NumPy's short write and safetensors' writer report a full disk without a file's name: the export said only
    "a file could not be read or written" or "writing the export failed", not where room was wanted."""
    from safetensors import SafetensorError

    def full(*args: object, **kwargs: object) -> None:
        if failure == "numpy":
            raise OSError("6291584 requested and 4096 written")
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    from zoodip_export import tiny

    monkeypatch.setattr(*((np, "save") if failure == "numpy" else (tiny, "build_tiny_sd_folder")), full)
    out = tmp_path / "disk" / "OUT"
    with pytest.raises(ZoodipError) as raised:
        export_model(None, out, tiny=True, seed=0, progress=False, curvature_samples=0)
    assert f"cannot write the export into {out.parent}" in str(raised.value) and "the disk is full" in str(raised.value)
    assert "free space there" in str(raised.value) and list(tmp_path.iterdir()) == []


def test_a_source_whose_name_begins_with_a_dash_is_told_how_to_write_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """zoodip export -model out said only 'unrecognized arguments: -model' where -model is the user's folder."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "-model").mkdir()
    assert main(["-model", "out", "--quiet"], prog="zoodip export") == 2
    err = capsys.readouterr().err
    assert err == ("error: unrecognized arguments: -model (-model was read as a flag: a path that starts with '-' is "
                   "written ./-model, or after --): see 'zoodip export --help'\n"), err
    assert main(["-q", "out", "--quiet"], prog="zoodip export") == 2  # (no such path: no hint)
    assert "(" not in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["-model"]

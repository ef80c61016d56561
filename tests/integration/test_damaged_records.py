"""Records a user's copy or edit can damage (JSON nested past the parser's depth, an embedding's settings, a loop of
links inside an export): each one line, never a traceback."""
from __future__ import annotations

import shutil
import warnings

import numpy as np
import pytest

from zoodip.describe import describe
from zoodip.embeddings import load_embeddings, save_learned_embeds
from zoodip.errors import ZoodipError
from zoodip.json_text import parse_json
from zoodip.model import ExportedModel

DEEP = "[" * 100_000 + "]" * 100_000


def test_json_nested_past_the_parsers_depth_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="nested too deeply"):
        parse_json(DEEP)
    assert parse_json('{"a": [1]}') == {"a": [1]}


def _copy(tiny_export, tmp_path):
    return shutil.copytree(tiny_export, tmp_path / "export")


def test_an_export_whose_manifest_or_added_tokens_nest_too_deep_is_one_line(tiny_export, tmp_path) -> None:
    folder = _copy(tiny_export, tmp_path)
    (folder / "tokenizer" / "added_tokens.json").write_text(DEEP)  # (no hash covers it)
    with pytest.raises(ZoodipError, match="added_tokens.json is not readable JSON"):
        ExportedModel.load(folder)
    (folder / "tokenizer" / "added_tokens.json").unlink()
    text = (folder / "manifest.json").read_text()
    (folder / "manifest.json").write_text(text.replace('"precision":', f'"deep": {DEEP}, "precision":', 1))
    with pytest.raises(ZoodipError, match="manifest.json is not valid JSON"):
        ExportedModel.load(folder)


def test_a_loop_of_links_inside_an_export_is_one_line(tiny_export, tmp_path) -> None:
    folder = _copy(tiny_export, tmp_path)
    (folder / "unet.onnx").unlink()
    (folder / "unet.onnx").symlink_to("unet.onnx")
    with pytest.raises(ZoodipError, match=r"unet.onnx \(in the manifest: a files entry\) is a loop of symbolic links"):
        ExportedModel.load(folder)


@pytest.mark.parametrize("settings, said", [
    ("{", "settings: unreadable"), ("[1]", "settings: unreadable"), (DEEP, "settings: unreadable"),
    ('{"lr": 0.1}', "settings: lr=0.1"),
])
def test_info_and_loading_read_an_embedding_whose_record_is_damaged(model, tmp_path, settings, said) -> None:
    path = save_learned_embeds(tmp_path / "e.safetensors", "<e>", np.zeros((1, model.hidden_size), np.float32),
                               {"steps": "4", "model_name": "a\nb", "settings": settings})  # (no forwards)
    lines = describe(path)
    assert any(line.startswith(said) for line in lines)
    assert "trained: 4 steps, ? training forwards" in lines and "model: a\\nb (manifest ?)" in lines
    added = load_embeddings([str(path)], model.tokenizer, model.hidden_size, model.identity, clip_skip=0)[0]
    assert list(added) == ["<e>"]  # (the settings' clip skip unread: taken as the last layer's)


@pytest.mark.parametrize("clip_skip", ["1e400", "-3", "true", '"2"', "2.5", "null"])
def test_an_embeddings_recorded_clip_skip_that_is_no_layer_count_is_taken_as_unrecorded(tmp_path, clip_skip):
    """A header's clip_skip of 1e400 (JSON's infinity) was a traceback (OverflowError) in every generate that loaded the
    file, or its folder; -3, true or 2.5 were warned about as layers it was trained at. Each is now the last layer's."""
    path = save_learned_embeds(tmp_path / "e.safetensors", "<e>", np.zeros((1, 8), np.float32),
                               {"steps": "4", "settings": f'{{"clip_skip": {clip_skip}}}'})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert list(load_embeddings([str(path)], hidden=8, clip_skip=0)[0]) == ["<e>"]
    with pytest.warns(UserWarning, match="trained at clip_skip=0 and is used at clip_skip=1"):
        load_embeddings([str(path)], hidden=8, clip_skip=1)


def test_info_shows_an_embeddings_token_with_its_control_characters_escaped(tmp_path) -> None:
    """zoodip info printed the token as the file's key or name holds it, escape sequences reaching the terminal (its
    record's values were escaped already)."""
    from zoodip.embeddings import save_a1111_embedding
    from zoodip.safetensors_io import save_file

    save_file({"<a\x1b[2Jb>": np.ones((1, 8), np.float32)}, tmp_path / "key.safetensors")
    assert describe(tmp_path / "key.safetensors")[0] == "token: <a\\x1b[2Jb> (1 vector of width 8)"
    path = save_a1111_embedding(tmp_path / "x\x1b[1my.safetensors", "<xy>", np.ones((1, 8), np.float32))
    assert describe(path)[0].startswith("token: <x\\x1b[1my> or x\\x1b[1my (1 vector of width 8); x\\x1b[1my (the")


def test_verify_refuses_a_manifest_that_hashes_nothing_and_a_file_it_does_not_list(tiny_export, tmp_path, capsys):
    """verify said "ok: 0 files" of a manifest without sha256 values (the weights then damaged), and ok of a tokenizer
    folder holding an added_tokens.json the SDK reads but no hash covers."""
    import json

    from cli_helpers import assert_one_line_error, run_cli

    folder = _copy(tiny_export, tmp_path)
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "tokenizer" / "added_tokens.json").write_text('{"<cat>": 49408}')
    code, _, err = run_cli(["verify", folder], capsys)
    assert_one_line_error(code, err, "tokenizer/added_tokens.json is not among the manifest's files")
    (folder / "tokenizer" / "added_tokens.json").unlink()
    (folder / "tokenizer" / ".DS_Store").write_bytes(b"\0")  # what the SDK never reads: no concern of verify
    (folder / "tokenizer" / "vocab.json.orig").write_text("{}")
    assert run_cli(["verify", folder], capsys)[0] == 0
    for entry in manifest["files"].values():
        del entry["sha256"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    code, _, err = run_cli(["verify", folder], capsys)
    assert_one_line_error(code, err, "lacks files['curvature.safetensors'].sha256")
    manifest = json.loads((tiny_export / "manifest.json").read_text())
    del manifest["files"]["scheduler_config.json"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    code, _, err = run_cli(["verify", folder], capsys)
    assert_one_line_error(code, err, "does not list scheduler 'scheduler_config.json' among its files")


@pytest.mark.parametrize("edit, said", [
    ({"rescale_betas_zero_snr": "false"}, "rescale_betas_zero_snr must be true or false, got 'false'"),  # (was: on)
    ({"set_alpha_to_one": "no"}, "set_alpha_to_one must be true or false"),
    ({"trained_betas": "0.1,0.2"}, "trained_betas must be a list of numbers from 0 to 1"),
    ({"trained_betas": [0.0] * 1000}, "not all 0"),
    ({"steps_offset": "1"}, "steps_offset must be an integer from 0 to 999"),
])
def test_a_scheduler_configs_values_are_checked_by_type(edit, said) -> None:
    from zoodip.schedule import NoiseSchedule

    config = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, **edit}
    with pytest.raises(ZoodipError, match=said):
        NoiseSchedule.from_config(config)
    NoiseSchedule.from_config({**config, **{key: None for key in edit}})  # null: the default


def test_a_scheduler_configs_switches_may_be_numbers_as_diffusers_reads_them() -> None:
    from zoodip.schedule import NoiseSchedule

    config = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}
    for edit in ({"clip_sample": 1, "set_alpha_to_one": 0, "thresholding": 0}, {"steps_offset": 1.0},
                 {"rescale_betas_zero_snr": 1}):
        NoiseSchedule.from_config({**config, **edit})
    assert NoiseSchedule.from_config({**config, "rescale_betas_zero_snr": 1}).alphas_cumprod[-1] < 1e-6
    with pytest.raises(ZoodipError, match="steps_offset must be an integer"):
        NoiseSchedule.from_config({**config, "steps_offset": 1.5})


@pytest.mark.parametrize("version, said", [("1", 'format_version "1"'), (True, "format_version true"),
                                           (2, "format_version 2")])
def test_a_manifests_format_version_is_said_as_written(tiny_export, tmp_path, version, said) -> None:
    import json

    folder = _copy(tiny_export, tmp_path)
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps(dict(manifest, format_version=version)))
    with pytest.raises(ZoodipError, match=f"has {said}, this SDK reads 1"):
        ExportedModel.load(folder)


def test_manifest_sizes_that_disagree_with_the_graphs_or_the_tokenizer_are_one_line(tiny_export, tmp_path) -> None:
    """A manifest's latent_channels unlike the UNet's was an onnxruntime traceback at the first generate, and a
    tokenizer's model_max_length unlike the text encoder's another (personalize blamed the training prompts)."""
    import json

    folder = _copy(tiny_export, tmp_path)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["model"]["latent_channels"] = 3
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ZoodipError, match=r"unet.onnx's input sample has 4 on axis 1, the manifest's "
                                          r"model.latent_channels says 3"):
        ExportedModel.load(folder).unet(np.zeros((1, 3, 16, 16), np.float32), np.zeros(1, np.float32),
                                        np.zeros((1, 77, 32), np.float32))
    manifest["model"]["latent_channels"], manifest["model"]["max_length"] = 4, 60
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ZoodipError, match="the tokenizer's model_max_length is 77, the text encoder's 60"):
        ExportedModel.load(folder)


def test_export_reads_a_source_whose_json_nests_too_deep_in_one_line(tiny_sd_folder, tmp_path) -> None:
    from zoodip_export.source_folder import check_source

    source = shutil.copytree(tiny_sd_folder, tmp_path / "source")
    (source / "model_index.json").write_text(DEEP)
    with pytest.raises(ZoodipError, match=r"model_index\.json is not readable JSON \(JSON nested too deeply to read\): copy "
                                          "the file again"):
        check_source(source)


def test_a_manifest_file_name_holding_a_nul_is_one_line(tiny_export, tmp_path) -> None:
    import json

    folder = _copy(tiny_export, tmp_path)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"]["unet\0.onnx"] = manifest["files"]["unet.onnx"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ZoodipError, match=r"has a files entry = 'unet\\x00.onnx', not a file name"):
        ExportedModel.load(folder)


def test_a_manifests_paths_are_compared_in_one_spelling(tiny_export, tmp_path) -> None:
    import json

    folder = _copy(tiny_export, tmp_path)
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps(dict(manifest, tokenizer="./tokenizer")))
    assert ExportedModel.load(folder).tokenizer is not None


def test_info_on_an_export_shows_its_manifests_control_characters_escaped(tiny_export, tmp_path) -> None:
    """zoodip info printed a manifest's recipe and source kind as written: an escape sequence in them (another's export)
    reached the terminal, as an image's parameters and an embedding's record do not."""
    import json

    folder = _copy(tiny_export, tmp_path)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["source"]["kind"] = "tiny\x1b[2J\x07"
    (folder / "manifest.json").write_text(json.dumps(dict(manifest, recipe="w8a32\r\nok: 0 files")))
    lines = describe(folder)
    assert lines[0] == "export: recipe w8a32\\x0d\\x0aok: 0 files (revision 4), from tiny\\x1b[2J\\x07"
    assert all(line.isprintable() for line in lines)

"""Thread settings reach onnxruntime: spin-waiting is set explicitly, from the API, the config and the CLI."""
from __future__ import annotations

import re

import numpy as np
import pytest

from zoodip.cli import build_parser
from zoodip.config import PersonalizeConfig
from zoodip.model import DEFAULT_SPIN_WAIT, ExportedModel, RuntimeOptions


@pytest.mark.parametrize("spin", [True, False])
def test_spin_waiting_is_set_in_the_session_options(tiny_export, spin):
    opts, _ = ExportedModel.load(tiny_export, RuntimeOptions(threads=1, spin_wait=spin)).session_options()
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == ("1" if spin else "0")


def test_the_default_is_one_constant_for_the_api_the_config_and_the_cli(tmp_path):
    assert RuntimeOptions().spin_wait == DEFAULT_SPIN_WAIT
    assert PersonalizeConfig(export_dir=tmp_path, images=tmp_path, output_dir=tmp_path / "o").spin_wait == DEFAULT_SPIN_WAIT
    parser = build_parser()
    for command in (["personalize", "--model", "m", "--train_data_dir", "p", "--output_dir", "o"],
                    ["generate", "--model", "m", "--prompt", "x"]):
        assert (parser.parse_args(command).spin_wait == "on") == DEFAULT_SPIN_WAIT
        assert parser.parse_args([*command, "--spin-wait", "on"]).spin_wait == "on"


@pytest.mark.parametrize("preset,expected", [(None, "1"), ("3", "3")])
def test_the_cli_gives_numpy_one_blas_thread_unless_the_user_chose(preset, expected):
    """`zoodip` sets OPENBLAS_NUM_THREADS before NumPy loads (importing the package alone loads no NumPy)."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    if preset is not None:
        env["OPENBLAS_NUM_THREADS"] = preset
    code = ("import sys, os, zoodip; assert 'numpy' not in sys.modules; import zoodip.cli; "
            "print(os.environ['OPENBLAS_NUM_THREADS'], 'numpy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == [expected, "True"]


def test_runtime_options_that_are_not_what_they_say_are_one_line_at_load(tiny_export):
    """threads=10**6 started that many onnxruntime threads (a hang); "no" counted as True."""
    from zoodip.errors import ZoodipError

    for options, needle in ((RuntimeOptions(threads=10**6), "threads must be an integer from 0 (all cores) to 256"),
                            (RuntimeOptions(threads=-1), "threads must be"), (RuntimeOptions(threads="1"), "threads must be"),
                            (RuntimeOptions(spin_wait="no"), "spin_wait must be True or False"),
                            (RuntimeOptions(low_memory="no"), "low_memory must be True or False"),
                            (RuntimeOptions(extra_config=5), "extra_config must be a dict"),
                            ({"threads": 1}, "options must be a zoodip.model.RuntimeOptions")):
        with pytest.raises(ZoodipError, match=re.escape(needle)):
            ExportedModel.load(tiny_export, options)
    for folder in ("", None, 5):
        with pytest.raises(ZoodipError, match="the export folder must be a path"):
            ExportedModel.load(folder)
    with pytest.raises(ZoodipError, match="verify_hashes must be None, True or False"):
        ExportedModel.load(tiny_export, verify_hashes="no")  # "no" would have been True
    ExportedModel.load(tiny_export, RuntimeOptions(threads=np.int64(1)))
    # A NumPy budget is the number it equals (it was refused as not a number), kept as a plain int
    model = ExportedModel.load(tiny_export, RuntimeOptions(threads=np.int32(1), memory_budget_mb=np.int64(10_000)))
    assert type(model.options.memory_budget_mb) is int and type(model.options.threads) is int
    assert model.options.memory_budget_mb == 10_000 and model.options.low_memory


def test_a_model_keeps_its_own_copy_of_the_options_and_checks_session_attributes_at_load(tiny_export):
    """The caller's options were the model's own: load set low_memory on them, and a change after load reached the
    next session unchecked (a ValueError); a session attribute of the wrong type was onnxruntime's TypeError at the
    first generate()."""
    from zoodip.errors import ZoodipError

    options = RuntimeOptions(memory_budget_mb=10_000, low_memory=False)
    model = ExportedModel.load(tiny_export, options)
    assert model.options.low_memory and not options.low_memory
    options.threads = "many"
    model.session("text_encoder")
    with pytest.raises(ZoodipError, match=r"^RuntimeOptions.session_attributes\['enable_cpu_mem_arena'\] = 'no' is not "
                                          r"a value onnxruntime takes \(bool expected\)$"):
        ExportedModel.load(tiny_export, RuntimeOptions(session_attributes={"enable_cpu_mem_arena": "no"}))


def test_a_graph_replaced_after_the_model_opened_is_refused_not_mixed_in(tiny_export, tmp_path):
    """A session opened after the export's files were replaced ran the other export's graph with this one's
    tokenizer and schedule: images of neither."""
    import shutil

    from zoodip.errors import ZoodipError

    folder = shutil.copytree(tiny_export, tmp_path / "export")
    model = ExportedModel.load(folder)
    model.session("unet")
    (folder / "vae_decoder.onnx").write_bytes((folder / "vae_decoder.onnx").read_bytes() + b" ")
    model.session("unet")  # (open already: kept)
    with pytest.raises(ZoodipError, match=r"changed since the model was opened \(vae_decoder.onnx\): open it again$"):
        model.session("vae_decoder")


def test_an_extra_config_entry_that_would_undo_the_recipes_session_setting_is_refused_at_load(tiny_export):
    """extra_config was applied after the recipe's own entries: session.disable_quant_qdq = "0" silently turned the
    activation-quantizing kernels back on, and training followed a loss that is not smooth at --mu."""
    from zoodip.errors import ZoodipError

    with pytest.raises(ZoodipError, match=r"^RuntimeOptions.extra_config\['session.disable_quant_qdq'\] = '0' would undo "
                                          r"this export's w8a32 recipe, which sets it to '1'.*: drop it$"):
        ExportedModel.load(tiny_export, RuntimeOptions(extra_config={"session.disable_quant_qdq": "0"}))
    opts, _ = ExportedModel.load(tiny_export, RuntimeOptions(extra_config={"session.disable_quant_qdq": "1"})
                                 ).session_options()  # (the recipe's own value: nothing undone)
    assert opts.get_session_config_entry("session.disable_quant_qdq") == "1"


@pytest.mark.parametrize("budget", [None, 400])
def test_the_vae_decoder_runs_without_the_arena_with_or_without_a_budget(tiny_export, budget):
    """With the arena the whole decode's freed buffers could not serve its larger ones: without a budget it peaked well
    above ``memory_plan.decode_bytes`` (which the no-budget size check counts); the other graphs keep theirs."""
    model = ExportedModel.load(tiny_export, RuntimeOptions(threads=1, memory_budget_mb=budget))
    assert not model.session_options("vae_decoder")[0].enable_cpu_mem_arena
    assert model.session_options("unet")[0].enable_cpu_mem_arena


def test_the_vae_decoder_session_fixes_the_heaps_threshold_without_a_budget_too(tiny_export, monkeypatch):
    """Its buffers are malloc's (no arena), and only a budget fixed glibc's threshold: without one the decoder's
    feature maps stayed in a fragmenting heap and small decodes peaked well above ``memory_plan.decode_bytes``."""
    import zoodip.model as model_module

    calls = []
    monkeypatch.setattr(model_module, "return_large_blocks", lambda: calls.append(1))
    model = ExportedModel.load(tiny_export, RuntimeOptions(threads=1))
    model.session("text_encoder")
    assert not calls  # the graphs with an arena leave the heap as it is
    model.session("vae_decoder")
    assert calls == [1]

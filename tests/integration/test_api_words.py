"""Training's and the embeddings' messages name the API's own settings (n=..., initializer_token, a1111=True,
clip_skip=..., load_textual_inversion(PATH, token=TOKEN)) to an API caller; the command line says the same messages
with its flags (cli_flags.in_flag_words)."""
from __future__ import annotations

import numpy as np
import pytest

from cli_helpers import assert_one_line_error, personalize_args, run_cli
from zoodip.cli_flags import in_flag_words
from zoodip.errors import ZoodipError


def _config(export, photos, out, **settings):
    from zoodip.trainer import PersonalizeConfig

    return PersonalizeConfig(export_dir=export, images=photos, output_dir=out,
                             **{"max_train_steps": 1, "eval_every": 0, "checkpoint_every": 0, "tau": 2, **settings})


@pytest.mark.parametrize("settings,flags,api,cli", [
    (dict(n=33), ["--n", "33"], r"^n=33 is more than the 32 numbers", "error: --n 33 is more than the 32 numbers"),
    (dict(initializer_token="zqxjvkwpfhgtb"), ["--initializer_token", "zqxjvkwpfhgtb"],
     r"^initializer_token 'zqxjvkwpfhgtb' is \d+ tokens", "error: --initializer_token 'zqxjvkwpfhgtb' is "),
    (dict(placeholder_token="<a/b>", a1111=True), ["--placeholder_token", "<a/b>", "--a1111"],
     r"^a1111=True: the token '<a/b>' makes no A1111 file name .* in placeholder_token,",
     "error: --a1111: the token '<a/b>' makes no A1111 file name"),
])
def test_training_refusals_name_the_apis_settings_and_the_clis_flags(tiny_export, photos, tmp_path, capsys, settings,
                                                                     flags, api, cli) -> None:
    from zoodip.trainer import Personalizer

    with pytest.raises(ZoodipError, match=api) as refused:
        Personalizer(_config(tiny_export, photos, tmp_path / "api", **settings))
    assert "--" not in str(refused.value), refused.value
    code, _, err = run_cli(personalize_args(tiny_export, photos, tmp_path / "cli", *flags), capsys)
    assert_one_line_error(code, err, cli)


def test_a_resume_past_max_train_steps_names_the_setting(tiny_export, photos, tmp_path) -> None:
    from zoodip.trainer import Personalizer

    out = tmp_path / "run"
    Personalizer(_config(tiny_export, photos, out, max_train_steps=2, checkpoint_every=1)).run()
    with pytest.raises(ZoodipError, match=r"^the checkpoint is at step 2, past max_train_steps 1: ") as refused:
        Personalizer(_config(tiny_export, photos, out)).run(resume=True)
    assert "--" not in str(refused.value)
    # (the command line's: test_hostile_inputs.py's test_resume_with_fewer_steps_than_done_is_refused)
    assert in_flag_words(str(refused.value)).startswith("the checkpoint is at step 2, past --max_train_steps 1: ")


@pytest.mark.parametrize("moved,needles", [
    (np.full(4, np.nan), ("lower learning_rate (reference 1e-2) or mu (reference 1e-3)", "new output_dir")),
    (np.full(4, 1e6), ("lower learning_rate (reference 1e-2)", "new output_dir")),
    (np.ones(4), ("mu or learning_rate is far from useful", "new output_dir")),
])
def test_a_run_that_blew_up_or_never_moved_names_the_apis_settings(moved, needles) -> None:
    from zoodip.run_checks import check_outcome

    with pytest.raises(ZoodipError) as refused:
        check_outcome(moved.astype(np.float32), np.ones(4, np.float32), vocabulary_max_norm=1.0)
    said = str(refused.value)
    assert all(needle in said for needle in needles) and "--" not in said, said
    flagged = in_flag_words(said)
    assert "--learning_rate" in flagged and "--output_dir" in flagged and ("mu" not in said or "--mu" in flagged)


def test_the_divergence_refusal_says_learning_rate_and_mu_as_flags() -> None:
    assert in_flag_words("the embedding diverged; start again with a lower learning_rate or mu in a new "
                         "output_dir") == ("the embedding diverged; start again with a lower --learning_rate or --mu "
                                           "in a new --output_dir")


def _embedding(path, token, width=8):
    from zoodip.embeddings import save_learned_embeds

    save_learned_embeds(path, token, np.ones((1, width), np.float32))
    return path


def test_an_a1111_trigger_word_warning_names_a1111_true_and_the_cli_its_flag() -> None:
    from zoodip.embeddings import warn_of_a1111_trigger

    class Vocabulary:
        def is_known_word(self, word: str) -> bool:
            return word == "star"

    with pytest.warns(UserWarning) as caught:
        warn_of_a1111_trigger("<star>", Vocabulary())
    said = str(caught[0].message)
    assert said.startswith("a1111=True: A1111 calls") and "a placeholder_token whose" in said and "--" not in said
    assert in_flag_words(said).startswith("--a1111: A1111 calls") and "a --placeholder_token whose" in in_flag_words(said)


def test_embedding_refusals_name_the_apis_calls_and_the_cli_its_embedding_flag(tmp_path) -> None:
    from zoodip.embeddings import load_embeddings
    from zoodip.safetensors_io import save_file

    a = _embedding(tmp_path / "a.safetensors", "<a>")
    (tmp_path / "b").mkdir()
    b = _embedding(tmp_path / "b" / "b.safetensors", "<a>")
    save_file({"my dog": np.ones((1, 8), np.float32)}, tmp_path / "spaced.safetensors")
    save_file({f"model.diffusion_model.w{i}": np.ones(2, np.float32) for i in range(2)}, tmp_path / "sd.safetensors")
    cases = [([a, b], "two embeddings are named '<a>' (", "rename one with load_textual_inversion(PATH, token=TOKEN)",
              "rename one with --embedding PATH:TOKEN"),
             ([tmp_path / "spaced.safetensors"], "", "rename it with load_textual_inversion(PATH, token=TOKEN)",
              "rename it with --embedding PATH:TOKEN"),
             ([f"{tmp_path / 'b'}:<mine>"], "the embedding spec '", "a folder's embeddings keep their own names",
              "--embedding '"),
             ([f"{a}:"], "the embedding spec '", "the token after ':' must be one word", "--embedding '"),
             ([tmp_path / "sd.safetensors"], "", "and load OUT_DIR as the model (export_dir=OUT_DIR)",
              "and load OUT_DIR as the model (--model OUT_DIR)")]
    for specs, opening, api, cli in cases:
        with pytest.raises(ZoodipError) as refused:
            load_embeddings(specs)
        said = str(refused.value)
        assert said.startswith(opening) and api in said and "--" not in said, said
        flagged = in_flag_words(said)
        assert flagged.startswith(cli) if opening.startswith("the embedding spec") else cli in flagged, flagged


def test_an_embedding_trained_at_another_clip_skip_is_told_as_clip_skip(tmp_path) -> None:
    import json

    from zoodip.embeddings import load_embeddings, save_learned_embeds

    path = tmp_path / "learned_embeds.safetensors"
    save_learned_embeds(path, "<a>", np.ones((1, 8), np.float32), metadata={"settings": json.dumps({"clip_skip": 1})})
    with pytest.warns(UserWarning) as caught:
        load_embeddings([path], clip_skip=0)
    said = str(caught[0].message)
    assert "trained at clip_skip=1 and is used at clip_skip=0: pass clip_skip=1 to" in said and "--" not in said
    assert "trained at --clip-skip 1 and is used at --clip-skip 0: pass --clip-skip 1 to" in in_flag_words(said)
    # (the command line's whole line: test_clip_skip.py)


def test_generate_says_a_folder_spec_with_its_embedding_flag(tiny_export, tmp_path, capsys) -> None:
    (tmp_path / "tis").mkdir()
    _embedding(tmp_path / "tis" / "a.safetensors", "<a>")
    code, _, err = run_cli(["generate", "--model", tiny_export, "--prompt", "a star", "--embedding",
                            f"{tmp_path / 'tis'}:<mine>", "--out", tmp_path / "a.png"], capsys)
    assert_one_line_error(code, err, f"error: --embedding '{tmp_path / 'tis'}:<mine>': a folder's embeddings keep")


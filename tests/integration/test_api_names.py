"""The SDK's messages name its settings as the API spells them (curvature_fraction, resume=True, memory_budget_mb);
the command line says the same messages with its flags (cli_flags.in_flag_words, from the parsers' own flags)."""
from __future__ import annotations

import pytest

from cli_helpers import assert_one_line_error, personalize_args, run_cli
from zoodip.errors import ZoodipError


def test_the_command_line_says_the_apis_names_as_its_flags() -> None:
    from zoodip.cli_flags import in_flag_words

    said = in_flag_words("curvature_fraction 0.9: /runs/my_model/output_dir has no curvature subspace; give "
                         "curvature_fraction=0, resume=True, memory_budget_mb=300 or validation_prompt_weighting='a1111'")
    assert said == ("--curvature-subspace 0.9: /runs/my_model/output_dir has no curvature subspace; give "
                    "--no-curvature-subspace, --resume, --memory-budget 300 or --prompt-weighting a1111")
    # English words are flags only where they open the message; a call's keywords without a value stay as written.
    assert in_flag_words("steps must be 1 or more: image folder x, the API's generate(image=...)") == \
        "--steps must be 1 or more: image folder x, the API's generate(image=...)"
    assert in_flag_words("images=DIR and export_dir=DIR, or a new output_dir") == \
        "--train_data_dir DIR and --model DIR, or a new --output_dir"


def test_what_a_message_quotes_is_the_users_text_and_stays_as_written() -> None:
    """A prompt or caption quoted in a message was rewritten too: 'a photo with seed=5' said '--seed 5'."""
    from zoodip.cli_flags import in_flag_words

    assert in_flag_words("prompt 'a photo with seed=5 and output_dir' is too long: shorten it (steps=4)") == \
        "prompt 'a photo with seed=5 and output_dir' is too long: shorten it (--steps 4)"
    assert in_flag_words('caption "learning_rate x" of a.txt; the export\'s output_dir, optimizer=\'sgd\'') == \
        'caption "learning_rate x" of a.txt; the export\'s --output_dir, --optimizer sgd'



def test_a_flags_value_and_a_path_given_are_the_users_text_wherever_they_stand() -> None:
    """A value named like a setting was said as that setting's flag: 'output_dir output_dir is an existing file'
    said '--output_dir --output_dir', '--out learning_rate must end in .png' '--out --learning_rate'; and a path the
    command line gave stayed as given only where it opened the message ('cannot read image --learning_rate')."""
    from zoodip.cli_flags import in_flag_words

    assert in_flag_words("output_dir output_dir is an existing file") == "--output_dir output_dir is an existing file"
    assert in_flag_words("template_file learning_rate holds no template") == \
        "--template_file learning_rate holds no template"
    assert in_flag_words("--out learning_rate must end in .png") == "--out learning_rate must end in .png"
    assert in_flag_words("cannot read image learning_rate (not an image)", ["learning_rate"]) == \
        "cannot read image learning_rate (not an image)"
    # (what follows a value is read again: 'max_train_steps (which lr_scheduler=...' says both flags)
    assert in_flag_words("max_train_steps (which lr_scheduler='cosine' follows)") == \
        "--max_train_steps (which --lr_scheduler cosine follows)"

@pytest.fixture(scope="module")
def bare_export(tiny_sd_folder, tmp_path_factory):
    """The tiny export without a curvature subspace (as ``zoodip export --curvature-samples 0`` writes it)."""
    from zoodip_export.export_model import export_model

    out = tmp_path_factory.mktemp("bare") / "bare"
    export_model(tiny_sd_folder, out, recipe="w8a32", parity=False, progress=False, curvature_samples=0)
    return out


def test_curvature_subspace_messages_name_the_apis_setting_and_the_clis_flag(bare_export, photos, tmp_path,
                                                                            capsys) -> None:
    from zoodip.trainer import PersonalizeConfig, Personalizer

    def config(name: str, fraction: float | None) -> PersonalizeConfig:
        return PersonalizeConfig(export_dir=bare_export, images=photos, output_dir=tmp_path / name,
                                 max_train_steps=2, eval_every=0, checkpoint_every=0, curvature_fraction=fraction)

    with pytest.warns(UserWarning) as caught:
        Personalizer(config("auto", None))
    said = " ".join(str(w.message) for w in caught)
    assert "curvature_fraction=0" in said and "--" not in said, said
    with pytest.raises(ZoodipError, match=r"^curvature_fraction 0\.9: .* drop curvature_fraction$") as refused:
        Personalizer(config("explicit", 0.9))
    assert "--" not in str(refused.value)

    code, _, err = run_cli(personalize_args(bare_export, photos, tmp_path / "cli", "--curvature-subspace", "0.9"),
                           capsys)
    assert_one_line_error(code, err, "--curvature-subspace 0.9: ")
    assert err.rstrip().endswith("drop --curvature-subspace"), err
    code, _, err = run_cli(personalize_args(bare_export, photos, tmp_path / "cli2", "--max_train_steps", "1",
                                            "--eval-every", "0"), capsys)
    assert code == 0 and "or give --no-curvature-subspace to silence this" in err and "curvature_fraction" not in err


def test_setup_budget_and_resume_messages_name_the_apis_settings(bare_export, photos, tmp_path, capsys) -> None:
    from zoodip.model import ExportedModel, RuntimeOptions
    from zoodip.run_folder import check_run_folder
    from zoodip.trainer import PersonalizeConfig

    for budget, needle in ((0, "memory_budget_mb must be a positive number of MB"), (1, "memory_budget_mb 1 is below")):
        with pytest.raises(ZoodipError, match=needle) as refused:
            ExportedModel.load(bare_export, RuntimeOptions(memory_budget_mb=budget))
        assert "--" not in str(refused.value)
    code, _, err = run_cli(["generate", "--model", bare_export, "--prompt", "a star", "--memory-budget", "1",
                            "--out", tmp_path / "a.png"], capsys)
    assert_one_line_error(code, err, "--memory-budget 1 is below")

    for settings, needle in ((dict(max_train_steps=0), "max_train_steps must be"),
                             (dict(curvature_fraction=1.5), "curvature_fraction must be"),
                             (dict(checkpoint_every=-1), "checkpoint_every must be")):
        with pytest.raises(ZoodipError, match=f"^{needle}"):
            PersonalizeConfig(export_dir=bare_export, images=photos, output_dir=tmp_path / "o", **settings).validate()
    code, _, err = run_cli(personalize_args(bare_export, photos, tmp_path / "o", "--checkpointing_steps", "-1"), capsys)
    assert_one_line_error(code, err, "error: --checkpointing_steps must be")

    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.npz").write_bytes(b"")
    with pytest.raises(ZoodipError, match=r"pass resume=True to continue it, or choose a new output_dir$"):
        check_run_folder(PersonalizeConfig(export_dir=bare_export, images=photos, output_dir=run), resume=False)
    code, _, err = run_cli(personalize_args(bare_export, photos, run), capsys)
    assert_one_line_error(code, err, "pass --resume to continue it, or choose a new --output_dir")

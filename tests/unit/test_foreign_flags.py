"""diffusers' textual_inversion.py flags that zoodip lacks: each is told why and what to do, in one line."""
from __future__ import annotations

import argparse

import pytest

from zoodip.cli import add_personalize_flags, main
from zoodip.foreign_flags import DIFFUSERS_TI_FLAGS, foreign_flag_problem


def _personalize_flags() -> set[str]:
    parser = argparse.ArgumentParser()
    add_personalize_flags(parser)
    return {option.replace("-", "_") for action in parser._actions for option in action.option_strings}


def test_no_listed_flag_is_one_zoodip_takes() -> None:
    """A flag zoodip gains must leave the table, or its users would be told to drop a working flag."""
    taken = _personalize_flags()
    assert "__max_train_steps" in taken and "__learning_rate" in taken  # the reading itself works
    assert not {flag.replace("-", "_") for flag in DIFFUSERS_TI_FLAGS} & taken


def test_either_spelling_and_values_are_recognized() -> None:
    assert foreign_flag_problem(["--train-batch-size=4"]).startswith("--train-batch-size is a flag of diffusers'")
    assert "use --max_train_steps" in foreign_flag_problem(["3", "--num_train_epochs", "3"])
    assert foreign_flag_problem(["--bogus", "--trainbatchsize"]) is None


@pytest.mark.parametrize("flag", ["--gradient_accumulation_steps", "--mixed_precision", "--push_to_hub"])
def test_the_cli_names_the_flag_and_what_to_do(flag, capsys) -> None:
    code = main(["personalize", "--model", "m", "--train_data_dir", "p", "--output_dir", "o", flag, "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith(f"error: {flag} is a flag of diffusers' textual_inversion.py, not of zoodip: ")
    assert "drop it" in err[0]


def test_no_listed_generate_flag_is_one_zoodip_generate_takes() -> None:
    from zoodip.cli_flags import add_generate_flags
    from zoodip.foreign_flags import GENERATE_FLAGS

    parser = argparse.ArgumentParser()
    add_generate_flags(parser)
    taken = {option.replace("-", "_") for action in parser._actions for option in action.option_strings}
    assert "__guidance_scale" in taken and not {flag.replace("-", "_") for flag in GENERATE_FLAGS} & taken


@pytest.mark.parametrize("flag,advice", [("--cfg-scale", "--guidance-scale"), ("--output", "--out FILE.png"),
                                         ("--denoising_strength", "--strength"), ("--scheduler", "--sampler"),
                                         ("--batch-size", "--num-images"), ("--n_iter", "--num-images")])
def test_generate_names_the_diffusers_or_a1111_flag_and_what_to_use(flag, advice, capsys) -> None:
    code = main(["generate", "--model", "m", "--prompt", "a dog", flag, "2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith(f"error: {flag} is a flag of diffusers' pipelines or A1111, not of zoodip: ") and advice in err[0]


@pytest.mark.parametrize("flag, words", [("--use_karras_sigmas", "--sampler dpmpp_2m_karras"),
                                         ("--lora", "zoodip export SRC OUT --lora FILE:SCALE"),
                                         ("--textual_inversion", "--embedding PATH"), ("--restore-faces", "drop it"),
                                         ("--generator", "--seed N"), ("--output_type", "--save-latents")])
def test_generate_names_what_diffusers_and_a1111_users_type(flag, words, capsys) -> None:
    code = main(["generate", "--model", "m", "--prompt", "p", flag, "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and words in err[0] and err[0].startswith(f"error: {flag} is a flag of")

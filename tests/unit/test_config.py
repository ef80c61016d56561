"""PersonalizeConfig refuses values of the wrong kind in one line, before any model is loaded (API users)."""
from __future__ import annotations

import dataclasses
import typing

import pytest

from zoodip.config import PersonalizeConfig
from zoodip.errors import ZoodipError

BASE = dict(export_dir=".", images=".", output_dir="run")
APART = dict(export_dir="no-export", images="no-photos", output_dir="run")  # validate() refuses a run inside the photos


@pytest.mark.parametrize("settings,needle", [
    (dict(t_range="500-900"), "t_range (T_MIN, T_MAX) must be two integers, got '500-900'"),  # not (5, 0)
    (dict(t_range=(500.5, 900)), "must be two integers"),  # not silently 500
    (dict(t_range=(500, 900, 1000)), "must be two integers"),
    (dict(adam_betas=("a", 0.999)), "adam_betas (beta1, beta2) must be two finite numbers"),
    (dict(batched="yes"), "batched must be True or False, got 'yes'"),
    (dict(flip=1), "flip must be True or False, got 1"),
])
def test_wrong_kinds_are_refused(settings, needle) -> None:
    with pytest.raises(ZoodipError) as info:
        PersonalizeConfig(**BASE, **settings)
    assert needle in str(info.value)


@pytest.mark.parametrize("settings,needle", [  # each was accepted, and failed after the model loaded, or never
    (dict(curvature_fraction=True), "curvature_fraction must be a fraction in [0, 1]"),
    (dict(vocabulary_variance=True), "vocabulary_variance must be a variance fraction in (0, 1]"),
    (dict(adam_betas=(1.0, 0.999)), "adam_betas[0] (beta1) must be a finite number in [0, 1), got 1.0"),
    (dict(adam_eps=0.0), "adam_eps must be a finite number > 0, got 0.0"),
    (dict(placeholder_token="<a\x00b>"), "placeholder_token must be one word without spaces, control or invisible"),
    (dict(placeholder_token="<\udcff>"), "without spaces, control or invisible"),  # a byte the terminal could not read
    (dict(placeholder_token="<a\u200bb>"), "without spaces, control or invisible"),  # a zero-width space
    (dict(placeholder_token="<" + "a" * 200 + ">"), "placeholder_token has 202 characters, more than 100"),
    (dict(max_train_steps=10**30), "max_train_steps must be at most 1,000,000,000"),
    (dict(eval_timesteps=10**4), "eval_timesteps must be at most 100, got 10,000"),
])
def test_values_past_their_range_are_refused_before_any_work(settings, needle) -> None:
    with pytest.raises(ZoodipError) as info:
        PersonalizeConfig(**APART, **settings).validate()
    assert needle in str(info.value)
    PersonalizeConfig(**APART, curvature_fraction=0, eval_timesteps=100, max_train_steps=10**9).validate()
    PersonalizeConfig(**APART, placeholder_token="<\U0001f469\u200d\U0001f4bb>").validate()  # an emoji's joiner is no control


def test_right_kinds_pass_and_are_normalized() -> None:
    config = PersonalizeConfig(**BASE, t_range=[300.0, 700], adam_betas=[0.9, 0.99], batched=None, flip=True)
    assert config.t_range == (300, 700) and isinstance(config.t_range[0], int)
    assert config.adam_betas == (0.9, 0.99)


def test_switches_are_found_by_their_meaning_not_one_spelling() -> None:
    # A field written Optional[bool] (or in a module without postponed annotations) is the same switch as
    # one written "bool | None": both must refuse 'yes'.
    from zoodip.config import _switch_fields

    @dataclasses.dataclass
    class Extended(PersonalizeConfig):
        dry_run: typing.Optional[bool] = None  # the spelling under test
        strict: bool = False
        level: int = 1

    found = _switch_fields(Extended)
    assert found["dry_run"] is True and found["strict"] is False and "level" not in found
    assert found["batched"] is True and found["flip"] is False
    with pytest.raises(ZoodipError, match="dry_run must be True or False, got 'yes'"):
        Extended(**BASE, dry_run="yes")
    assert Extended(**BASE, dry_run=None, strict=True).strict is True


@pytest.mark.parametrize("annotation,kind", [
    ("bool", False), ("bool | None", True), ("None | bool", True), ("Optional[bool]", True),
    ("typing.Optional[bool]", True), ("typing.Union[None, bool]", True), (bool, False),
    (typing.Optional[bool], True), ("int", None), ("bool | int", None), ("list[bool]", None), (int, None),
    (typing.Optional[int], None),
])
def test_switch_kind_reads_the_meaning_of_an_annotation(annotation, kind) -> None:
    from zoodip.config import _switch_kind

    assert _switch_kind(annotation) is kind



def test_a_bare_personalize_command_is_the_apis_default_run() -> None:
    """The CLI's personalize defaults are PersonalizeConfig's, field by field (they were literals of their own)."""
    from zoodip.cli import build_parser, config_from_args

    args = build_parser().parse_args(["personalize", "--model", "m", "--train_data_dir", "p", "--output_dir", "o"])
    from_cli = config_from_args(args)
    api = PersonalizeConfig(export_dir="m", images="p", output_dir="o")
    differing = {f.name: (getattr(from_cli, f.name), getattr(api, f.name)) for f in dataclasses.fields(PersonalizeConfig)
                 if getattr(from_cli, f.name) != getattr(api, f.name)}
    assert not differing


def test_generates_defaults_are_the_apis() -> None:
    import inspect

    from zoodip.cli import build_parser
    from zoodip.generate import generate

    args = build_parser().parse_args(["generate", "--model", "m", "--prompt", "x"])
    api = inspect.signature(generate).parameters
    for flag, parameter in (("steps", "steps"), ("guidance_scale", "guidance_scale"), ("sampler", "sampler"),
                            ("negative_prompt", "negative_prompt"), ("num_images", "num_images"), ("seed", "seed"),
                            ("eta", "eta"), ("clip_skip", "clip_skip"), ("guidance_rescale", "guidance_rescale")):
        assert getattr(args, flag) == api[parameter].default, flag


def test_learnable_properties_are_the_types_choices() -> None:
    from zoodip.prompts import LEARNABLE_PROPERTIES, LearnableProperty

    assert LEARNABLE_PROPERTIES == typing.get_args(LearnableProperty)


def test_text_files_name_the_same_run_from_any_folder(tmp_path, monkeypatch) -> None:
    """A caption or template file named from where the run started, then from elsewhere on --resume: the same run
    (its content is in the photos' identity); config.json records absolute paths, which name it from anywhere."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    here = PersonalizeConfig(**BASE, template_file="tmpl.txt", captions="caps.txt")
    recorded = here.to_json()
    assert recorded["template_file"] == str(tmp_path / "a" / "tmpl.txt") and recorded["images"] == str(tmp_path / "a")
    monkeypatch.chdir(tmp_path / "b")
    there = PersonalizeConfig(**BASE, template_file="../a/tmpl.txt", captions=tmp_path / "a" / "caps.txt")
    assert there.fingerprint() == here.fingerprint() and not there.settings_differing_from(recorded)


def test_a_folder_given_as_a_text_file_is_refused_naming_its_flag(tmp_path) -> None:
    """--captions FOLDER was refused as "cannot read FOLDER (Is a directory): check the file", naming no flag (the
    API's name, which the command line says as its flag)."""
    for field in ("captions", "template_file"):
        with pytest.raises(ZoodipError, match=f"^{field} \\S+ is a folder: name the (JSON|text) file itself$"):
            PersonalizeConfig(**APART, **{field: tmp_path}).validate()


def test_an_empty_optional_path_is_one_rule_for_the_api_and_the_command_line(monkeypatch) -> None:
    """The rule was written twice (PersonalizeConfig's captions/template_file, cli_flags.refuse_empty_paths): both
    now ask zoodip.validation.optional_path, the one place that says it."""
    import argparse

    from zoodip import validation
    from zoodip.cli_flags import api_name_flags, refuse_empty_paths

    api_name_flags()  # (the parsers built: their path flags known)
    asked = []
    real = validation.optional_path
    monkeypatch.setattr(validation, "optional_path", lambda *a: (asked.append(a[:2]), real(*a))[1])
    for name in ("captions", "template_file"):
        with pytest.raises(ZoodipError, match=f"^{name} is empty: name the .* file, or drop {name}$"):
            PersonalizeConfig(export_dir="e", images="i", output_dir="o", **{name: " "})
    with pytest.raises(ZoodipError, match="^--latents is empty: name the file, or drop --latents$"):
        refuse_empty_paths(argparse.Namespace(latents=""), ("latents",))
    assert asked == [("captions", " "), ("captions", None), ("template_file", " "), ("--latents", "")]

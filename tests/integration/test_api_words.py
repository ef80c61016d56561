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
    # (was "the placeholder 'cat' is already a word ...: pick another placeholder", naming no setting or flag)
    (dict(placeholder_token="cat"), ["--placeholder_token", "cat"], r"^placeholder_token 'cat' is already a word of "
     r"the vocabulary, whose meaning the run would change: pick a new word, e.g. '<my-dog>'$",
     "error: --placeholder_token 'cat' is already a word of the vocabulary"),
    (dict(t_range=(500, 100)), ["--t-range", "500", "100"], r"^t_range must satisfy 0 <= T_MIN < T_MAX <= 1000 .* "
     r"got \(500, 100\)", "error: --t-range must satisfy 0 <= T_MIN < T_MAX <= 1000"),
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


def test_a_strength_that_leaves_no_step_names_generates_keywords(tiny_export, tmp_path, capsys) -> None:
    from PIL import Image

    from zoodip.sampling import steps_run

    with pytest.raises(ZoodipError) as refused:
        steps_run(4, 0.1)
    said = str(refused.value)
    assert said.startswith("strength 0.1 of 4 steps leaves no step") and said.endswith(
        ": raise it, or give steps=10 or more") and "--" not in said, said
    assert steps_run(10, 0.1) == 1 and steps_run(4, 1 / 3 + 1e-9) == 1  # (the steps it says are enough)
    Image.new("RGB", (64, 64), (90, 120, 150)).save(tmp_path / "start.png")
    code, _, err = run_cli(["generate", "--model", tiny_export, "--prompt", "a star", "--image", tmp_path / "start.png",
                            "--strength", "0.1", "--steps", "4", "--out", tmp_path / "o.png"], capsys)
    assert_one_line_error(code, err, "error: --strength 0.1 of 4 steps leaves no step")
    assert err.rstrip().endswith(": raise it, or give --steps 10 or more"), err


def test_sampler_notes_name_generates_keywords_and_the_cli_its_flags() -> None:
    from zoodip.sampling import sampler_notes

    class Model:
        scheduler_config = {"_class_name": "LCMScheduler", "use_karras_sigmas": True,
                            "algorithm_type": "sde-dpmsolver++"}

    notes = sampler_notes(Model(), "dpmpp_2m", 1.0)
    assert "made for sampler='lcm', steps=4, guidance_scale=1; sampler='dpmpp_2m' may give" in notes[0]
    assert "(sampler='dpmpp_2m_karras' has them)" in notes[1] and "(sampler='dpmpp_2m_sde' is it)" in notes[1]
    assert not any("--" in note for note in notes), notes
    flagged = [in_flag_words(note) for note in notes]
    assert "made for --sampler lcm, --steps 4, --guidance-scale 1; --sampler dpmpp_2m may give" in flagged[0]
    assert "(--sampler dpmpp_2m_karras has them)" in flagged[1] and "(--sampler dpmpp_2m_sde is it)" in flagged[1]


@pytest.mark.parametrize("fields,name,api,cli", [
    ({"Sampler": "Heun"}, "sampler", "pass sampler=NAME", "pass --sampler NAME"),
    ({"Size": "512x"}, "width", "give it yourself (width=VALUE)", "give it yourself (--width VALUE)"),
    ({"Paste back": "maybe"}, "paste_back", "give it yourself (paste_back)", "give it yourself (--paste-back)"),
    ({"Size": "64x64", "Denoising strength": "0.5", "Hires upscale": "abc"}, "hires_scale", "give hires_scale",
     "give --hires-scale"),
    ({"Size": "64x64", "Denoising strength": "5", "Hires upscale": "2"}, "hires_strength", "give hires_strength",
     "give --hires-strength"),
    ({"Size": "64x64", "Denoising strength": "0.5", "Hires upscale": "2", "Hires steps": "x"}, "hires_steps",
     "give hires_steps", "give --hires-steps"),
    ({"Size": "64x64", "Denoising strength": "0.01", "Hires upscale": "2", "Hires steps": "30"}, "hires_steps",
     "give hires_steps and hires_strength", "give --hires-steps and --hires-strength"),
    ({"Size": "64x64", "Denoising strength": "0.5", "First pass size": "32x32"}, "hires_scale",
     "give hires_scale and the first pass's width=W and height=H",
     "give --hires-scale and the first pass's --width W and --height H"),
    ({"Size": "64x64", "Denoising strength": "0.5", "Hires resize": "128x32"}, "hires_scale", "give hires_scale",
     "give --hires-scale"),
])
def test_an_images_parameters_problems_name_generates_settings(fields, name, api, cli) -> None:
    from zoodip.infotext import settings_from_fields

    problem = settings_from_fields(fields)[1][name]
    assert problem.endswith(api) and "--" not in problem, problem
    assert in_flag_words(f"--parameters-from a.png: {problem}").endswith(cli)


def test_the_hires_fix_and_memory_refusals_name_the_apis_settings() -> None:
    for said, flagged in (
            ("hires_strength 0.1 of 4 hires steps leaves no step to run: raise hires_strength or hires_steps",
             "--hires-strength 0.1 of 4 hires steps leaves no step to run: raise --hires-strength or --hires-steps"),
            ("the hires fix's 512x512 image (hires_scale=4) needs at least 1 GB, more than the memory_budget_mb of 9 "
             "MB: use at most 256 px", "the hires fix's 512x512 image (--hires-scale 4) needs at least 1 GB, more "
             "than the --memory-budget of 9 MB: use at most 256 px"),
            ("the hires fix's second pass: decoding a 512x512 image whole needs about 1 GB (without memory_budget_mb "
             "every graph stays loaded), more than x: use at most 256 px, or give memory_budget_mb=MB to decode in "
             "tiles, or a smaller hires_scale", "the hires fix's second pass: decoding a 512x512 image whole needs "
             "about 1 GB (without --memory-budget every graph stays loaded), more than x: use at most 256 px, or give "
             "--memory-budget MB to decode in tiles, or a smaller --hires-scale"),
            ("encoding a 256x256 start image needs about 170 MB (the VAE encoder is not tiled), more than the "
             "memory_budget_mb of 80 MB: make a smaller image (width=W, height=H) or raise the budget",
             "encoding a 256x256 start image needs about 170 MB (the VAE encoder is not tiled), more than the "
             "--memory-budget of 80 MB: make a smaller image (--width W, --height H) or raise the budget")):
        assert in_flag_words(said) == flagged


def test_a_lora_tag_at_another_strength_says_the_export_command() -> None:
    from zoodip.extra_networks import tag_problems

    class Model:
        manifest = {"source": {"loras": [{"file": "style.safetensors", "scale": 1.0, "sha256": "0" * 64}]}}

    problem = tag_problems("a cat <lora:style:0.5>", Model())[0]
    assert "export again ('zoodip export SRC OUT --lora FILE:SCALE') for another" in problem
    assert in_flag_words(problem) == problem  # (the export command's own words, quoted)


def test_output_folder_and_image_file_refusals_name_the_apis_words(tmp_path) -> None:
    from PIL import Image

    from zoodip.images import save_images
    from zoodip.paths import check_output_dir

    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(ZoodipError, match=r"^output_dir \S+ is an existing file, not a folder") as refused:
        check_output_dir(tmp_path / "file")
    assert in_flag_words(str(refused.value)).startswith(f"--output_dir {tmp_path / 'file'} is an existing file")
    with pytest.raises(ZoodipError, match=r"^the image file \S+\.webp: a \.webp image holds at most"):
        save_images([(Image.new("RGB", (16384, 2)), tmp_path / "b.webp")])
    with pytest.raises(ZoodipError, match=r"^--out \S+\.webp: a \.webp image holds at most"):  # (the CLI names it)
        save_images([(Image.new("RGB", (16384, 2)), tmp_path / "b.webp")], "--out")
    assert in_flag_words("cannot write validation_prompt preview /r/validation-steps-2.png (the disk is full)") == \
        "cannot write --validation_prompt preview /r/validation-steps-2.png (the disk is full)"
    assert in_flag_words("/r is in use by another zoodip run: wait for it to end, or choose another output_dir") \
        .endswith("or choose another --output_dir")


@pytest.mark.parametrize("said,flagged", [
    ("orthogonal directions: n=33 is more than the 32 dimensions searched; use n=32 or fewer",
     "orthogonal directions: --n 33 is more than the 32 dimensions searched; use --n 32 or fewer"),
    ("orthogonal_after (forwards) must be an integer >= 0, got -5",
     "--orthogonal-after (forwards) must be an integer >= 0, got -5"),
    ("orthogonal_after without a search subspace: a late step would cost 33 forwards; give orthogonal_n=N, or keep "
     "the curvature subspace (or add vocabulary_variance=FRACTION)", "--orthogonal-after without a search subspace: "
     "a late step would cost 33 forwards; give --orthogonal-n N, or keep the curvature subspace (or add "
     "--vocabulary-subspace FRACTION)"),
    ("orthogonal_n=33 is more than the 32 dimensions searched", "--orthogonal-n 33 is more than the 32 dimensions "
     "searched"),
    ("lr_scheduler must be one of constant, linear, got 'x'", "--lr_scheduler must be one of constant, linear, got 'x'"),
    ("variation_strength mixes in another seed's noise: give it with variation_seed",
     "--variation-strength mixes in another seed's noise: give it with --variation-seed"),
    ("variation_seed changes nothing without a variation strength: give one (variation_strength=S, 0.1 to 0.3 for a "
     "close variation)", "--variation-seed changes nothing without a variation strength: give one "
     "(--variation-strength S, 0.1 to 0.3 for a close variation)"),
])
def test_the_method_schedule_and_noise_refusals_say_the_apis_names_as_flags(said, flagged) -> None:
    """The SDK's own wording of these is held by test_zo.py, test_lr_schedule.py and test_noise.py."""
    assert in_flag_words(said) == flagged


@pytest.mark.parametrize("strength,mask,api,cli", [
    (None, "m.png", "mask_image applies to inpainting, which redraws a part of a picture: pass the picture to start "
     "from too (image=...), or drop mask_image", "--mask applies to inpainting, which redraws a part of a picture: add "
     "--image PATH, or drop --mask"),
    (0.5, None, "strength applies to image-to-image only (how much of the picture is redrawn): pass the picture to "
     "start from too (image=...), or drop strength", "--strength applies to image-to-image only (how much of the "
     "picture is redrawn): add --image PATH, or drop --strength"),
])
def test_image_to_image_settings_without_an_image_say_the_apis_words_and_the_clis_flags(strength, mask, api,
                                                                                       cli) -> None:
    """--mask without --image said '--mask-image applies to image-to-image only: pass the image too (image=, --image
    PATH), or drop it': another spelling of the flag than the help's, inpainting called image-to-image, and the API's
    keyword beside the flag; the API is told in its words, the command line in its flags."""
    from zoodip.generate_settings import check_image_only

    with pytest.raises(ZoodipError) as refused:
        check_image_only(None, strength, mask)
    assert str(refused.value) == api
    assert in_flag_words(api) == cli
    assert in_flag_words("mask_blur applies to inpainting: pass mask_image too, or drop it") == \
        "--mask-blur applies to inpainting: pass --mask too, or drop it"


def test_template_file_refusals_name_the_apis_setting_and_the_cli_its_flag(tiny_export, photos, tmp_path,
                                                                           capsys) -> None:
    from zoodip.prompts import PromptSampler, load_template_file
    from zoodip.trainer import Personalizer

    (tmp_path / "bad.txt").write_text("no name here\n")
    (tmp_path / "empty.txt").write_text("\n\n")
    (tmp_path / "latin1.txt").write_bytes(b"a photo of [name] \xe9\n")
    for name, said in (("bad.txt", " line 1 ('no name here') has no [name]"), ("empty.txt", " holds no template"),
                       ("latin1.txt", "")):
        with pytest.raises(ZoodipError) as refused:
            load_template_file(tmp_path / name)
        reading = "cannot read " if not said else ""
        assert str(refused.value).startswith(f"{reading}template_file {tmp_path / name}{said}"), refused.value
        assert "--" not in str(refused.value)
        assert in_flag_words(str(refused.value)).startswith(f"{reading}--template_file {tmp_path / name}{said}")
    missing = tmp_path / "missing.txt"
    with pytest.raises(ZoodipError, match=r"^template_file \S+missing\.txt does not exist") as refused:
        Personalizer(_config(tiny_export, photos, tmp_path / "api", template_file=missing))
    assert "--" not in str(refused.value)
    code, _, err = run_cli(personalize_args(tiny_export, photos, tmp_path / "cli", "--template_file", missing), capsys)
    assert_one_line_error(code, err, f"error: --template_file {missing} does not exist")
    # PersonalizeConfig refuses the pair first, in its own words; PromptSampler's own refusal names its arguments.
    with pytest.raises(ZoodipError, match="^captions and template_file are two ways") as refused:
        _config(tiny_export, photos, tmp_path / "api", captions=tmp_path / "c.json", template_file=missing).validate()
    assert in_flag_words(str(refused.value)).startswith("--captions and --template_file are two ways")
    with pytest.raises(ZoodipError, match="^PromptSampler takes captions or templates, ") as refused:
        PromptSampler("<s>", captions={"a.png": "a <s>"}, templates=["a [name]"])
    assert "--" not in str(refused.value)


def test_a_prompt_past_the_token_limit_with_its_vectors_names_num_vectors(tiny_export, photos, tmp_path) -> None:
    from zoodip.trainer import Personalizer

    with pytest.raises(ZoodipError, match=r"past the text encoder's \d+: use a smaller num_vectors or") as refused:
        Personalizer(_config(tiny_export, photos, tmp_path / "api", num_vectors=75))
    assert "--" not in str(refused.value)
    # (the command line's whole line: test_num_vectors.py's test_bad_values_are_refused_in_one_line_before_any_output)
    assert "use a smaller --num_vectors or shorter captions" in in_flag_words(str(refused.value))


def test_generates_token_warnings_name_the_apis_calls_and_the_cli_its_embedding_flag(tiny_export, model, tmp_path,
                                                                                     capsys) -> None:
    from zoodip.embeddings import load_embeddings
    from zoodip.generate import generate

    path = _embedding(tmp_path / "zq.safetensors", "<zq>", model.hidden_size)
    added, groups = load_embeddings([path], model.tokenizer)
    advice = {"'<my-dog>' in a prompt looks like a learned token": (
                  "load its file with load_textual_inversion(PATH), or load_embeddings([PATH]) into added_embeddings",
                  "pass its file with --embedding PATH"),
              "the embedding token '<zq>' does not appear in the prompt": (
                  "(or rename it with load_textual_inversion(PATH, token=TOKEN))",
                  "(or rename it with --embedding PATH:TOKEN)")}
    with pytest.warns(UserWarning) as caught:
        generate(model, "a photo of <my-dog>", steps=1, added_embeddings=added, token_groups=groups)
    said = {str(w.message) for w in caught}
    for opening, (api, cli) in advice.items():
        assert any(s.startswith(opening) and s.endswith(api) and "--" not in s for s in said), said
    code, _, err = run_cli(["generate", "--model", tiny_export, "--prompt", "a photo of <my-dog>", "--steps", "1",
                            "--embedding", path, "--out", tmp_path / "a.png"], capsys)
    assert code == 0, err
    for opening, (api, cli) in advice.items():
        assert any(opening in line and line.endswith(cli) for line in err.splitlines()), err


def test_an_unreadable_token_names_the_apis_ways_to_rename_it() -> None:
    from zoodip.prompt_checks import unreadable_token_problems

    said = unreadable_token_problems(["<a(b)>"])[0]
    assert said.endswith("rename it (load_textual_inversion(PATH, token=TOKEN), added_embeddings' key, "
                         "placeholder_token)") and "--" not in said, said
    # (said by generate(), and by a Personalizer whose placeholder_token holds it: setting_warnings)
    assert in_flag_words(said).endswith("rename it (--embedding PATH:TOKEN, added_embeddings' key, --placeholder_token)")


def test_a_path_named_like_a_setting_is_said_as_the_path_not_as_that_flag(tiny_export, tmp_path, monkeypatch, capsys):
    """A message opening with a path the user gave whose name is a setting's word ('steps', 'seed', 'images') said
    that setting's flag instead: 'zoodip info seed' said '--seed is a folder', '--image steps' '--steps is a folder,
    not an image', 'zoodip info images' (a file) '--train_data_dir is not a valid safetensors file'."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "seed").mkdir()
    (tmp_path / "steps").mkdir()
    (tmp_path / "images").write_bytes(b"x")
    code, _, err = run_cli(["info", "seed"], capsys)
    assert_one_line_error(code, err, "error: seed is a folder")
    code, _, err = run_cli(["info", "images"], capsys)
    assert_one_line_error(code, err, "error: images is JSON or text, not a safetensors file")
    code, _, err = run_cli(["generate", "--model", tiny_export, "--prompt", "a star", "--image", "steps", "--out",
                            "o.png"], capsys)
    assert_one_line_error(code, err, "error: steps is a folder, not an image")
    code, _, err = run_cli(["generate", "--model", tiny_export, "--prompt", "a star", "--steps", "0", "--out", "o.png"],
                           capsys)  # (a setting's own refusal still says its flag)
    assert_one_line_error(code, err, "error: --steps must be an integer")


def test_a_path_with_a_setting_name_or_a_dot_slash_is_said_as_the_path(tmp_path, monkeypatch, capsys):
    """The opening path was kept as typed only for a one-word setting name given bare: 'zoodip info max_train_steps'
    (a folder) still said '--max_train_steps is a folder', and 'zoodip info ./seed' (said 'seed is a folder')
    '--seed is a folder'."""
    monkeypatch.chdir(tmp_path)
    for name in ("seed", "max_train_steps", "learning_rate"):
        (tmp_path / name).mkdir()
    for given, said in (("max_train_steps", "max_train_steps"), ("./seed", "seed"), ("learning_rate/", "learning_rate")):
        code, _, err = run_cli(["info", given], capsys)
        assert_one_line_error(code, err, f"error: {said} is a folder")
    # (the rest of the message is still said in flag words)
    assert in_flag_words("seed is max_train_steps", ["seed"]) == "seed is --max_train_steps"
    # A setting given on the command line whose refusal opens with its name is still said as its flag, even where a
    # path given has that name.
    code, _, err = run_cli(["personalize", "--pretrained_model_name_or_path", str(tmp_path / "none"),
                            "--train_data_dir", str(tmp_path), "--output_dir", "max_train_steps",
                            "--max_train_steps", "0"], capsys)
    assert_one_line_error(code, err, "error: --max_train_steps must be an integer >= 1")


def test_a_path_named_like_a_setting_is_said_as_given_after_its_flag_or_inside_the_message(tiny_export, photos,
                                                                                             tmp_path, monkeypatch,
                                                                                             capsys):
    """--output_dir output_dir (a file) said '--output_dir --output_dir is an existing file', --template_file
    learning_rate '--template_file --learning_rate holds no template', --out learning_rate '--out --learning_rate must
    end in ...', --image learning_rate (no image) 'cannot read image --learning_rate'."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "output_dir").write_text("")
    (tmp_path / "learning_rate").write_text("\n")
    code, _, err = run_cli(personalize_args(tiny_export, photos, "output_dir"), capsys)
    assert_one_line_error(code, err, "error: --output_dir output_dir is an existing file")
    code, _, err = run_cli(personalize_args(tiny_export, photos, "o", "--template_file", "learning_rate"), capsys)
    assert_one_line_error(code, err, "error: --template_file learning_rate holds no template")
    for flags, said in ((["--out", "learning_rate"], "error: --out learning_rate must end in"),
                        (["--image", "learning_rate", "--out", "a.png"], "error: cannot read image learning_rate (")):
        code, _, err = run_cli(["generate", "--model", tiny_export, "--prompt", "a star", *flags], capsys)
        assert_one_line_error(code, err, said)


def test_a_file_named_like_a_setting_that_is_also_given_is_said_as_the_file(tiny_export, tmp_path, monkeypatch,
                                                                           capsys) -> None:
    """--image guidance_scale --guidance-scale 7 (no such file) said '--guidance-scale does not exist': the path was
    read as the setting's name because the setting was given too. The SDK now gives the path as a part of its own
    (errors.Given), which the command line says as written; the other parts are still said as flags."""
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(["generate", "--model", tiny_export, "--prompt", "a star", "--image", "guidance_scale",
                            "--guidance-scale", "7", "--out", "a.png"], capsys)
    assert_one_line_error(code, err, "error: guidance_scale does not exist: pass a JPEG or PNG file")
    for flags, said in ((["--model", "guidance_scale", "--prompt", "x"], "export folder guidance_scale does not exist"),
                        (["--model", tiny_export, "--parameters-from", "steps"], "steps does not exist: pass an image"),
                        (["--model", tiny_export, "--prompt", "x", "--embedding", "steps"], "steps does not exist")):
        code, _, err = run_cli(["generate", *flags, "--guidance-scale", "7", "--steps", "3"], capsys)
        assert_one_line_error(code, err, f"error: {said}")
    from zoodip.errors import Given

    error = ZoodipError("guidance_scale ", Given("guidance_scale"), " is\n  not a mu")
    assert str(error) == "guidance_scale guidance_scale is not a mu"
    assert in_flag_words(error.parts) == "--guidance-scale guidance_scale is not a --mu"


def test_a_path_typed_absolute_is_said_absolute_whatever_the_prompt_says(tmp_path, monkeypatch, capsys) -> None:
    """--model $PWD/nothere --prompt nothere said 'export folder nothere does not exist': said_as_given read every
    word of the command line as a path typed relative, the prompt's too. It now reads the path flags' values only."""
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(["generate", "--model", tmp_path / "nothere", "--prompt", "nothere"], capsys)
    assert_one_line_error(code, err, f"error: export folder {tmp_path / 'nothere'} does not exist")
    code, _, err = run_cli(["generate", "--model", "nothere", "--prompt", "a star"], capsys)
    assert_one_line_error(code, err, "error: export folder nothere does not exist")


def test_an_errors_parts_are_said_as_its_one_line() -> None:
    """A ZoodipError's parts said in flag words kept the edges str(error) strips ('error: --seed is bad ')."""
    error = ZoodipError("  seed  is\nbad ")
    assert in_flag_words(error.parts) == "--seed is bad" == in_flag_words(str(error))

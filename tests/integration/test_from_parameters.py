"""generate --parameters-from IMAGE: an image made again from the generation parameters it holds (A1111's "PNG Info ->
Send to txt2img"), each flag given taking the place of the image's value."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from cli_helpers import assert_one_line_error, run_cli
from zoodip.image_parameters import read_parameters
from zoodip.infotext import read_infotext, settings_from_fields


def _generate(export, out, *flags):
    return ["generate", "--model", export, "--out", out, "--threads", "1", *flags]


def _pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_an_image_is_made_again_from_its_parameters_and_a_flag_given_takes_their_place(tiny_export, tmp_path, capsys):
    first = tmp_path / "first.png"
    assert run_cli(_generate(tiny_export, first, "--prompt", "a red star, (shiny:1.2)", "--negative-prompt", "blurry",
                             "--steps", "3", "--seed", "5", "--sampler", "euler_a", "--guidance-scale", "6",
                             "--num-images", "2", "--variation-seed", "9", "--variation-strength", "0.2",
                             "--prompt-weighting", "a1111"), capsys)[0] == 0
    again = tmp_path / "again.png"
    code, _, err = run_cli(_generate(tiny_export, again, "--parameters-from", tmp_path / "first-2.png"), capsys)
    assert code == 0, err
    assert "image 1 (from 0) of a batch of 2" in err  # which of the batch's files it is
    assert np.array_equal(_pixels(tmp_path / "again-2.png"), _pixels(tmp_path / "first-2.png"))
    assert read_parameters(tmp_path / "again-2.png") == read_parameters(tmp_path / "first-2.png")
    changed = tmp_path / "changed.png"
    assert run_cli(_generate(tiny_export, changed, "--parameters-from", first, "--steps", "2", "--num-images", "1",
                             "--prompt", "a blue star", "--guidance-scale", "7.5"), capsys)[0] == 0
    prompt, negative, fields = read_infotext(read_parameters(changed))
    assert (prompt, negative, fields["Steps"], fields["Seed"], fields["Sampler"]) == ("a blue star", "blurry", "2",
                                                                                     "5", "Euler a")
    assert fields["CFG scale"] == "7.5"  # given, though it is the flag's default: the image's 6 does not replace it


A1111_TEXT = ("a photo of <cat-toy>, (masterpiece:1.2)\nNegative prompt: lowres\nSteps: 4, Sampler: DPM++ 2M, "
              "Schedule type: Karras, CFG scale: 7, Seed: 1234, Size: 128x128, Model hash: 6ce0161689, "
              "Model: v1-5-pruned-emaonly, Clip skip: 2, ENSD: 31337, TI hashes: \"cat-toy: 0123456789ab\", "
              "Version: v1.10.1")


def test_a1111s_text_reads_in_a1111s_words_and_what_it_cannot_carry_is_said(tiny_export, tmp_path, capsys):
    prompt, negative, fields = read_infotext(A1111_TEXT)
    settings, problems, unused = settings_from_fields(fields)
    assert (prompt, negative, problems, unused) == ("a photo of <cat-toy>, (masterpiece:1.2)", "lowres", {}, ["ENSD"])
    assert settings == {"steps": 4, "sampler": "dpmpp_2m_karras", "guidance_scale": 7.0, "seed": 1234, "width": 128,
                        "height": 128, "clip_skip": 1, "prompt_weighting": "a1111"}  # A1111 reads emphasis
    info = PngInfo()
    info.add_text("parameters", A1111_TEXT.replace("<cat-toy>", "a toy"))
    Image.new("RGB", (8, 8)).save(tmp_path / "a1111.png", pnginfo=info)
    code, _, err = run_cli(_generate(tiny_export, tmp_path / "o.png", "--parameters-from", tmp_path / "a1111.png"),
                           capsys)
    assert code == 0, err
    for words in ("made with another model (Model hash 6ce0161689", "the embedding cat-toy (file hash 0123456789ab)",
                  "no setting here, left out: ENSD"):
        assert words in err
    assert "Clip skip: 2" in read_parameters(tmp_path / "o.png")


def test_what_cannot_be_made_again_is_one_line_unless_a_flag_gives_it(tiny_export, tmp_path, capsys):
    info = PngInfo()
    info.add_text("parameters", A1111_TEXT.replace("DPM++ 2M", "DPM++ SDE").replace("<cat-toy>", "a toy"))
    Image.new("RGB", (8, 8)).save(tmp_path / "sde.png", pnginfo=info)
    out = tmp_path / "o.png"
    assert_one_line_error(*run_cli(_generate(tiny_export, out, "--parameters-from", tmp_path / "sde.png"),
                                   capsys)[::2], "its sampler 'DPM++ SDE' with the schedule type 'Karras' is not one zoodip has")
    assert not out.exists()
    assert run_cli(_generate(tiny_export, out, "--parameters-from", tmp_path / "sde.png", "--sampler", "euler"),
                   capsys)[0] == 0
    Image.new("RGB", (8, 8)).save(tmp_path / "plain.png")
    assert_one_line_error(*run_cli(_generate(tiny_export, out, "--parameters-from", tmp_path / "plain.png"),
                                   capsys)[::2], "holds no generation parameters to make it again from")


def test_an_image_to_image_result_needs_its_source_image(tiny_export, tmp_path, capsys):
    photo = tmp_path / "photo.png"
    Image.new("RGB", (128, 128), (200, 40, 40)).save(photo)
    made = tmp_path / "made.png"
    assert run_cli(_generate(tiny_export, made, "--prompt", "a star", "--steps", "4", "--image", photo,
                             "--strength", "0.5"), capsys)[0] == 0
    code, _, err = run_cli(_generate(tiny_export, tmp_path / "no-image.png", "--parameters-from", made), capsys)
    assert code == 0 and "made from another image (Denoising strength 0.5): pass it with --image" in err
    code, _, err = run_cli(_generate(tiny_export, tmp_path / "again.png", "--parameters-from", made, "--image", photo),
                           capsys)
    assert code == 0, err
    assert np.array_equal(_pixels(tmp_path / "again.png"), _pixels(made))


def _a1111_image(path, text: str):
    info = PngInfo()
    info.add_text("parameters", text)
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    return path


@pytest.mark.parametrize("fields, expected", [
    ("Steps:2, Sampler:Euler a, CFG scale:5, Seed:3", {"steps": 2, "sampler": "euler_a", "seed": 3}),  # no spaces
    ("Steps: 2, Seed: 3, Clip skip: 0", {"clip_skip": 0}),  # A1111 reads 0 as 1, its last layer
    # A1111's hires fix: on only with a denoising strength; its "Hires steps" are the steps its second pass runs.
    ("Steps: 20, Seed: 1, Size: 64x64, Hires upscale: 2", {"hires_scale": None}),
    ("Steps: 20, Seed: 1, Size: 64x64, Denoising strength: 0.7, Hires upscale: 2, Hires steps: 20",
     {"hires_scale": 2.0, "hires_strength": 0.7, "hires_steps": 29}),
    ("Steps: 10, Seed: 1, Size: 64x64, Denoising strength: 0.5, Hires upscale: 2", {"hires_steps": 20}),
    # A1111's batch image carries its own seed: made alone; its inpainting always pastes the original back.
    ("Steps: 2, Seed: 1001, Size: 64x64, Batch size: 4, Batch pos: 1", {"num_images": None, "seed": 1001}),
    ("Steps: 2, Seed: 1, Size: 64x64, Denoising strength: 0.75, Mask blur: 4", {"paste_back": True, "mask_blur": 4.0}),
])
def test_a1111s_fields_in_a1111s_meaning(fields, expected):
    settings, problems, _ = settings_from_fields(read_infotext("a cat\n" + fields)[2])
    assert not problems and {key: settings.get(key) for key in expected} == expected
    hires_steps = settings.get("hires_steps")
    if hires_steps:  # the second pass runs the steps A1111's text says
        assert int(hires_steps * settings["hires_strength"]) == int(fields.split("Hires steps: ")[-1].split(",")[0]
                                                                    if "Hires steps" in fields else 10)


def test_the_image_is_never_overwritten_and_its_settings_can_be_turned_off(tiny_export, tmp_path, capsys):
    made = tmp_path / "made.png"
    assert run_cli(_generate(tiny_export, made, "--prompt", "a star", "--steps", "2", "--variation-seed", "4",
                             "--variation-strength", "0.3"), capsys)[0] == 0
    assert_one_line_error(*run_cli(_generate(tiny_export, made, "--parameters-from", made), capsys)[::2],
                          "--out would write over --parameters-from")
    plain = tmp_path / "plain.png"
    assert run_cli(_generate(tiny_export, plain, "--parameters-from", made, "--variation-strength", "0"), capsys)[0] == 0
    assert "Variation" not in read_parameters(plain)
    bad = _a1111_image(tmp_path / "bad.png", "a cat\nSteps: 2, Seed: 1, Size: 512x")
    assert_one_line_error(*run_cli(_generate(tiny_export, tmp_path / "o.png", "--parameters-from", bad), capsys)[::2],
                          "give it yourself (--width VALUE)")
    assert run_cli(_generate(tiny_export, tmp_path / "o.png", "--parameters-from", bad, "--width", "64", "--height",
                             "64"), capsys)[0] == 0
    bare = _a1111_image(tmp_path / "bare.png", "just a prompt")
    code, _, err = run_cli(_generate(tiny_export, tmp_path / "b.png", "--parameters-from", bare, "--steps", "1"), capsys)
    assert code == 0 and "holds no settings line" in err


def test_a_zoodip_hires_image_is_made_again_and_an_embedding_under_another_name_is_said(tiny_export, tmp_path, capsys):
    from zoodip.embeddings import save_learned_embeds
    from zoodip.model import ExportedModel

    embedding = save_learned_embeds(tmp_path / "tok.safetensors", "<tok>",
                                    np.random.default_rng(0).normal(size=(1, ExportedModel.load(tiny_export).hidden_size)))
    made = tmp_path / "hires.png"
    assert run_cli(_generate(tiny_export, made, "--prompt", "a <tok>", "--steps", "2", "--hires-scale", "1.5",
                             "--hires-strength", "0.5", "--embedding", embedding), capsys)[0] == 0
    assert "Hires steps: 1, Hires schedule: 2" in read_parameters(made)
    again = tmp_path / "again.png"
    assert run_cli(_generate(tiny_export, again, "--parameters-from", made, "--embedding", embedding), capsys)[0] == 0
    assert np.array_equal(_pixels(again), _pixels(made))
    code, _, err = run_cli(_generate(tiny_export, tmp_path / "x.png", "--parameters-from", made, "--embedding",
                                     f"{embedding}:<other>"), capsys)
    assert "is loaded as <other>: pass it as --embedding FILE:<tok>" in err


def test_a_value_of_the_image_that_is_refused_says_it_came_from_the_image(tiny_export, tmp_path, capsys):
    image = _a1111_image(tmp_path / "big.png", "a cat\nSteps: 2, Seed: 1, Size: 64x64, CFG scale: 500")
    assert_one_line_error(*run_cli(_generate(tiny_export, tmp_path / "o.png", "--parameters-from", image), capsys)[::2],
                          "(the value of the image's parameters: give --guidance-scale to replace it)")
    spaced = read_infotext("  a cat  \nNegative prompt:  blurry \nNegative prompt: dark\nSteps: 2, Seed: 1, Size: 8x8")
    assert spaced[:2] == ("a cat", "blurry\ndark")  # as A1111 reads its own text: lines stripped, every label off


@pytest.mark.parametrize("fields, problem_of, words", [
    ("Denoising strength: 0.5, Hires upscale: abc", "hires_scale", "give hires_scale"),
    ("Denoising strength: nan, Hires upscale: 2", "hires_strength", "is not in (0, 1]: give hires_strength"),
    ("Denoising strength: 0.02, Hires upscale: 1.5, Hires steps: 30", "hires_steps", "needs a schedule of 1500 steps"),
    ("Paste back: maybe", "paste_back", "give it yourself (paste_back)"),
])
def test_hires_and_paste_back_values_that_do_not_read_are_filed_under_their_own_setting(fields, problem_of, words):
    _, problems, _ = settings_from_fields(read_infotext(f"a cat\nSteps: 20, Seed: 1, Size: 64x64, {fields}")[2])
    assert list(problems) == [problem_of] and words in problems[problem_of]


def test_zoodips_schedule_field_alone_is_no_hires_fix_and_paste_back_reads_either_case():
    settings, problems, _ = settings_from_fields(read_infotext("a cat\nSteps: 2, Seed: 1, Hires schedule: 3, "
                                                               "Paste back: true, Version: zoodip 0.1.0")[2])
    assert not problems and "hires_steps" not in settings and settings["paste_back"] is True


A1111_HIRES = ("a cat\nSteps: 3, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 64x64, Denoising strength: 0.7, "
               "Hires resize: 128x0, Hires steps: 2, Hires upscaler: Latent, Version: v1.10.1")


def test_a1111s_resize_to_hires_fix_is_a_hires_fix_and_its_upscaler_is_said(tiny_export):
    """Found by a sweep: "Hires resize" (A1111's Resize-to mode) was read as image-to-image, with advice to pass an
    image; A1111's Latent or ESRGAN upscalers were swapped for Lanczos without a word."""
    from zoodip.from_parameters import ImageParameters, parameter_notes
    from zoodip.model import ExportedModel

    prompt, negative, fields = read_infotext(A1111_HIRES)
    settings, problems, unused = settings_from_fields(fields)
    assert (settings["hires_scale"], settings["hires_strength"], "strength" in settings, problems, unused) == (
        2.0, 0.7, False, {}, [])
    notes = parameter_notes(ImageParameters(prompt, negative, settings, problems, unused, fields),
                            ExportedModel.load(tiny_export), {}, image_given=False, mask_given=False, latents_given=False)
    assert [note for note in notes if "hires" in note] == [
        "the image's hires fix upscaled with 'Latent', zoodip's with Lanczos (an image resampler): its second pass "
        "starts from another picture, and the image will differ"]
    old = settings_from_fields(read_infotext(A1111_HIRES.replace("Hires resize: 128x0", "First pass size: 0x0"))[2])
    assert "hires_strength" in old[0] and "A1111's first one (First pass size '0x0'" in old[1]["hires_scale"]


@pytest.mark.parametrize("resize, scale, problem", [("128x128", 2.0, None), ("0x96", 1.5, None),
                                                    ("128x96", None, "changes the shape of its Size '64x64'"),
                                                    ("axb", None, "does not read as a size")])
def test_a_hires_resize_is_a_scale_of_the_first_pass_where_it_keeps_its_shape(resize, scale, problem):
    settings, problems, _ = settings_from_fields(read_infotext(A1111_HIRES.replace("128x0", resize))[2])
    assert settings.get("hires_scale") == scale and (problem in problems["hires_scale"] if problem else not problems)


def test_an_image_inpainted_outside_its_mask_says_to_invert_it(tiny_export):
    from zoodip.from_parameters import ImageParameters, parameter_notes
    from zoodip.model import ExportedModel

    text = A1111_HIRES.split("\n")[0] + "\nSteps: 3, Seed: 1, Size: 64x64, Denoising strength: 0.7, Mask blur: 4, " \
                                        "Mask mode: Inpaint not masked"
    prompt, negative, fields = read_infotext(text)
    settings, problems, unused = settings_from_fields(fields)
    notes = parameter_notes(ImageParameters(prompt, negative, settings, problems, unused, fields),
                            ExportedModel.load(tiny_export), {}, image_given=True, mask_given=True, latents_given=False)
    assert unused == [] and notes == ["the image was inpainted outside its mask (A1111's Mask mode: Inpaint not "
                                      "masked): pass the inverted mask with --mask, or the other part is redrawn"]


def test_a_text_file_of_parameters_makes_the_image_again(tiny_export, tmp_path, capsys):
    """A1111 users keep (and paste) the PNG Info text itself: a .txt file of it is read as the image's would be."""
    first = tmp_path / "first.png"
    assert run_cli(_generate(tiny_export, first, "--prompt", "a red star", "--steps", "2", "--seed", "3"), capsys)[0] == 0
    pasted = tmp_path / "pasted parameters.txt"
    pasted.write_bytes(b"\xef\xbb\xbf" + read_parameters(first).encode() + b"\r\n")  # a Windows editor's BOM and line end
    again = tmp_path / "again.png"
    code, _, err = run_cli(_generate(tiny_export, again, "--parameters-from", pasted), capsys)
    assert code == 0, err
    assert np.array_equal(_pixels(again), _pixels(first))
    for content, problem in ((b"", "holds no generation parameters"), (b"\xff\xfe\x00bad", "as generation parameters")):
        pasted.write_bytes(content)
        code, _, err = run_cli(_generate(tiny_export, again, "--parameters-from", pasted), capsys)
        assert_one_line_error(code, err, problem)


def test_a_text_of_parameters_without_the_txt_suffix_is_told_to_be_one(tmp_path):
    """A pasted parameters text saved as 'params' was refused with 'cannot identify image file <_io.BufferedReader
    name=...>': pass an image', which neither told it to name the file .txt nor was meant for a user."""
    from zoodip.errors import ZoodipError
    from zoodip.from_parameters import image_parameters

    saved = tmp_path / "params"
    saved.write_text("a red star\nSteps: 2, Seed: 3")
    with pytest.raises(ZoodipError) as caught:
        image_parameters(saved)
    message = str(caught.value)
    assert "BufferedReader" not in message and ".txt file" in message and "\n" not in message


def test_an_image_saved_with_a_txt_suffix_is_read_as_the_image(tmp_path):
    """A PNG named .txt was refused ("cannot read x.txt as generation parameters ('utf-8' codec can't decode byte
    0x89 ...)"), though the file holds the parameters: a .txt that is no UTF-8 text but an image is read as one."""
    from zoodip.from_parameters import image_parameters

    info = PngInfo()
    info.add_text("parameters", "a red star\nSteps: 2, Sampler: Euler a, CFG scale: 7, Seed: 3, Size: 64x64")
    saved = tmp_path / "saved.txt"
    Image.new("RGB", (8, 8)).save(saved, format="PNG", pnginfo=info)
    parameters = image_parameters(saved)
    assert parameters.prompt == "a red star" and parameters.settings["seed"] == 3


def test_an_images_embeddings_are_noted_once_for_all_and_another_version_is_said_so():
    """An image listing 2000 embeddings gave 2000 warnings; and one whose <tok> was loaded from another file (another
    version of it) was said to be given by 'no --embedding', though one gives that name."""
    from types import SimpleNamespace

    from zoodip.from_parameters import ImageParameters, parameter_notes

    listed = ", ".join(f"e{i}: {i:012x}" for i in range(2000)) + ", tok: 0000000000ff"
    parameters = ImageParameters("a <tok>", "", {}, {}, [], {"Steps": "2", "TI hashes": listed})
    notes = parameter_notes(parameters, SimpleNamespace(manifest={}, identity="0" * 64), {"<tok>": "123456789abc"},
                            image_given=False, mask_given=False, latents_given=False)
    assert notes == ["the image used the embeddings e0 (file hash 000000000000), e1 (file hash 000000000001), e2 (file "
                     "hash 000000000002), e3 (file hash 000000000003) and 1996 more, which no --embedding gives: pass "
                     "their files, or the image will lack them",
                     "the image used another file of the embedding tok (file hash 0000000000ff, the loaded one's "
                     "123456789abc) than the --embedding of that name: pass the file it used, or the image will differ"]

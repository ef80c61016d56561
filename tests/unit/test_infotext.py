"""A1111's infotext (zoodip.infotext): the settings an image was generated with, in A1111's words and format."""
import re

import pytest

from zoodip.infotext import A1111_AUTOMATIC_SCHEDULES, A1111_SAMPLER_NAMES, infotext, settings_from_fields
from zoodip.sampling import SAMPLERS


class _Model:
    identity = "0123456789abcdef"
    folder = "/models/sd15, int8"  # a comma: the value is quoted
    sample_size, vae_scale_factor = 64, 8


def parse(text: str) -> tuple[str, str, dict[str, str]]:
    """The format's rule, read back: the prompt, 'Negative prompt: ...', and a last line of 'Key: value' pairs whose
    values are JSON-quoted where they hold a comma, colon or quote."""
    *head, last = text.split("\n")
    negative = ""
    if head and head[-1].startswith("Negative prompt: "):
        negative = head.pop()[len("Negative prompt: "):]
    pairs = re.findall(r'\s*([\w][\w \-/]*): ("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)', last)
    fields = {key: value[1:-1].replace('\\"', '"') if value.startswith('"') else value for key, value in pairs}
    assert ", ".join(f"{k}: {v}" for k, v in pairs) == last  # nothing on the line the rule does not read
    return "\n".join(head), negative, fields


def test_text_to_image_is_said_in_a1111s_words():
    text = infotext("a photo of <my-dog>, on a beach", {"negative_prompt": "blurry", "steps": 20, "seed": 7,
                                                        "sampler": "dpmpp_2m_karras", "guidance_scale": 6.0},
                    (512, 336), _Model())
    prompt, negative, fields = parse(text)
    assert (prompt, negative) == ("a photo of <my-dog>, on a beach", "blurry")
    assert fields == {"Steps": "20", "Sampler": "DPM++ 2M Karras", "CFG scale": "6.0", "Seed": "7",
                      "Size": "512x336", "Model hash": "0123456789", "Model": "sd15, int8",
                      "Prompt weighting": "none", "Version": fields["Version"]}
    assert fields["Version"].startswith("zoodip ")


def test_settings_not_given_are_generates_defaults():
    _, negative, fields = parse(infotext("x", {}, (512, 512), _Model()))
    assert negative == "" and (fields["Steps"], fields["Sampler"], fields["CFG scale"], fields["Seed"]) == (
        "25", "DPM++ 2M", "7.5", "0")
    assert "Batch size" not in fields and "Clip skip" not in fields and "Denoising strength" not in fields


@pytest.mark.parametrize("settings, expected", [
    ({"clip_skip": 1}, {"Clip skip": "2"}),  # A1111 counts the last layer as 1
    ({"image": "a.png"}, {"Denoising strength": "0.8"}),  # img2img's default
    ({"image": "a.png", "strength": 0.4}, {"Denoising strength": "0.4"}),
    ({"image": "a.png", "mask_image": "m.png", "mask_blur": 4, "padding_mask_crop": 32},
     {"Denoising strength": "1.0", "Mask blur": "4", "Inpaint area": "Only masked", "Masked area padding": "32"}),
    ({"hires_scale": 2, "width": 256}, {"Size": "256x512", "Hires upscale": "2", "Hires steps": "17",
                                        "Hires schedule": "25",
                                        "Denoising strength": "0.7", "Hires upscaler": "Lanczos"}),
    ({"num_images": 3}, {"Batch size": "3", "Batch pos": "2"}),
    ({"guidance_rescale": 0.7, "prompt_weighting": "a1111"}, {"Guidance rescale": "0.7", "Prompt weighting": "a1111"}),
    ({"latents": "noise.npy"}, {"Initial latents": "given (not the seed's)"}),
    ({"variation_seed": 9, "variation_strength": 0.3}, {"Variation seed": "9", "Variation seed strength": "0.3"}),
    ({"variation_seed": 9, "variation_strength": 0.0}, {"Variation seed": None}),
])
def test_each_setting_in_its_field(settings, expected):
    _, _, fields = parse(infotext("x", settings, (512, 512), _Model(), batch_pos=2))
    assert {key: fields.get(key) for key in expected} == expected


def test_every_sampler_has_an_a1111_name_of_its_own_that_reads_back_as_it():
    from zoodip.sampling import sampler_named

    names = [A1111_SAMPLER_NAMES[sampler] for sampler in SAMPLERS]
    assert all(names) and len(set(names)) == len(names)
    assert [sampler_named(name) for name in names] == list(SAMPLERS)


def test_the_api_refusing_a1111s_sampler_name_says_its_name_here():
    from zoodip.errors import ZoodipError
    from zoodip.sampling import check_sampler

    for a1111, ours in (("Euler a", "euler_a"), ("DPM++ 2M SDE Karras", "dpmpp_2m_sde_karras"), ("EULER", "euler")):
        with pytest.raises(ZoodipError, match=f"unknown sampler '{re.escape(a1111)}': use one of .*\\('{ours}' is its name here\\)$"):
            check_sampler(a1111)
    with pytest.raises(ZoodipError, match="use one of [a-z_0-9, ]+$"):
        check_sampler("heun")


def test_a_sampler_field_reads_as_the_flag_reads_it():
    for written in ("Euler a", "euler a", "DPM++ 2M Karras", "ddim"):
        settings, problems, _ = settings_from_fields({"Sampler": written})
        assert settings["sampler"] in SAMPLERS and not problems, written
    for name in ("DPM++ 2M", "dpm++ 2m", "DPM++ 2m SDE", "dpm++ 2m sde"):  # its Automatic schedule in any case too
        expected = "dpmpp_2m" if "sde" not in name.lower() else None
        settings, problems, _ = settings_from_fields({"Sampler": name, "Schedule type": "Automatic"})
        if expected:
            assert settings["sampler"] == "dpmpp_2m_karras" and not problems, name
        else:  # A1111's Exponential, which zoodip lacks: said as for A1111's own spelling
            assert "sampler" not in settings and "Exponential" in problems["sampler"], name


def test_ddims_eta_is_left_out_where_the_call_runs_another_sampler():
    from zoodip.from_parameters import ignored_settings

    flags = dict(image_given=False, mask_given=True, latents_given=False)
    assert "eta" in ignored_settings(**flags, sampler="euler_a") and "eta" not in ignored_settings(**flags, sampler="ddim")


def test_a_prompt_with_quotes_and_colons_stays_the_first_line():
    prompt = 'a "quoted" (word:1.3), [a:b:0.5]'
    text = infotext(prompt, {"negative_prompt": "x: y"}, (8, 8), _Model())
    assert parse(text)[:2] == (prompt, "x: y")


def test_the_embeddings_used_are_a1111s_ti_hashes_their_names_kept_from_splitting_the_list():
    _, _, fields = parse(infotext("x", {}, (8, 8), _Model(),
                                  embedding_hashes={"<a:b,c>": "0123456789ab", "d": "ba9876543210"}))
    assert fields["TI hashes"] == "<abc>: 0123456789ab, d: ba9876543210"
    assert "TI hashes" not in parse(infotext("x", {}, (8, 8), _Model(), embedding_hashes={}))[2]


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_a_sampler_whose_a1111_automatic_schedule_differs_is_written_with_uniform_and_reads_back(sampler):
    _, _, fields = parse(infotext("x", {"sampler": sampler}, (8, 8), _Model()))
    plain_elsewhere = A1111_SAMPLER_NAMES[sampler] in A1111_AUTOMATIC_SCHEDULES  # A1111 1.9 would pick Karras etc.
    assert fields.get("Schedule type") == ("Uniform" if plain_elsewhere else None)
    assert settings_from_fields(fields)[0]["sampler"] == sampler


@pytest.mark.parametrize("sampler, schedule, expected", [
    ("DPM++ 2M", None, "dpmpp_2m"),  # A1111 writes the schedule it resolved: none written is Uniform (or before 1.9)
    ("DPM++ 2M", "Uniform", "dpmpp_2m"),
    ("DPM++ 2M", "Automatic", "dpmpp_2m_karras"),  # what A1111 1.9 on runs for it
    ("DPM++ 2M", "Karras", "dpmpp_2m_karras"),
    ("DPM++ 2M Karras", "Uniform", "dpmpp_2m_karras"),  # A1111 takes the name's suffix over the field
    ("Euler a", "Automatic", "euler_a"),
    ("Euler a", "Uniform", "euler_a"),
    ("DPM++ 2M SDE", "Karras", "dpmpp_2m_sde_karras"),
    ("DPM++ 2M Karras", "Exponential", "dpmpp_2m_karras"),  # found by a sweep: refused
    ("DPM++ 2M", "karras", "dpmpp_2m_karras"),  # A1111's scheduler names as well as its labels
    ("Euler a", "uniform", "euler_a"),
    ("DPM++ 2M Uniform", None, "dpmpp_2m"),  # any schedule at the name's end, as A1111 reads it
    ("DPM++ 2M", "KARRAS", "dpmpp_2m_karras"),  # a type A1111 does not know is its Automatic
])
def test_a1111s_schedule_type_reads_as_a1111_runs_it(sampler, schedule, expected):
    fields = {"Sampler": sampler, **({"Schedule type": schedule} if schedule else {})}
    settings, problems, _ = settings_from_fields(fields)
    assert (settings.get("sampler"), problems) == (expected, {})


def test_a1111s_automatic_schedule_that_zoodip_lacks_is_said_as_what_a1111_runs():
    _, problems, _ = settings_from_fields({"Sampler": "DPM++ 2M SDE", "Schedule type": "Automatic"})
    assert problems["sampler"].startswith("its sampler 'DPM++ 2M SDE' with the schedule type 'Automatic' (A1111's "
                                          "Exponential for it) is not one zoodip has")
    _, problems, _ = settings_from_fields({"Sampler": "Euler", "Schedule type": "SGM Uniform"})
    assert "it has Euler on the model's own timesteps only" in problems["sampler"]


def test_a_long_settings_line_without_a_colon_is_read_in_linear_time():
    """Found by a sweep: A1111's pattern read such a line again from every word to its end (120 KB: 74 s, 4 MB: about
    a day). A bound well above the linear time, far below the quadratic one (about 15 minutes for this line)."""
    import time

    from zoodip.infotext import read_infotext

    start = time.perf_counter()
    prompt, _, fields = read_infotext("a cat\n" + "a " * 200_000)
    assert time.perf_counter() - start < 10 and fields == {} and prompt.startswith("a cat\na a")
    assert read_infotext("x\nSteps: 4, " + "Lora hashes: \"" + "n: 0123456789ab, " * 50 + "\", Seed: 3")[2]["Seed"] == "3"
    start = time.perf_counter()  # a run of spaces (or U+3000) was the same: every start in it read to its end
    assert read_infotext("a cat\n" + " " * 200_000 + "x")[2] == {} and time.perf_counter() - start < 10
    # a name past 80 characters is no field, not its tail: A1111 reads "Comment...Seed" as one unknown name
    for long_name in ("Comment" + "." * 80 + "Seed", "Comment " + "x" * 100 + " Seed"):
        assert read_infotext(f"x\n{long_name}: 99, Steps: 3, Size: 8x8, CFG scale: 7")[2] == {
            "Steps": "3", "Size": "8x8", "CFG scale": "7"}


@pytest.mark.parametrize("fields, padding, unused", [
    ({"Inpaint area": "Only masked", "Masked area padding": "8"}, 8, []),
    ({"Inpaint area": "Only masked"}, 32, []),  # A1111 reads its default where the text gives none
    ({"Inpaint area": "Whole picture", "Masked area padding": "32"}, None, []),  # found by a sweep: was cropped
    ({"Masked area padding": "8"}, None, ["Masked area padding"]),  # no area: not A1111's, said as left out
])
def test_the_masked_area_padding_crops_only_with_a1111s_only_masked(fields, padding, unused):
    settings, problems, left_out = settings_from_fields({"Mask blur": "4", **fields})
    assert (settings.get("padding_mask_crop"), problems, left_out) == (padding, {}, unused)
    assert settings["paste_back"] is True  # A1111's inpainting puts the original back either way


def test_an_inpaint_area_or_padding_that_does_not_read_names_its_flag():
    for fields, words in (({"Inpaint area": "Only masked", "Masked area padding": "x"}, "its Masked area padding 'x'"),
                          ({"Inpaint area": "Everywhere"}, "its Inpaint area 'Everywhere'")):
        problems = settings_from_fields(fields)[1]
        assert list(problems) == ["padding_mask_crop"] and words in problems["padding_mask_crop"]
        assert "(padding_mask_crop)" in problems["padding_mask_crop"]


def test_a_prompt_weighting_zoodip_lacks_names_its_flag():
    problems = settings_from_fields({"Prompt weighting": "foo", "Version": "zoodip 0.1.0"})[1]
    assert problems == {"prompt_weighting": "its Prompt weighting 'foo' does not read as a value: give it yourself "
                                            "(prompt_weighting)"}

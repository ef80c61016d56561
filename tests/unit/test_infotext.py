"""A1111's infotext (zoodip.infotext): the settings an image was generated with, in A1111's words and format."""
import re

import pytest

from zoodip.infotext import A1111_SAMPLER_NAMES, infotext
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


def test_every_sampler_has_its_a1111_name():
    assert set(A1111_SAMPLER_NAMES) == set(SAMPLERS)


def test_a_prompt_with_quotes_and_colons_stays_the_first_line():
    prompt = 'a "quoted" (word:1.3), [a:b:0.5]'
    text = infotext(prompt, {"negative_prompt": "x: y"}, (8, 8), _Model())
    assert parse(text)[:2] == (prompt, "x: y")


def test_the_embeddings_used_are_a1111s_ti_hashes_their_names_kept_from_splitting_the_list():
    _, _, fields = parse(infotext("x", {}, (8, 8), _Model(),
                                  embedding_hashes={"<a:b,c>": "0123456789ab", "d": "ba9876543210"}))
    assert fields["TI hashes"] == "<abc>: 0123456789ab, d: ba9876543210"
    assert "TI hashes" not in parse(infotext("x", {}, (8, 8), _Model(), embedding_hashes={}))[2]

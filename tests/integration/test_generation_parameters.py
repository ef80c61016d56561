"""Generation parameters written into the PNG as A1111 writes them (zoodip.infotext), read by `zoodip info IMAGE`."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from cli_helpers import assert_one_line_error, run_cli
from zoodip.generate import generate
from zoodip.image_parameters import read_parameters
from zoodip.model import ExportedModel


def _fields(text: str) -> dict[str, str]:
    return dict(pair.split(": ", 1) for pair in text.splitlines()[-1].split(", "))


def test_every_image_of_a_batch_says_how_it_was_made_and_the_settings_make_it_again(tiny_export, tmp_path, capsys):
    out = tmp_path / "o.png"
    code, _, err = run_cli(["generate", "--model", tiny_export, "--prompt", "a red star", "--negative-prompt", "blurry",
                            "--steps", "3", "--sampler", "euler_a", "--seed", "11", "--num-images", "2",
                            "--guidance-scale", "5", "--out", out], capsys)
    assert code == 0, err
    texts = {path.name: read_parameters(path) for path in (out, tmp_path / "o-1.png", tmp_path / "o-2.png")}
    assert texts["o.png"] == texts["o-1.png"]  # the grid says its first image's
    lines = texts["o-2.png"].splitlines()
    assert lines[:2] == ["a red star", "Negative prompt: blurry"]
    fields = _fields(texts["o-2.png"])
    assert {k: fields[k] for k in ("Steps", "Sampler", "CFG scale", "Seed", "Size", "Model", "Batch size",
                                   "Batch pos")} == {"Steps": "3", "Sampler": "Euler a", "CFG scale": "5.0",
                                                     "Seed": "11", "Size": "128x128", "Model": tiny_export.name,
                                                     "Batch size": "2", "Batch pos": "1"}
    model = ExportedModel.load(tiny_export)
    assert fields["Model hash"] == model.identity[:10]
    # What the text says is enough to make the image again (a batch: its size and place).
    again = generate(model, lines[0], negative_prompt=lines[1].split(": ", 1)[1], steps=int(fields["Steps"]),
                     sampler="euler_a", guidance_scale=float(fields["CFG scale"]), seed=int(fields["Seed"]),
                     num_images=int(fields["Batch size"]))[int(fields["Batch pos"])]
    assert np.array_equal(np.asarray(again), np.asarray(Image.open(tmp_path / "o-2.png")))
    code, text, _ = run_cli(["info", tmp_path / "o-2.png"], capsys)
    assert code == 0 and text.splitlines() == lines


def test_image_to_image_records_its_strength_and_size(tiny_export, tmp_path, capsys):
    photo = tmp_path / "wide.png"
    Image.new("RGB", (300, 200), (200, 30, 30)).save(photo)
    out = tmp_path / "i.png"
    assert run_cli(["generate", "--model", tiny_export, "--prompt", "a star", "--steps", "4", "--image", photo,
                    "--out", out], capsys)[0] == 0
    fields = _fields(read_parameters(out))
    assert (fields["Denoising strength"], fields["Size"]) == ("0.8", "{}x{}".format(*Image.open(out).size))


@pytest.mark.parametrize("name", ["o.jpg", "o.webp"])
def test_a_jpeg_or_webp_holds_them_in_its_exif_comment_as_a1111_writes_them(tiny_export, tmp_path, capsys, name):
    out = tmp_path / name
    assert run_cli(["generate", "--model", tiny_export, "--prompt", "ünïcode ✓ star", "--steps", "2", "--out", out],
                   capsys)[0] == 0
    comment = Image.open(out).getexif().get_ifd(0x8769)[0x9286]  # the EXIF sub-IFD's UserComment
    assert comment[:8] == b"UNICODE\0" and comment[8:].decode("utf-16-be").startswith("ünïcode ✓ star\nSteps: 2, ")
    code, text, _ = run_cli(["info", out], capsys)
    assert code == 0 and text.splitlines()[0] == "ünïcode ✓ star"


def test_no_metadata_and_images_without_them(tiny_export, tmp_path, capsys):
    out = tmp_path / "plain.png"
    assert run_cli(["generate", "--model", tiny_export, "--prompt", "a star", "--steps", "2", "--out", out,
                    "--no-metadata"], capsys)[0] == 0
    photo = tmp_path / "photo.jpg"
    Image.new("RGB", (64, 64)).save(photo)
    for path in (out, photo):
        assert read_parameters(path) is None
        code, text, _ = run_cli(["info", path], capsys)
        assert code == 0 and "holds no generation parameters" in text
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    assert_one_line_error(*run_cli(["info", tmp_path / "broken.png"], capsys)[::2], "cannot read image")
    assert_one_line_error(*run_cli(["info", tmp_path / "missing.png"], capsys)[::2], "does not exist")


def _exif_comment_type(path) -> int:
    """The TIFF field type of the EXIF UserComment as stored (7: UNDEFINED, which piexif, and so A1111, reads)."""
    import struct

    data = Image.open(path).info["exif"]
    data = data[6:] if data.startswith(b"Exif\0\0") else data
    order = ">" if data[:2] == b"MM" else "<"

    def entries(offset: int):
        (count,) = struct.unpack_from(order + "H", data, offset)
        for i in range(count):
            yield struct.unpack_from(order + "HHII", data, offset + 2 + 12 * i)

    (ifd0,) = struct.unpack_from(order + "I", data, 4)
    sub_ifd = next(value for tag, _, _, value in entries(ifd0) if tag == 0x8769)
    return next(kind for tag, kind, _, _ in entries(sub_ifd) if tag == 0x9286)


def test_what_the_saving_cannot_hold_is_said_not_a_traceback(tiny_export, tmp_path, capsys):
    """A prompt that is not UTF-8 (surrogates from the command line), a prompt too long for a JPEG's 64 KB EXIF, a crop
    whose Size is the box's, control characters in another tool's text; and the comment typed as A1111 reads it."""
    base = ["generate", "--model", tiny_export, "--steps", "2"]
    code, _, err = run_cli(base + ["--prompt", "caf\udce9 star", "--out", tmp_path / "s.png"], capsys)
    assert code == 0 and read_parameters(tmp_path / "s.png").startswith("caf\\udce9 star\n"), err
    code, _, err = run_cli(base + ["--prompt", "star " * 7000, "--out", tmp_path / "long.jpg",
                                   "--save-latents", tmp_path / "n.npy"], capsys)
    exif_lines = [line for line in err.splitlines() if "EXIF" in line]  # (beside the prompt's truncation warning)
    assert code == 0 and len(exif_lines) == 1 and exif_lines[0].startswith("warning: the generation parameters (")
    assert read_parameters(tmp_path / "long.jpg") is None and (tmp_path / "n.npy").is_file()
    assert run_cli(base + ["--prompt", "a star", "--out", tmp_path / "c.jpg"], capsys)[0] == 0
    assert _exif_comment_type(tmp_path / "c.jpg") == 7
    photo, mask = tmp_path / "p.png", tmp_path / "m.png"
    Image.new("RGB", (300, 200), (20, 90, 200)).save(photo)
    white = Image.new("L", (300, 200), 0)
    white.paste(255, (100, 50, 160, 110))
    white.save(mask)
    assert run_cli(base + ["--prompt", "a star", "--image", photo, "--mask", mask, "--padding-mask-crop", "8",
                           "--width", "64", "--height", "96", "--out", tmp_path / "crop.png"], capsys)[0] == 0
    assert Image.open(tmp_path / "crop.png").size == (300, 200)
    assert _fields(read_parameters(tmp_path / "crop.png"))["Size"] == "64x96"  # what was generated, as A1111's
    hostile = tmp_path / "hostile.png"
    info = PngInfo()
    info.add_text("parameters", "a \x1b]0;owned\x07 star\rX\nSteps: 2")
    Image.new("RGB", (8, 8)).save(hostile, pnginfo=info)
    code, text, _ = run_cli(["info", hostile], capsys)
    assert code == 0 and text == "a \\x1b]0;owned\\x07 star\\x0dX\nSteps: 2\n"


def test_the_embeddings_a_prompt_used_are_named_with_their_files_hashes_as_a1111s_ti_hashes(tiny_export, tmp_path,
                                                                                              capsys):
    import hashlib
    import json
    import re

    from zoodip.embeddings import save_a1111_embedding, save_learned_embeds

    hidden = ExportedModel.load(tiny_export).hidden_size
    rng = np.random.default_rng(0)
    folder = tmp_path / "embeddings"
    folder.mkdir()
    dog = save_learned_embeds(tmp_path / "dog.safetensors", "<my-dog>", rng.normal(size=(1, hidden)) * 0.01)
    star = save_a1111_embedding(folder / "zoostar.safetensors", "zoostar", rng.normal(size=(2, hidden)) * 0.01)
    save_learned_embeds(folder / "unused.safetensors", "<unused>", rng.normal(size=(1, hidden)) * 0.01)

    def hashes(prompt: str, negative: str) -> str | None:
        out = tmp_path / "o.png"
        code, _, err = run_cli(["generate", "--model", tiny_export, "--prompt", prompt, "--negative-prompt", negative,
                                "--steps", "1", "--embedding", dog, "--embedding", folder, "--out", out], capsys)
        assert code == 0, err
        found = re.search(r'TI hashes: ("(?:\\.|[^"\\])*")', read_parameters(out))
        return found and json.loads(found.group(1))

    def sha(path) -> str:
        return hashlib.sha256(path.read_bytes()).hexdigest()[:12]  # A1111's short hash

    # The names the prompts use (A1111's trigger word, the file's stem, as written), each file once; not the unused.
    assert hashes("a photo of <my-dog>", "zoostar") == f"<my-dog>: {sha(dog)}, zoostar: {sha(star)}"
    assert hashes("a photo of <zoostar>", "") == f"<zoostar>: {sha(star)}"
    assert hashes("a photo of a dog", "") is None


def test_ti_hashes_are_the_files_as_loaded_and_only_what_the_encoder_read(tiny_export, tmp_path):
    import hashlib

    from zoodip.embeddings import load_embeddings, save_a1111_embedding, save_learned_embeds
    from zoodip.infotext import used_embedding_hashes

    model = ExportedModel.load(tiny_export)
    rng = np.random.default_rng(1)
    a = save_learned_embeds(tmp_path / "a.safetensors", "<a>", rng.normal(size=(1, model.hidden_size)) * 0.01)
    star = save_a1111_embedding(tmp_path / "zoostar.safetensors", "zoostar", rng.normal(size=(1, model.hidden_size)))
    digest = {path.name: hashlib.sha256(path.read_bytes()).hexdigest()[:12] for path in (a, star)}
    hashes: dict[str, str] = {}
    added, _ = load_embeddings([a, star], model.tokenizer, model.hidden_size, hashes=hashes)
    a.unlink()  # gone after loading (a run saving it again, a clean-up): the parameters name what was loaded
    star.write_bytes(b"changed")

    def used(prompt: str, **settings) -> dict[str, str]:
        return used_embedding_hashes(model, prompt, {"steps": 4, **settings}, added, hashes)

    assert used("a photo of <a>") == {"<a>": digest["a.safetensors"]}
    assert used("<zoostar> and zoostar") == {"<zoostar>": digest["zoostar.safetensors"]}  # one file: listed once
    # What the text encoder never read is not listed: an edit's phase that does not run, words past the limit.
    assert used("[<a>::0.01] a star", prompt_weighting="a1111") == {}
    assert used("[<a>:<zoostar>:3]", prompt_weighting="a1111") == {"<a>": digest["a.safetensors"],
                                                                     "<zoostar>": digest["zoostar.safetensors"]}
    assert used("[<a>:<zoostar>:9]", prompt_weighting="a1111") == {"<a>": digest["a.safetensors"]}
    assert used("star, " * 80 + "<a>") == {}
    assert used("a star", negative_prompt="<a>") == {"<a>": digest["a.safetensors"]}


def test_one_file_under_two_names_is_listed_under_each_and_the_export_is_named_as_opened(tiny_export, tmp_path):
    import shutil

    from zoodip.embeddings import load_embeddings, save_learned_embeds
    from zoodip.infotext import model_hash, used_embedding_hashes

    copy = tmp_path / "export"
    shutil.copytree(tiny_export, copy)
    model = ExportedModel.load(copy)
    a = save_learned_embeds(tmp_path / "a.safetensors", "<a>", np.ones((1, model.hidden_size), np.float32) * 0.01)
    hashes: dict[str, str] = {}
    added, _ = load_embeddings([(str(a), "<x>"), (str(a), "<y>")], model.tokenizer, model.hidden_size, hashes=hashes)
    assert list(used_embedding_hashes(model, "<x> and <y>", {}, added, hashes)) == ["<x>", "<y>"]
    named = model_hash(model)
    shutil.rmtree(copy)  # removed (or replaced) while an image is made: its parameters name the export as opened
    assert model_hash(model) == named


def test_ddims_eta_is_a_flag_written_as_a1111s_eta_ddim_and_read_back(tiny_export, tmp_path, capsys):
    """The API took eta= but the CLI had no --eta, and --parameters-from called A1111's "Eta DDIM" no setting."""
    out = tmp_path / "d.png"
    code, _, err = run_cli(["generate", "--pretrained_model_name_or_path", tiny_export, "--prompt", "a red star",
                            "--steps", "3", "--sampler", "DDIM", "--eta", "0.5", "--out", out], capsys)
    assert code == 0, err
    assert _fields(read_parameters(out))["Eta DDIM"] == "0.5"
    code, _, err = run_cli(["generate", "--model", tiny_export, "--prompt", "a", "--eta", "0.5", "--sampler", "euler_A",
                            "--out", tmp_path / "x.png"], capsys)  # (a sampler's name in any case)
    assert_one_line_error(code, err, "eta applies to the ddim sampler only, not euler_a: drop it, or choose the ddim")
    model = ExportedModel.load(tiny_export)
    made = generate(model, "a red star", steps=3, sampler="ddim", eta=0.5)[0]
    assert np.array_equal(np.asarray(made), np.asarray(Image.open(out)))
    again = tmp_path / "again.png"
    code, _, err = run_cli(["generate", "--model", tiny_export, "--parameters-from", out, "--out", again], capsys)
    assert code == 0 and "Eta DDIM" not in err, err
    assert np.array_equal(np.asarray(Image.open(again)), np.asarray(made))
    other = tmp_path / "other.png"  # another sampler chosen by its flag: DDIM's eta left out
    code, _, err = run_cli(["generate", "--model", tiny_export, "--parameters-from", out, "--sampler", "Euler a",
                            "--out", other], capsys)
    assert code == 0, err
    assert "Eta DDIM" not in read_parameters(other) and _fields(read_parameters(other))["Sampler"] == "Euler a"


def test_a_prompt_whose_parameters_would_read_back_otherwise_is_warned_of(tiny_export, tmp_path, capsys):
    """A prompt holding a line 'Negative prompt: x' wrote parameters that made another image, without a word."""
    common = ["generate", "--model", tiny_export, "--steps", "1", "--out", tmp_path / "a.png"]
    code, _, err = run_cli([*common, "--prompt", "a red circle\nNegative prompt: x"], capsys)
    assert code == 0 and err.count("warning: ") == 1 and "--parameters-from will not make the image again" in err
    for prompt, negative in (("a red circle\n  on two lines", "x"), ("a cat \r\n", " blurry, lowres"),
                             ("portrait, style: oil, lighting: soft, mood: calm", "")):
        code, _, err = run_cli([*common, "--prompt", prompt, "--negative-prompt", negative], capsys)
        assert code == 0 and "warning" not in err, err
    code, _, err = run_cli([*common, "--no-metadata", "--prompt", "a red circle\nNegative prompt: x"], capsys)
    assert code == 0 and "warning" not in err, err

"""Hostile and careless inputs through the CLI, by class (README "Errors"): each ends in exit status 2,
one ``error:`` line on stderr, no traceback and no output left behind, or succeeds where it is valid."""
from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


from cli_helpers import TOKEN, assert_one_line_error, personalize_args, run_cli
from zoodip.prompt_checks import unreadable_token_problems


def generate_args(export, out, *extra):
    return ["generate", "--model", export, "--prompt", "a photo of a star", "--steps", "2", "--threads", "1",
            "--out", out, *extra]


def tree(folder: Path) -> set[str]:
    """Every path under ``folder`` (relative), to see that a refused command wrote nothing."""
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.fixture()
def work(tmp_path):
    folder = tmp_path / "work"
    folder.mkdir()
    return folder


# -- class 1: output locations, checked before any work ---------------------------------------------


@pytest.mark.parametrize("case,needle", [
    ("existing-file", "is an existing file"),
    ("under-a-file", "which is a file"),
    ("empty", "--output_dir is empty"),
    ("uncreatable", "cannot be created"),
])
def test_personalize_output_dir_is_checked_first(tiny_export, photos, work, capsys, case, needle):
    (work / "afile").write_text("x")
    out = {"existing-file": work / "afile", "under-a-file": work / "afile" / "run", "empty": "",
           "uncreatable": Path("/proc/zoodip-run")}[case]
    if case == "uncreatable" and not Path("/proc/self").exists():
        pytest.skip("needs /proc (a folder nobody can create entries in)")
    before = tree(work)
    code, _, err = run_cli(personalize_args(tiny_export, photos, out), capsys)
    assert_one_line_error(code, err, needle)
    assert tree(work) == before


@pytest.mark.parametrize("case,needle", [("folder", "is a folder"), ("under-a-file", "which is a file"),
                                         ("suffix", "must end in")])
def test_generate_out_is_checked_first(tiny_export, work, capsys, case, needle):
    (work / "afile").write_text("x")
    (work / "adir").mkdir()
    out = {"folder": work / "adir", "under-a-file": work / "afile" / "x.png", "suffix": work / "x.txt"}[case]
    before = tree(work)
    code, _, err = run_cli(generate_args(tiny_export, out), capsys)
    assert_one_line_error(code, err, needle)
    assert tree(work) == before


@pytest.mark.parametrize("case,needle", [("folder", "is a folder"), ("under-a-file", "which is a file")])
def test_unwritable_progress_jsonl_is_refused_before_training(tiny_export, photos, work, capsys, case, needle):
    (work / "afile").write_text("x")
    (work / "adir").mkdir()
    target = {"folder": work / "adir", "under-a-file": work / "afile" / "p.jsonl"}[case]
    before = tree(work)
    code, _, err = run_cli(personalize_args(tiny_export, photos, work / "run", "--progress-jsonl", target), capsys)
    assert_one_line_error(code, err, needle)
    assert tree(work) == before


def test_a_refused_setup_leaves_no_progress_file(tiny_export, photos, work, capsys):
    code, _, err = run_cli(personalize_args(tiny_export, photos, work / "run", "--progress-jsonl", work / "p.jsonl",
                                            "--initializer_token", "zqxjvkwpfhgtb"), capsys)
    assert_one_line_error(code, err, "single token")
    assert tree(work) == set()


# -- class 2: the export folder, validated as a whole before anything is written --------------------


def _damaged_export(tiny_export, tmp_path, edit) -> Path:
    folder = tmp_path / "export"
    shutil.copytree(tiny_export, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    edit(folder, manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def _flip_byte(path: Path, offset: int = 200) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


MANIFEST_DAMAGE = {
    "hidden-size-string": (lambda f, m: m["model"].update(hidden_size="32"), "model.hidden_size"),
    "sample-size-null": (lambda f, m: m["model"].update(sample_size=None), "lacks model.sample_size"),
    "latent-channels-missing": (lambda f, m: m["model"].pop("latent_channels"), "lacks model.latent_channels"),
    "graphs-a-list": (lambda f, m: m.update(graphs=[]), "graph"),
    "files-entry-not-object": (lambda f, m: m["files"].update({"unet.onnx": 5}), "not an object"),
    "absolute-graph-path": (lambda f, m: m["graphs"]["unet"].update(file="/etc/hostname"), "outside the export folder"),
    "escaping-graph-path": (lambda f, m: m["graphs"]["unet"].update(file="../unet.onnx"), "outside the export folder"),
    "escaping-tokenizer": (lambda f, m: m.update(tokenizer="../.."), "outside the export folder"),
    "unlisted-graph": (lambda f, m: m["files"].pop("unet.onnx"), "among its files"),
    "same-size-corruption": (lambda f, m: _flip_byte(f / "unet.onnx"), "does not match its sha256"),
    "scaling-factor-inf": (lambda f, m: m["model"].update(scaling_factor=float("inf")), "scaling_factor"),
    "unet-halvings-string": (lambda f, m: m["model"].update(unet_halvings="3"), "model.unet_halvings"),
    "unet-halvings-past-the-size": (lambda f, m: m["model"].update(unet_halvings=8), "more than its sample_size allows"),
    "unet-halvings-negative": (lambda f, m: m["model"].update(unet_halvings=-1), "unet_halvings = -1, not 0 to 8"),
    "scaling-factor-zero": (lambda f, m: m["model"].update(scaling_factor=0), "scaling_factor = 0, not a positive number"),
}


@pytest.mark.parametrize("kind", sorted(MANIFEST_DAMAGE))
def test_damaged_or_foreign_export_is_refused_before_writing(tiny_export, photos, tmp_path, capsys, kind):
    edit, needle = MANIFEST_DAMAGE[kind]
    export = _damaged_export(tiny_export, tmp_path, edit)
    out = tmp_path / "run"
    code, _, err = run_cli(personalize_args(export, photos, out), capsys)
    assert_one_line_error(code, err, needle)
    assert not out.exists()
    image = tmp_path / "gen.png"
    code, _, err = run_cli(generate_args(export, image), capsys)
    assert_one_line_error(code, err, needle)
    assert not image.exists()


def test_a_graph_onnxruntime_cannot_load_leaves_no_run_folder(tiny_export, photos, tmp_path, capsys):
    """A damaged graph whose manifest entry matches it: refused while setting up, before config.json."""
    from zoodip.integrity import file_sha256

    def edit(folder, manifest):
        (folder / "unet.onnx").write_bytes(b"not an onnx graph")
        manifest["files"]["unet.onnx"] = {"bytes": 17, "sha256": file_sha256(folder / "unet.onnx")}

    export = _damaged_export(tiny_export, tmp_path, edit)
    out = tmp_path / "a" / "run"
    code, _, err = run_cli(personalize_args(export, photos, out), capsys)
    assert_one_line_error(code, err, "onnxruntime cannot load")
    assert not (tmp_path / "a").exists()


def test_sha256_is_checked_once_per_file_identity_and_verify_checks_all(tiny_export, tmp_path, capsys):
    from zoodip.errors import ZoodipError
    from zoodip.integrity import verify_files
    from zoodip.model import read_manifest

    export = tmp_path / "export"
    shutil.copytree(tiny_export, export)
    files = read_manifest(export)["files"]
    assert verify_files(export, files)[0] == len(files)  # first time: every file hashed
    assert verify_files(export, files) == (0, 0)  # remembered: nothing re-read
    unet = export / "unet.onnx"
    os.utime(unet)  # a new mtime: hashed again, and still fine
    assert verify_files(export, files)[0] == 1

    # Corruption that keeps size, mtime and inode (the mtime set back, as touch -r, cp -p and rsync -t do) moves the
    # inode's change time: hashed again at load (it slipped past, and generate ran on damaged weights); and
    # 'zoodip verify' hashes everything.
    st = unet.stat()
    with open(unet, "r+b") as handle:
        handle.seek(300)
        byte = handle.read(1)
        handle.seek(300)
        handle.write(bytes([byte[0] ^ 0xFF]))
    os.utime(unet, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(ZoodipError, match="unet.onnx does not match its sha256"):
        verify_files(export, files)
    code, _, err = run_cli(["verify", export], capsys)
    assert_one_line_error(code, err, "unet.onnx does not match its sha256")
    code, out, err = run_cli(["verify", tiny_export], capsys)
    assert code == 0 and out.startswith("ok: ") and err == ""
    # A cache that cannot be read is only a cache: JSON nested past the parser's depth (a RecursionError) or a
    # named pipe (the read blocked for ever) hash the files again.
    from zoodip.integrity import CACHE_FILE, cache_dir
    cache = cache_dir() / CACHE_FILE
    saved = cache.read_bytes()
    try:
        cache.write_text("[" * 100_000 + "]" * 100_000)
        assert verify_files(tiny_export, read_manifest(tiny_export)["files"])[0] == len(files)
        cache.unlink()
        os.mkfifo(cache)
        assert verify_files(tiny_export, read_manifest(tiny_export)["files"])[0] == len(files)
    finally:
        cache.unlink(missing_ok=True)
        cache.write_bytes(saved)


# -- classes 3 and 4: sizes and numbers --------------------------------------------------------------


@pytest.mark.parametrize("flags,needle", [
    (["--seed", "-2"], "--seed must be an integer >= 0, or -1 for a random one, got -2"),  # (-1: A1111's random)
    (["--resolution", "100000"], "use at most"),
    (["--n", "100000"], "use at most 32"),
    (["--learning_rate", "inf"], "--learning_rate"),
    (["--checkpointing_steps", "-1"], "--checkpointing_steps"),  # the flag's own name, not the config field's
    # found by a sweep: these ran every step and then ended in a NaN, "never moved" or the initializer saved as learned
    (["--learning_rate", "1e308"], "--learning_rate must be a finite number in (0, 100]"),
    (["--mu", "1e-7"], "--mu 1e-07 is too small: below 1e-05 the loss differences of a float32 model drown"),
    (["--max_train_steps", "0"], "--max_train_steps must be an integer >= 1"),
    (["--train_data_dir", " "], "--train_data_dir is empty: name the folder"),  # Path("") is the current folder
    (["--model", ""], "--model is empty: name the folder"),
    (["--curvature-subspace", "0"], "--curvature-subspace must be a fraction in (0, 1], got 0: --no-curvature-subspace"),
    # an empty path (an unset shell variable) was read as the flag not given, and the run went on without it
    (["--captions", ""], "--captions is empty: name the JSON file, or drop --captions"),
    (["--template_file", " "], "--template_file is empty: name the template file, or drop --template_file"),
    (["--progress-jsonl", ""], "--progress-jsonl is empty: name the file to write"),
])
def test_numbers_out_of_range_are_refused_up_front(tiny_export, photos, work, capsys, flags, needle):
    code, _, err = run_cli(personalize_args(tiny_export, photos, work / "run", *flags), capsys)
    assert_one_line_error(code, err, needle)
    assert tree(work) == set()


@pytest.mark.parametrize("prompt,needle", [
    (" AND ".join(["a photo of <striped-star>"] * 9), "9 parts joined by AND"),
    ("a (photo:1" + "0" * 40 + ") of <striped-star>", "the emphasis weight of 'photo'"),
    ("a photo of <striped-star>, " + "a very long caption " * 100, "chunks"),
])
def test_a_preview_prompt_generate_would_refuse_is_refused_before_training(tiny_export, photos, work, capsys, prompt,
                                                                           needle):
    """Not after the steps before the first preview (on SD, hours), leaving a run folder that refuses a rerun."""
    flags = ["--validation_prompt", prompt, "--validation_steps", "2", "--prompt-weighting", "a1111"]
    code, _, err = run_cli(personalize_args(tiny_export, photos, work / "run", *flags), capsys)
    assert_one_line_error(code, err, needle)
    assert tree(work) == set()


@pytest.mark.parametrize("flags,needle", [
    # an empty path (an unset shell variable) was read as the flag not given, or said as " does not exist"
    (["--latents", ""], "--latents is empty: name the file, or drop --latents"),
    (["--save-latents", " "], "--save-latents is empty: name the file, or drop --save-latents"),
    (["--parameters-from", ""], "--parameters-from is empty: name the file, or drop --parameters-from"),
    # Pillow's words said the path twice: "cannot read image m.png ([Errno 2] No such file or directory: 'm.png')"
    (["--image", "missing.png"], "error: missing.png does not exist: pass a JPEG or PNG file"),
])
def test_generate_paths_that_are_empty_or_missing_are_one_plain_line(tiny_export, work, capsys, flags, needle,
                                                                     monkeypatch):
    monkeypatch.chdir(work)
    code, _, err = run_cli(generate_args(tiny_export, "x.png", *flags), capsys)
    assert_one_line_error(code, err, needle)
    assert tree(work) == set()


@pytest.mark.parametrize("flags,needle", [(["--width", "100000", "--height", "100000"], "use at most"),
                                         (["--num-images", "100000"], "from 1 to 64"),
                                         (["--threads", "-3"], "--threads must be")])
def test_generate_sizes_beyond_the_limits_are_refused_with_the_limit(tiny_export, work, capsys, flags, needle):
    code, _, err = run_cli(generate_args(tiny_export, work / "x.png", *flags), capsys)
    assert_one_line_error(code, err, needle)
    assert tree(work) == set()


def test_a_relative_model_path_is_said_as_typed(tiny_export, photos, work, capsys, monkeypatch):
    """The export folder is held absolute (a copy reopens it anywhere), and messages naming it said
    '$PWD/sd15 alone take' where the user typed sd15, as the rest of the command line does not."""
    monkeypatch.chdir(tiny_export.parent)
    for argv in (generate_args(tiny_export.name, work / "x.png", "--memory-budget", "1"),
                 personalize_args(tiny_export.name, photos, work / "run", "--memory-budget", "1")):
        code, _, err = run_cli(argv, capsys)
        assert_one_line_error(code, err, f"the text encoder and UNet weights of {tiny_export.name} alone take")
    assert tree(work) == set()


def test_an_export_folder_whose_path_is_not_utf8_is_refused_for_what_it_is(tiny_export, work, tmp_path, capsys):
    """onnxruntime takes UTF-8 paths only: a folder named in another encoding was 'onnxruntime cannot load
    m\\xff/text_encoder.onnx: __init__(): incompatible constructor arguments ...: re-run 'zoodip export''."""
    folder = tmp_path / os.fsdecode(b"m\xff")
    shutil.copytree(tiny_export, folder)
    code, _, err = run_cli(generate_args(folder, work / "x.png"), capsys)
    assert_one_line_error(code, err, "has a path that is not UTF-8 (a name in another encoding), which onnxruntime "
                                     "cannot open: rename it")
    assert tree(work) == set()


def test_image_size_limit_is_a_floor_that_names_its_limit():
    from zoodip.errors import ZoodipError
    from zoodip.limits import attention_bytes, check_image_size, largest_side

    # SD1.5 at 512 px: 64 MiB of VAE attention scores, and as much again for their softmax, live beside them
    assert attention_bytes(64, 64) == 2 * 4096 * 4096 * 4
    side = largest_side(8, 1 << 30)
    check_image_size(side, side, 8, "x", memory_budget_mb=1024)  # the largest side named fits
    with pytest.raises(ZoodipError, match=f"use at most {side} px"):
        check_image_size(side + 8, side + 8, 8, "x", memory_budget_mb=1024)
    # On an export that runs only multiples of 64 px the side named is one it runs (1016 px was named, then refused).
    assert largest_side(8, 2000 << 20) == 1016 and largest_side(8, 2000 << 20, multiple=64) == 960
    with pytest.raises(ZoodipError, match="use at most 960 px"):
        check_image_size(1024, 1024, 8, "x", memory_budget_mb=2000, multiple=64)


def test_image_size_floor_counts_the_attention_scores_and_their_softmax():
    """2048 px on a 23.5 GB machine passed a floor of one 16 GiB score matrix and was then killed for memory: the
    VAE decoder's Softmax writes its probabilities beside the scores, so both are live (its measured peak alone)."""
    from zoodip.errors import ZoodipError
    from zoodip.limits import check_image_size

    check_image_size(512, 512, 8, "x", memory_budget_mb=130)  # 2 x 64 MiB fits
    with pytest.raises(ZoodipError, match="needs at least 0.125 GB"):
        check_image_size(512, 512, 8, "x", memory_budget_mb=100)  # one 64 MiB matrix fit; two do not


def test_photo_count_beyond_memory_is_refused_with_the_limit():
    from zoodip.errors import ZoodipError
    from zoodip.limits import check_photo_count

    check_photo_count(10, 512, views=2, memory_budget_mb=1300)  # the low-memory SD1.5 setting: fine
    with pytest.raises(ZoodipError, match="use at most 433 "):  # 3 MiB per 512-px photo in 1300 MiB
        check_photo_count(10_000, 512, memory_budget_mb=1300)


def test_embedding_file_is_refused_from_its_header(tmp_path, tiny_export, capsys):
    """A 4 GiB model-sized tensor is refused after reading the header, not the data (a sparse file)."""
    import tracemalloc

    from zoodip.embeddings import load_embedding_file
    from zoodip.errors import ZoodipError

    header = json.dumps({"weight": {"dtype": "F32", "shape": [1024, 1 << 20], "data_offsets": [0, 4 << 30]}}).encode()
    header += b" " * (-len(header) % 8)
    path = tmp_path / "model.safetensors"
    with open(path, "wb") as handle:
        handle.write(len(header).to_bytes(8, "little") + header)
        handle.truncate(8 + len(header) + (4 << 30))
    tracemalloc.start()
    try:
        with pytest.raises(ZoodipError, match="larger than any textual-inversion embedding"):
            load_embedding_file(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20
    code, _, err = run_cli(generate_args(tiny_export, tmp_path / "x.png", "--embedding", path), capsys)
    assert_one_line_error(code, err, "model checkpoint")


def test_pillows_pixel_limit_is_ours(tmp_path, monkeypatch):
    """Pillow's own guard (89 MP by default) must not refuse a photo below our limit, nor name another limit."""
    from zoodip import images
    from zoodip.errors import ZoodipError

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow's guard below ours, as 89 MP < 120 MP
    monkeypatch.setattr(images, "MAX_PIXELS", 5000)
    Image.new("RGB", (60, 60), (10, 20, 30)).save(tmp_path / "ok.png")  # 3600 px: over Pillow's, under ours
    assert images.load_image(tmp_path / "ok.png", 32).shape == (3, 32, 32)
    Image.new("RGB", (100, 100)).save(tmp_path / "big.png")
    with pytest.raises(ZoodipError, match=r"below 0\.005 megapixels"):
        images.load_image(tmp_path / "big.png", 32)
    assert Image.MAX_IMAGE_PIXELS == 1000  # restored


def test_animated_gif_gives_its_first_frame(tmp_path, tiny_export, capsys):
    from zoodip.images import list_images, load_image

    frames = [Image.new("RGB", (48, 48), colour) for colour in ((250, 0, 0), (0, 0, 250))]
    photos = tmp_path / "photos"
    photos.mkdir()
    frames[0].save(photos / "anim.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert list_images(photos) == [photos / "anim.gif"]
    red = load_image(photos / "anim.gif", 32)
    assert red[0].mean() > 0.9 and red[2].mean() < -0.9
    code, _, err = run_cli(personalize_args(tiny_export, photos, tmp_path / "run", "--max_train_steps", "1"), capsys)
    assert code == 0, err


@pytest.mark.parametrize("flags,needle", [(["--learning_rate", "100"], "blew up"), (["--learning_rate", "1e-30"], "never moved")])
def test_runs_that_blew_up_or_never_moved_are_reported_not_done(tiny_export, photos, tmp_path, capsys, flags, needle):
    out = tmp_path / "run"
    code, stdout, err = run_cli(personalize_args(tiny_export, photos, out, *flags), capsys)
    assert_one_line_error(code, err, needle)
    assert "done" not in stdout
    assert not (out / "learned_embeds.safetensors").exists()


# -- class 5: a resumed run can only continue itself ------------------------------------------------


@pytest.fixture()
def finished_run(tiny_export, photos, tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = run_cli(personalize_args(tiny_export, photos, out, "--checkpointing_steps", "1"), capsys)
    assert code == 0, err
    return out


def test_resume_with_other_photos_or_another_export_is_refused(finished_run, tiny_export, photos, tmp_path, capsys):
    other_photos = tmp_path / "other"
    shutil.copytree(photos, other_photos)
    first = sorted(other_photos.iterdir())[0]
    Image.open(first).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(first)
    code, _, err = run_cli(personalize_args(tiny_export, other_photos, finished_run, "--resume"), capsys)
    assert_one_line_error(code, err, "other photos")

    other_export = _damaged_export(tiny_export, tmp_path, lambda f, m: m["source"].update(seed=1))
    code, _, err = run_cli(personalize_args(other_export, photos, finished_run, "--resume"), capsys)
    assert_one_line_error(code, err, "another export")
    code, _, err = run_cli(personalize_args(tiny_export, photos, finished_run, "--resume"), capsys)
    assert code == 0, err  # the same photos and export still resume


def test_resume_with_fewer_steps_than_done_is_refused(finished_run, tiny_export, photos, capsys):
    """A finished 3-step run resumed with --max_train_steps 2 kept its step-3 embedding without a word."""
    before = (finished_run / "learned_embeds.safetensors").read_bytes()
    code, _, err = run_cli(personalize_args(tiny_export, photos, finished_run, "--resume", "--max_train_steps", "2"),
                           capsys)  # (the last --max_train_steps counts)
    assert_one_line_error(code, err, "the checkpoint is at step 3, past --max_train_steps 2")
    assert (finished_run / "learned_embeds.safetensors").read_bytes() == before


@pytest.mark.parametrize("damage,needle", [
    (lambda s: s.pop("v"), "damaged (no 'v')"),
    (lambda s: s.update(v=np.zeros(7, np.float32)), "damaged ('v' has shape [7]"),
    (lambda s: s.update({"opt/exp_avg": np.zeros(3)}), "damaged"),
    # numbers no run writes: a NaN resumed surfaced steps later as a failed SVD (a traceback) or a "diverged" loss
    (lambda s: s.update({"sg/buffer": np.full_like(s["sg/buffer"], np.nan)}), "damaged ('sg/buffer' holds values "
                                                                              "that are no finite numbers)"),
    (lambda s: s.update(v=np.full_like(s["v"], np.inf)), "damaged ('v' holds values that are no finite numbers)"),
    (lambda s: s.update(eval_history=np.array([[0.0, np.nan]])), "damaged ('eval_history' holds values"),
    (lambda s: s.update({"opt/exp_avg_sq": -1 - s["opt/exp_avg_sq"]}), "('opt/exp_avg_sq' holds negative values"),
    (lambda s: s.update(step=np.array(2.5)), "damaged ('step' is 2.5, not a count)"),
    (lambda s: s.update({"sg/count": np.array(-5)}), "damaged ('sg/count' is -5, not a count)"),
    (lambda s: s.update(train_forwards=np.array(2**63 - 1)), "'train_forwards' is 9223372036854775807, not a count"),
    (lambda s: s.update({"sg/rank": np.array(-2)}), "damaged ('sg/rank' is -2, not a count)"),
    # counts that disagree as no run writes them (an edited file): the run went on from the mixed state
    (lambda s: s.update({"opt/steps": np.array(1)}), "damaged ('opt/steps' is 1 at step 3, and a run steps both"),
    (lambda s: s.update(step=np.array(2)), "damaged ('opt/steps' is 3 at step 2"),
    (lambda s: s.update({"sg/count": np.array(0)}), "damaged ('sg/count' is 0 at step 3"),
    (lambda s: s.update(train_forwards=np.array(0)), "damaged ('train_forwards' is 0, fewer than 2 per step over 3"),
    (lambda s: s.update(eval_history=np.array([[0.0, 1.0], [500.0, 1.0]])), "not evaluations in order up to step 3"),
    (lambda s: s.update(eval_history=np.array([[0.0, 1.0], [2.5, 1.0]])), "not evaluations in order up to step 3"),
    (lambda s: s.update(eval_history=np.array([[0.0, -1.0]])), "'eval_history' holds negative losses"),
    (lambda s: s.update(eval_history=np.array([0.0, 1.18, 3.0])), "'eval_history' is [3] float64, not [evaluations, 2]"),
    (lambda s: s.update(eval_history=np.ones((2, 3))), "'eval_history' is [2, 3] float64, not [evaluations, 2]"),
    (lambda s: s.update(eval_history=np.array(["a", "b"])), "'eval_history' is [2] <U1, not [evaluations, 2]"),
    (lambda s: s.update({"sg/kept_dims": np.array(2)}), "Subspace Gradient's state holds a fit after 3 of 4 observations"),
])
def test_damaged_checkpoint_is_one_line(finished_run, tiny_export, photos, capsys, damage, needle):
    path = finished_run / "checkpoint.npz"
    with np.load(path) as data:
        state = {k: data[k] for k in data.files}
    damage(state)
    np.savez(path, **state)
    code, _, err = run_cli(personalize_args(tiny_export, photos, finished_run, "--resume"), capsys)
    assert_one_line_error(code, err, needle)


def test_a_folder_where_the_run_writes_its_embedding_is_refused_before_the_steps(finished_run, tiny_export, photos,
                                                                                 capsys):
    """It failed only at the end, after all the resumed steps, with advice to free space."""
    (finished_run / "learned_embeds.safetensors").unlink()
    (finished_run / "learned_embeds.safetensors").mkdir()
    code, _, err = run_cli(personalize_args(tiny_export, photos, finished_run, "--resume", "--max_train_steps", "50"),
                           capsys)
    assert_one_line_error(code, err, "learned_embeds.safetensors is not a file (a folder or a device), and the run "
                                     "writes its own there at the end: move it, then resume with --resume")
    assert int(np.load(finished_run / "checkpoint.npz")["step"]) == 3


def test_a_checkpoint_that_is_garbage_or_a_folder_is_one_line(finished_run, tiny_export, photos, capsys):
    path = finished_run / "checkpoint.npz"
    path.write_bytes(b"\x80\x04garbage, not an npz")
    code, _, err = run_cli(personalize_args(tiny_export, photos, finished_run, "--resume"), capsys)
    assert_one_line_error(code, err, "is unreadable (damaged, or not a zoodip checkpoint")
    assert "pickle" not in err  # numpy's words would point at loading it with pickles
    path.unlink()
    path.mkdir()
    code, _, err = run_cli(personalize_args(tiny_export, photos, finished_run, "--resume"), capsys)
    assert_one_line_error(code, err, "checkpoint.npz is not a file")


@pytest.mark.parametrize("tail", [b'{"step": 3, "lo', b'{"step": 3, "loss": 0.1\xff\xfe'])
def test_a_torn_last_log_line_is_tolerated(finished_run, tiny_export, photos, capsys, tail):
    log = finished_run / "log.jsonl"
    log.write_bytes(log.read_bytes() + tail)
    code, _, err = run_cli(personalize_args(tiny_export, photos, finished_run, "--resume", "--max_train_steps", "4"), capsys)
    assert code == 0, err
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4]


def test_a_damaged_log_line_in_the_middle_is_one_line(finished_run, tiny_export, photos, capsys):
    log = finished_run / "log.jsonl"
    lines = log.read_bytes().split(b"\n")
    lines[1] = b"\xff\xfe garbage"
    log.write_bytes(b"\n".join(lines))
    code, _, err = run_cli(personalize_args(tiny_export, photos, finished_run, "--resume"), capsys)
    assert_one_line_error(code, err, "damaged at line 2")


def test_interrupted_write_temp_files_are_cleaned_and_outputs_are_0644(finished_run, tiny_export, photos, capsys):
    stale = [finished_run / ".checkpoint.npz.tmp-999999", finished_run / ".learned_embeds.safetensors.k3j2l1.tmp",
             finished_run / ".log.jsonl.tmp-1-abcd", finished_run / ".validation-steps-2.png.tmp-7-ab12.png",
             finished_run / ".learned_embeds-steps-2.safetensors.tmp-7-cd34"]  # (previews too: they were left)
    for path in stale:
        path.write_bytes(b"partial")
    keep = finished_run / "notes.txt"
    keep.write_text("mine")
    code, _, err = run_cli(personalize_args(tiny_export, photos, finished_run, "--resume", "--max_train_steps", "4"), capsys)
    assert code == 0, err
    assert not any(p.exists() for p in stale) and keep.exists()
    umask = os.umask(0)
    os.umask(umask)
    for name in ("learned_embeds.safetensors", "checkpoint.npz", "config.json"):
        assert stat.S_IMODE((finished_run / name).stat().st_mode) == 0o666 & ~umask, name


# -- classes 6 and 7: defaults do not warn; SDXL is refused up front ---------------------------------


def test_default_run_does_not_warn_and_a_warning_is_one_line(tiny_export, photos, tmp_path, capsys):
    args = [a for a in personalize_args(tiny_export, photos, tmp_path / "default") if a not in ("--tau", "4")]
    code, _, err = run_cli(args, capsys)
    assert code == 0 and err == "", err  # default tau on the 32-wide model: half the width, no warning
    code, _, err = run_cli(personalize_args(tiny_export, photos, tmp_path / "wide", "--tau", "64"), capsys)
    assert code == 0
    assert err.count("\n") == 1 and err.startswith("warning: --tau 64 >= embedding width 32"), err
    assert "(e.g. --tau 16)" in err, err
    code, _, err = run_cli(personalize_args(tiny_export, photos, tmp_path / "off", "--no-subspace"), capsys)
    assert code == 0 and err == "warning: --tau 4 changes nothing: --no-subspace turns Subspace Gradient off\n", err


def test_a_placeholder_that_a1111s_reading_splits_is_warned_about(tiny_export, photos, tmp_path, capsys):
    args = [a if a != TOKEN else "<BREAK>" for a in personalize_args(tiny_export, photos, tmp_path / "run")]
    code, _, err = run_cli(args, capsys)
    assert code == 0 and err.count("\n") == 1 and "the learned token '<BREAK>' holds BREAK" in err, err


def test_a_placeholder_in_a1111s_syntax_is_refused_where_a1111s_previews_would_lack_it(tiny_export, photos, tmp_path,
                                                                                       capsys):
    """Found by a sweep: '(x:1.5)' trained with A1111-read previews drew every preview without the token."""
    args = [a if a != TOKEN else "(x:1.5)" for a in personalize_args(tiny_export, photos, tmp_path / "run")]
    code, _, err = run_cli([*args, "--validation_prompt", "a photo of (x:1.5)", "--prompt-weighting", "a1111"], capsys)
    assert_one_line_error(code, err, "the learned token '(x:1.5)' holds brackets, which A1111's reading of a prompt "
                                     "takes as its syntax")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("token, what", [("(x)", "brackets"), ("[x|y]", "brackets"), ("x\\", "\\")])
def test_an_embedding_token_a1111s_reading_cannot_read_is_said_so_not_said_missing(tiny_export, tmp_path, capsys,
                                                                                   token, what):
    from safetensors.numpy import save_file

    save_file({"emb_params": np.zeros((1, 32), np.float32)}, str(tmp_path / "e.safetensors"))
    code, _, err = run_cli(["generate", "--model", tiny_export, "--embedding", f"{tmp_path / 'e.safetensors'}:{token}",
                            "--prompt", f"a {token} cat", "--steps", "2", "--prompt-weighting", "a1111",
                            "--out", tmp_path / "o.png"], capsys)
    assert code == 0 and f"the learned token {token!r} holds {what}, which A1111" in err, err
    assert "does not appear in the prompt" not in err
    assert "holds an extra-network tag" in unreadable_token_problems(["<lora:x>"])[0]  # (no PATH:TOKEN can name it)
    assert unreadable_token_problems(["a|b"]) == []  # a bare | is text to A1111: it alternates only in brackets


def test_default_tau_per_width():
    from zoodip.config import default_tau

    assert [default_tau(w) for w in (32, 64, 768, 1024)] == [16, 32, 128, 128]


def test_export_refuses_an_sdxl_folder_up_front(tiny_sd_folder, tmp_path, capsys):
    sdxl = tmp_path / "sdxl"
    shutil.copytree(tiny_sd_folder, sdxl)
    shutil.copytree(sdxl / "text_encoder", sdxl / "text_encoder_2")
    (sdxl / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline"}))
    out = tmp_path / "out"
    code, _, err = run_cli(["export", sdxl, out, "--quiet"], capsys)
    assert_one_line_error(code, err, "SDXL")
    assert not out.exists()


def _edit_json(path, **changes):
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


@pytest.mark.parametrize("damage,needle", [
    (lambda f: _edit_json(f / "scheduler" / "scheduler_config.json", num_train_timesteps=10**12),
     "num_train_timesteps must be an integer from 1 to 100000"),
    (lambda f: _edit_json(f / "scheduler" / "scheduler_config.json", prediction_type="banana"),
     "prediction_type 'banana' is not supported"),
    (lambda f: _edit_json(f / "vae" / "config.json", scaling_factor=0), "scaling_factor 0, not a positive number"),
    (lambda f: (f / "tokenizer" / "vocab.json").write_text("{"), "vocab.json is not readable JSON"),
    (lambda f: (f / "text_encoder" / "model.safetensors").write_bytes(
        (f / "text_encoder" / "model.safetensors").read_bytes()[:100_000]), "may be damaged or incomplete: copy it again"),
    (lambda f: (f / "unet" / "diffusion_pytorch_model.safetensors").unlink(), "holds no weights file"),
])
def test_export_refuses_a_source_the_sdk_could_not_read_in_one_line(tiny_sd_folder, tmp_path, capsys, damage, needle):
    """What the SDK reads of an export (its scheduler, latent scale, tokenizer) is checked in the source, and damaged
    weights are one line: not an export that every later command refuses, nor a traceback."""
    source = tmp_path / "source"
    shutil.copytree(tiny_sd_folder, source)
    damage(source)
    out = tmp_path / "out"
    code, _, err = run_cli(["export", source, out, "--quiet", "--no-parity", "--curvature-samples", "0"], capsys)
    assert_one_line_error(code, err, needle)
    assert not out.exists()


def test_export_never_replaces_the_folder_that_holds_its_source(tiny_sd_folder, tiny_export, tmp_path, capsys):
    previous = tmp_path / "previous"
    shutil.copytree(tiny_export, previous)
    shutil.copytree(tiny_sd_folder, previous / "source")
    for source, out in ((previous / "source", previous), (previous / "source", previous / "source")):
        code, _, err = run_cli(["export", source, out, "--quiet", "--overwrite"], capsys)
        assert_one_line_error(code, err, "is the source folder or holds it")
    assert (previous / "source" / "unet" / "config.json").is_file() and (previous / "manifest.json").is_file()


@pytest.mark.parametrize("channels, kind", [(9, "an inpainting model"), (8, "InstructPix2Pix"),
                                            (5, "a depth-to-image model"), (7, "not a text-to-image model")])
def test_export_refuses_an_inpainting_unet_up_front(tiny_sd_folder, tmp_path, capsys, channels, kind):
    """An InstructPix2Pix (8 channels) or depth-to-image (5) UNet was refused as 'an inpainting model's'."""
    source = tmp_path / "source"
    shutil.copytree(tiny_sd_folder, source)
    config_path = source / "unet" / "config.json"
    config = json.loads(config_path.read_text())
    config["in_channels"] = channels  # 9: latents, mask and masked image, SD inpainting models'
    config_path.write_text(json.dumps(config))
    out = tmp_path / "out"
    code, _, err = run_cli(["export", source, out, "--quiet"], capsys)
    assert_one_line_error(code, err, f"reads {channels} channels")
    assert kind in err and "--mask" in err and not out.exists()
    assert ("inpainting" in err.split(":")[1]) == (channels == 9)


def test_max_token_norm_reads_the_table_without_the_map(tiny_export):
    from zoodip.model import ExportedModel

    model = ExportedModel.load(tiny_export)
    table = np.asarray(model.token_embeddings, np.float32)
    assert model.max_token_norm(rows=1000) == pytest.approx(float(np.sqrt((table ** 2).sum(1).max())), rel=1e-6)


@pytest.mark.parametrize("case,needle", [("under-a-file", "which is a file"), ("empty", "OUT_DIR is empty"),
                                         ("existing-file", "is an existing file")])
def test_export_out_dir_is_checked_first(work, capsys, case, needle):
    (work / "afile").write_text("x")
    out = {"under-a-file": work / "afile" / "model", "empty": "", "existing-file": work / "afile"}[case]
    before = tree(work)
    code, _, err = run_cli(["export", "--tiny", out, "--quiet", "--no-parity"], capsys)
    assert_one_line_error(code, err, needle)
    assert tree(work) == before


@pytest.mark.parametrize("content,needle", [
    ("{}", "has no caption for"),  # valid JSON, nothing in it
    ("[]", "must be a JSON object of strings"),
    ('"a photo"', "must be a JSON object of strings"),
    ('{"0.png": 5}', "must be a JSON object of strings"),
    ("null", "must be a JSON object of strings"),
])
def test_captions_files_of_the_wrong_shape_are_refused_before_any_output(tiny_export, photos, tmp_path, capsys,
                                                                          content, needle):
    captions = tmp_path / "captions.json"
    captions.write_text(content)
    code, _, err = run_cli(personalize_args(tiny_export, photos, tmp_path / "run", "--captions", captions), capsys)
    assert_one_line_error(code, err, needle)
    assert not (tmp_path / "run").exists()


def test_a_caption_whose_last_words_the_text_encoder_cannot_read_is_warned_about(tiny_export, photos, tmp_path, capsys):
    """Found by a sweep: cut at 75 tokens without a word (as diffusers does); the placeholder itself is read."""
    names = sorted(path.name for path in Path(photos).iterdir() if path.suffix.lower() in (".png", ".jpg"))
    captions = tmp_path / "captions.json"
    captions.write_text(json.dumps({name: f"a photo of {{}} {'very ' * 100}blue" for name in names}))
    code, _, err = run_cli(personalize_args(tiny_export, photos, tmp_path / "run", "--captions", captions,
                                            "--max_train_steps", "1"), capsys)
    assert code == 0 and err.count("\n") == 1, err
    assert f"(and {len(names) - 1} more) is 105 tokens, past the text encoder's 75: its last words are not read" in err


def test_a_resolution_far_above_the_models_is_warned_about(tiny_export, photos, tmp_path, capsys):
    """diffusers' script defaults to 512: on a model made for fewer pixels every forward costs that much more."""
    code, _, err = run_cli(personalize_args(tiny_export, photos, tmp_path / "run", "--resolution", "512",
                                            "--max_train_steps", "1"), capsys)
    assert code == 0 and err.count("\n") == 1 and "--resolution 512 is more than twice the model's native 128 px" in err


def test_an_embedding_that_saturates_the_text_encoder_is_warned_about(model):
    """A vector past 100x the largest word's norm (what a training run calls blown up) gives the same images whatever
    it holds: it was accepted without a word (only NaN and inf were refused)."""
    import warnings

    from zoodip.generate import generate

    vector = np.random.default_rng(0).standard_normal(model.hidden_size).astype(np.float32)
    vector *= 0.5 * model.max_token_norm() / np.linalg.norm(vector)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        generate(model, "a photo of <s>", steps=1, added_embeddings={"<s>": vector})
    with pytest.warns(UserWarning, match=r"the embedding for '<s>' has a vector of norm .* over 100x the largest word's"):
        generate(model, "a photo of <s>", steps=1, added_embeddings={"<s>": vector * np.float32(1e4)})


def test_an_os_error_names_the_flag_whose_path_failed_not_one_whose_words_match(tiny_export, tmp_path, capsys):
    """A prompt spelling the output's folder, or the model folder holding --out's numbered files, was named."""
    out = tmp_path / ("a" * 300 + ".png")  # the grid's numbered files beside it fail first, and are --out's
    code, _, err = run_cli(["generate", "--model", tiny_export, "--prompt", str(tmp_path), "--num-images", "2",
                            "--steps", "2", "--out", out], capsys)
    assert_one_line_error(code, err, "the name is too long for the file system")
    assert err.startswith(f"error: --out {str(tmp_path)[:20]}")


@pytest.mark.parametrize("flag", ["--out", "--image", "--parameters-from", "--embedding", "--latents", "--model"])
def test_a_name_too_long_for_the_file_system_is_one_line_wherever_it_is_given(tiny_export, tmp_path, capsys, flag):
    """Found by a sweep: pathlib's is_dir()/exists() raised ENAMETOOLONG as a traceback from six places."""
    long = tmp_path / ("a" * 300 + ".png")
    args = {"--out": tmp_path / "o.png", "--model": tiny_export, flag: long}
    code, _, err = run_cli(["generate", "--prompt", "a star", "--steps", "2", *(x for pair in args.items() for x in pair)],
                           capsys)
    assert_one_line_error(code, err, "...: the name is too long for the file system: use a shorter one")
    assert err.startswith(f"error: {flag} /")  # the flag that gave it, named
    assert not (tmp_path / "o.png").exists()


def test_an_embedding_far_past_any_words_norm_is_said_once(tiny_export, tmp_path, capsys):
    """Found by a sweep: said twice (the image's TI hashes read the tokens again)."""
    from safetensors.numpy import save_file

    save_file({"emb_params": np.full((1, 32), 1e20, np.float32)}, str(tmp_path / "big.safetensors"))
    code, _, err = run_cli(["generate", "--model", tiny_export, "--embedding", f"{tmp_path / 'big.safetensors'}:<h>",
                            "--prompt", "a <h> cat", "--steps", "2", "--out", tmp_path / "o.png"], capsys)
    assert code == 0 and err.count("over 100x the largest word's") == 1, err


def _replace_with(path: Path, kind: str) -> None:
    path.unlink()
    path.mkdir() if kind == "folder" else os.mkfifo(path)


@pytest.mark.parametrize("kind", ["folder", "pipe"])
def test_an_export_file_that_is_a_folder_or_a_pipe_is_said_as_what_it_is(tiny_export, tmp_path, capsys, kind):
    """A listed file (or manifest.json) replaced by a folder or a named pipe was said to be 'missing'."""
    folder = _damaged_export(tiny_export, tmp_path, lambda f, m: None)
    _replace_with(folder / "text_encoder.onnx", kind)
    what = "is a folder" if kind == "folder" else "is neither a file nor a folder (a device, pipe or socket)"
    for command in ("verify", "info"):
        code, _, err = run_cli([command, folder], capsys)
        assert_one_line_error(code, err, f"text_encoder.onnx {what}, where the export has a file")
    _replace_with(folder / "manifest.json", kind)
    for command in ("verify", "info"):  # info said 'is a folder: info reads ... an export folder'
        code, _, err = run_cli([command, folder], capsys)
        assert_one_line_error(code, err, f"manifest.json {what}, not the export's manifest file")



def test_a_manifest_past_any_exports_size_is_refused_unread(tiny_export, tmp_path, capsys):
    """A 300 MB manifest.json (a damaged or hostile folder) was read whole into memory by info, verify and load."""
    from zoodip.manifest import MAX_MANIFEST_BYTES
    folder = _damaged_export(tiny_export, tmp_path, lambda f, m: None)
    assert (folder / "manifest.json").stat().st_size * 100 < MAX_MANIFEST_BYTES  # a wide margin over a real one
    with open(folder / "manifest.json", "r+b") as file:
        file.truncate(MAX_MANIFEST_BYTES + 1)  # (sparse: nothing written)
    for command in ("verify", "info"):
        code, _, err = run_cli([command, folder], capsys)
        assert_one_line_error(code, err, f"manifest.json is {MAX_MANIFEST_BYTES >> 20} MB, far past any export's")

FOREIGN_FILES = {
    "emb.npy": (b"\x93NUMPY\x01\x00v\x00" + b" " * 118 + b"\n" + bytes(32), "a NumPy array file (.npy)"),
    "emb.json": (b'{"<token>": [0.1, 0.2]}\n', "JSON or text"),
    "image.safetensors": (b"\x89PNG\r\n\x1a\n" + bytes(60), "a PNG image"),
    "empty.safetensors": (b"{}", "JSON or text"),  # under 8 bytes: was 'shorter than its header length: re-download'
    "list.safetensors": (b"[1]\n", "JSON or text"),
    # (text that does not start as JSON: generation parameters, notes; was 'header length ...; truncated?')
    "params.txt": (b"a photo of <cat>\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512\n", "JSON or text"),
    "notes.safetensors": ("notes \u2014 r\u00e9sum\u00e9".encode(), "JSON or text"),  # (the dash's 3 bytes cut at byte 8)
    "bom.txt": ("\ufeffnotes".encode(), "JSON or text"),
}


@pytest.mark.parametrize("name", sorted(FOREIGN_FILES))
def test_an_embedding_of_another_format_is_said_as_that_format(tmp_path, capsys, name):
    """A .npy or JSON given as an embedding was 'not a valid safetensors file (header length 379676406402707 does
    not fit the 160-byte file; truncated?): re-download or re-save it': no download is truncated there."""
    data, needle = FOREIGN_FILES[name]
    (tmp_path / name).write_bytes(data)
    code, _, err = run_cli(["info", tmp_path / name], capsys)
    assert_one_line_error(code, err, f"{name} is {needle}, not a safetensors file")
    assert "truncated" not in err


def test_a_float64_embedding_past_float32s_range_is_said_so_in_one_line(tmp_path, capsys):
    """A float64 file holding 1e300 printed NumPy's 'warning: overflow encountered in cast' and then said it 'contains
    NaN or infinite values', which it does not."""
    from zoodip.safetensors_io import save_file

    path = save_file({"<big>": np.full((1, 8), 1e300)}, tmp_path / "big.safetensors")
    code, _, err = run_cli(["info", path], capsys)
    assert_one_line_error(code, err, f"{path} holds values as large as 1e+300, past the float32 range")


def test_control_characters_in_a_message_reach_the_terminal_escaped(tmp_path, capsys):
    """An error or warning quoting another's words (a file's name, an image's Model hash, its TI hashes, a token) sent
    their escape sequences (ESC [2J clears the screen, ESC ]0; retitles the window) to the terminal as they were."""
    from zoodip.console import one_line_warning

    code, _, err = run_cli(["info", tmp_path / "a\x1b[2Jb\x9bc.safetensors"], capsys)
    assert_one_line_error(code, err, "a\\x1b[2Jb\\x9bc.safetensors does not exist")
    one_line_warning("the image was made with another model (Model hash \x1b]0;title\x07)", UserWarning, "f.py", 1)
    assert capsys.readouterr().err == "warning: the image was made with another model (Model hash \\x1b]0;title\\x07)\n"


@pytest.mark.parametrize("header_length", [0x17B, 0x5B, 0x7B20])  # low bytes '{', '[', and ' {' (a space, then '{')
def test_a_truncated_safetensors_file_is_not_taken_for_json(tmp_path, capsys, header_length):
    """A safetensors file cut short whose header length's first byte reads '{' or '[' (379, 91, 31520 bytes...) was
    said to be 'JSON or text, not a safetensors file: convert it', not the truncated download it is."""
    path = tmp_path / "emb.safetensors"
    path.write_bytes(header_length.to_bytes(8, "little") + b'{"emb_params": ' + b" " * 40)
    code, _, err = run_cli(["info", path], capsys)
    assert_one_line_error(code, err, f"{path} is not a valid safetensors file (header length {header_length} does not "
                                     f"fit the 63-byte file; truncated?)")


def test_info_on_a_run_folder_names_its_embedding(tmp_path, capsys):
    """'zoodip info RUN_FOLDER' said only that it reads no folder, though generate --embedding takes one."""
    from zoodip.embeddings import EMBEDDING_NAME

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / EMBEDDING_NAME).write_bytes(b"")
    code, _, err = run_cli(["info", tmp_path / "run"], capsys)
    assert_one_line_error(code, err, f"pass its embedding, {tmp_path / 'run' / EMBEDDING_NAME}")


def test_an_image_path_that_is_a_pipe_or_a_folder_is_said_as_what_it_is(tmp_path, capsys):
    """'zoodip info' of a named pipe called x.png said 'does not exist or is not a regular file': it exists."""
    os.mkfifo(tmp_path / "pipe.png")
    for name, needle in (("pipe.png", "pipe.png is neither a file nor a folder (a device, pipe or socket): pass an "
                                      "image"), ("gone.png", "gone.png does not exist: pass an image")):
        code, _, err = run_cli(["info", tmp_path / name], capsys)
        assert_one_line_error(code, err, needle)

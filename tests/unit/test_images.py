"""Photos of every kind come in as 8-bit RGB squares; unusable files get a one-line error."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from zoodip.errors import ZoodipError
from zoodip.images import image_grid, list_images, load_image, load_images, to_pil


def _save(tmp_path, name, image):
    path = tmp_path / name
    image.save(path)
    return path


def test_modes_become_rgb_in_range(tmp_path):
    rgb = Image.new("RGB", (80, 60), (255, 0, 0))
    gray = Image.new("L", (64, 64), 128)
    rgba = Image.new("RGBA", (64, 64), (0, 0, 255, 0))  # fully transparent -> white background
    deep = Image.fromarray(np.full((64, 64), 65535, np.uint16))  # 16-bit white
    palette = Image.new("P", (64, 64), 3)
    for name, image in [("a.png", rgb), ("b.png", gray), ("c.png", rgba), ("d.png", deep), ("e.png", palette)]:
        _save(tmp_path, name, image)
    names, arrays = load_images(tmp_path, 32)
    assert names == ["a.png", "b.png", "c.png", "d.png", "e.png"]
    assert arrays.shape == (5, 3, 32, 32) and arrays.dtype == np.float32
    assert arrays.min() >= -1.0 and arrays.max() <= 1.0
    np.testing.assert_allclose(arrays[0, :, 5, 5], [1.0, -1.0, -1.0], atol=1e-6)  # red
    np.testing.assert_allclose(arrays[1, :, 5, 5], 128 / 127.5 - 1, atol=1e-6)  # gray kept
    np.testing.assert_allclose(arrays[2, :, 5, 5], 1.0, atol=1e-6)  # transparent -> white
    np.testing.assert_allclose(arrays[3, :, 5, 5], 1.0, atol=1e-6)  # 16-bit white stays white, not clipped garbage


def test_center_crop_keeps_the_middle(tmp_path):
    image = Image.new("RGB", (300, 100), (0, 0, 0))
    image.paste((255, 255, 255), (100, 0, 200, 100))  # white middle square
    array = load_image(_save(tmp_path, "wide.png", image), 16)
    assert array.min() > 0.9  # only the white center survives the square crop


def test_exif_rotation_is_applied(tmp_path):
    image = Image.new("RGB", (100, 50), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 50, 50))  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif, quality=95)
    array = load_image(path, 50)
    # After rotation the white half is on top, so the square center crop is half white top / black bottom.
    assert array[:, 2, 25].mean() > 0.5 and array[:, -3, 25].mean() < -0.5


@pytest.mark.parametrize("case", ["missing", "empty", "only_text", "corrupt", "tiny", "nan_floats", "zero_bytes"])
def test_bad_inputs_give_one_line_errors(tmp_path, case):
    folder = tmp_path / "photos"
    if case != "missing":
        folder.mkdir()
    if case == "only_text":
        (folder / "notes.txt").write_text("hello")
    if case == "corrupt":
        (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    if case == "tiny":
        Image.new("RGB", (8, 8)).save(folder / "small.png")
    if case == "zero_bytes":  # (was Pillow's "cannot identify image file 'photos/z.png'", the path said twice)
        (folder / "z.png").write_bytes(b"")
    if case == "nan_floats":  # found by a sweep: NaN pixels were cast to a gray with only NumPy's warning
        Image.fromarray(np.full((64, 64), np.nan, np.float32), mode="F").save(folder / "n.tif")
    with pytest.raises(ZoodipError) as info:
        load_images(folder, 64)
    message = str(info.value)
    assert "\n" not in message
    expected = {"missing": "does not exist", "empty": "no images", "only_text": "no images",
                "corrupt": "broken.jpg", "tiny": "8x8", "nan_floats": "n.tif holds pixels that are no numbers",
                "zero_bytes": f"{folder / 'z.png'} is empty (0 bytes): remove it or replace it"}[case]
    assert expected in message


def test_huge_image_refused_without_decoding(tmp_path, monkeypatch):
    import zoodip.images as images

    monkeypatch.setattr(images, "MAX_PIXELS", 100 * 100)
    path = _save(tmp_path, "big.png", Image.new("RGB", (200, 200)))
    with pytest.raises(ZoodipError, match="too large"):
        load_image(path, 64)


def test_non_image_files_are_ignored_in_a_folder(tmp_path):
    Image.new("RGB", (64, 64)).save(tmp_path / "a.png")
    (tmp_path / "captions.json").write_text("{}")
    (tmp_path / ".DS_Store").write_bytes(b"\0")
    assert [p.name for p in list_images(tmp_path)] == ["a.png"]


def test_to_pil_and_grid_roundtrip():
    array = np.linspace(-1, 1, 3 * 8 * 8, dtype=np.float32).reshape(1, 3, 8, 8)
    image = to_pil(array)[0]
    assert image.size == (8, 8)
    back = np.asarray(image, np.float32).transpose(2, 0, 1) / 127.5 - 1
    np.testing.assert_allclose(back, array[0], atol=1 / 127.5)
    grid = image_grid([[image, image], [image]], pad=2)
    assert grid.size == (2 * 10 + 2, 2 * 10 + 2)


def test_what_looks_like_a_photo_but_is_skipped_is_named(tmp_path):
    """HEIC shots beside JPEGs, a broken link or a folder named x.png: the run would learn from fewer photos."""
    import os
    import warnings

    Image.new("RGB", (64, 64)).save(tmp_path / "a.png")
    (tmp_path / "IMG_0001.HEIC").write_bytes(b"\x00")
    (tmp_path / "dir.png").mkdir()
    (tmp_path / "gone.jpg").symlink_to(tmp_path / "missing.jpg")
    (tmp_path / "notes.txt").write_text("captions are not photos")  # nothing to say about these
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "pipe.png")  # would block a reader: skipped, not opened
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert list_images(tmp_path) == [tmp_path / "a.png"]
    messages = [str(w.message) for w in caught]
    assert messages[0] == ("skipped 1 photo(s) in formats zoodip does not read (IMG_0001.HEIC): convert them to "
                           "JPEG or PNG to use them")
    assert messages[1].startswith("skipped dir.png, gone.jpg") and "not a regular file" in messages[1]
    assert len(messages) == 2


def test_image_to_image_sizes_follow_the_image_unless_given() -> None:
    from zoodip.images import init_image_size

    assert init_image_size((4032, 3024), None, None, 512, 8) == (512, 384)  # a phone photo: the longer side 512
    assert init_image_size((300, 200), None, None, 512, 8) == (296, 200)  # never enlarged; rounded down to 8
    assert init_image_size((4032, 3024), None, 768, 512, 8) == (768, 576)  # one side given: the other follows
    assert init_image_size((4032, 3024), 256, None, 512, 8) == (336, 256)
    assert init_image_size((640, 480), 512, 512, 512, 8) == (512, 512)  # both given: resized to them (squashed)
    assert init_image_size((3, 5000), None, None, 512, 8) == (8, 512)  # a sliver keeps at least one multiple


def test_derived_sides_are_exact_not_a_float_just_short_of_a_multiple() -> None:
    """In floats 1003 * (512 / 1003) is 511.99999999999994: rounded down to 8 px it lost a whole step (504x376)."""
    from zoodip.images import init_image_size

    assert init_image_size((1003, 752), None, None, 512, 8) == (512, 376)
    assert init_image_size((4000, 3000), None, 576, 512, 8) == (576, 432)
    assert init_image_size((1280, 720), None, 896, 512, 8) == (896, 504)
    for long_side in range(513, 4000):  # every photo wider than the native side keeps the native side exactly
        assert init_image_size((long_side, 100), None, None, 512, 8)[0] == 512, long_side


def test_jpegs_other_names_are_read_and_photos_in_subfolders_are_named(tmp_path):
    """A browser's x.jfif was skipped without a word, and so were photos one folder down."""
    import warnings

    Image.new("RGB", (64, 64)).save(tmp_path / "a.png")
    Image.new("RGB", (64, 64), (200, 10, 10)).save(tmp_path / "b.jfif", format="JPEG")
    Image.new("RGB", (64, 64)).save(tmp_path / "c.jpe", format="JPEG")
    (tmp_path / "more").mkdir()
    Image.new("RGB", (64, 64)).save(tmp_path / "more" / "d.png")
    (tmp_path / "notes").mkdir()  # a folder without photos: nothing to say
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert list_images(tmp_path) == [tmp_path / "a.png", tmp_path / "b.jfif", tmp_path / "c.jpe"]
    assert [str(w.message) for w in caught] == ["skipped the photos in the subfolder(s) more: only the folder's own "
                                                "files are read; move them up to use them"]
    assert load_image(tmp_path / "b.jfif", 32)[0].mean() > 0.5  # read as the JPEG it is


def test_a_device_or_pipe_as_the_photo_folder_is_one_line(tmp_path):
    import os

    with pytest.raises(ZoodipError, match="is neither a folder nor a file"):
        list_images("/dev/null")
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "fifo")
        with pytest.raises(ZoodipError, match="is neither a folder nor a file"):
            list_images(tmp_path / "fifo")


def test_a_photo_name_that_is_not_utf8_is_hashed_by_its_bytes(tmp_path):
    """A name from a Windows zip (latin-1 bytes) raised UnicodeEncodeError while hashing the photos."""
    import os

    from zoodip.run_checks import sha256_of_files

    name = os.fsdecode(b"x\xff.png")
    Image.new("RGB", (64, 64)).save(tmp_path / name)
    assert len(sha256_of_files([tmp_path / name])) == 16


def test_a_damaged_exif_block_is_named_with_its_file(tmp_path):
    """Pillow's "Corrupt EXIF data" warning named neither the photo nor what to do."""
    import io
    import warnings

    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (90, 90, 90)).save(buffer, format="JPEG")
    data = buffer.getvalue()
    app1 = b"\xff\xe1\x00\x24" + b"Exif\x00\x00MM\x00*\x00\x00\xff\xff" + b"\x00" * 18  # an IFD that ends too soon
    (tmp_path / "bad.jpg").write_bytes(data[:2] + app1 + data[2:])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_image(tmp_path / "bad.jpg", 32)
    assert [str(w.message) for w in caught if "EXIF" in str(w.message)][0].startswith(
        f"{tmp_path / 'bad.jpg'}: its EXIF data is damaged")


def test_a_32_bit_image_keeps_its_gradient_and_a_pipe_is_not_opened(tmp_path):
    import os

    ramp = np.tile(np.linspace(0, 86000, 64).astype(np.int32), (64, 1))  # past 16 bits: was all white
    Image.fromarray(ramp, mode="I").save(tmp_path / "deep.tif")
    pixels = load_image(tmp_path / "deep.tif", 32)
    assert pixels[0, :, 0].mean() < -0.9 and pixels[0, :, -1].mean() > 0.9
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "pipe.png")  # would block the read for ever
        with pytest.raises(ZoodipError, match="is not a regular file"):
            load_image(tmp_path / "pipe.png", 32)


def test_a_photo_saved_twice_is_named(tmp_path):
    import shutil
    import warnings

    Image.new("RGB", (64, 64), (10, 20, 30)).save(tmp_path / "a.png")
    Image.new("RGB", (64, 64), (10, 20, 31)).save(tmp_path / "b.png")  # the same size, other bytes: fine
    shutil.copy(tmp_path / "a.png", tmp_path / "a copy.png")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert len(list_images(tmp_path)) == 3
    assert [str(w.message) for w in caught] == ["a.png (= a copy.png): the same file twice, which counts twice in "
                                                "training; remove the copy"]


def test_save_images_names_the_file_it_could_not_write_and_leaves_no_temp_file(tmp_path):
    from zoodip.images import save_images

    (tmp_path / "c.png").mkdir()
    (tmp_path / "c.png" / "x").write_text("in the way")
    image = Image.new("RGB", (8, 8))
    with pytest.raises(ZoodipError, match=r"cannot write the image file \S*c\.png"):
        save_images([(image, tmp_path / "a.png"), (image, tmp_path / "c.png")])
    assert sorted(p.name for p in tmp_path.iterdir()) in (["a.png", "c.png"], ["c.png"])  # no .tmp file left


def test_save_images_writes_its_other_files_in_the_same_all_or_none(tmp_path):
    """generate --save-latents: the latents were written after the images, so a full disk at the latents left new
    images beside old latents (and the reverse order would leave new latents beside old images)."""
    from zoodip.images import save_images

    image = Image.new("RGB", (8, 8), "red")
    (tmp_path / "old.npy").write_bytes(b"old latents")
    (tmp_path / "a.png").mkdir()  # the image cannot be written: the latents must stay the old ones
    (tmp_path / "a.png" / "x").write_text("in the way")
    also = [("--save-latents", tmp_path / "old.npy", lambda handle: handle.write(b"new latents"))]
    with pytest.raises(ZoodipError, match=r"cannot write the image file \S*a\.png"):
        save_images([(image, tmp_path / "a.png")], also=also)
    assert (tmp_path / "old.npy").read_bytes() == b"old latents"

    def no_space(handle):
        raise OSError(28, "No space left on device")
    with pytest.raises(ZoodipError, match=r"cannot write --save-latents \S*old\.npy \(the disk is full\): free space"):
        save_images([(image, tmp_path / "b.png")], also=[("--save-latents", tmp_path / "old.npy", no_space)])
    assert not (tmp_path / "b.png").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "old.npy"]  # no temp file left

    assert save_images([(image, tmp_path / "b.png")], also=also) == [tmp_path / "b.png"]
    assert (tmp_path / "old.npy").read_bytes() == b"new latents" and Image.open(tmp_path / "b.png").size == (8, 8)


def test_one_or_two_photos_are_said_three_are_not(tmp_path):
    import warnings

    for i in range(3):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            Image.new("RGB", (40, 40), (i * 80, 0, 0)).save(tmp_path / f"p{i}.png")
            load_images(tmp_path, 32)
            load_images([tmp_path / "p0.png"], 32)
        messages = [str(w.message) for w in caught]
        assert (messages[0].startswith(f"only {i + 1} photo") if i < 2 else len(messages) == 1), messages
        assert messages[-1].startswith("only 1 photo (p0.png): the word learns what the photos share")


def test_an_image_too_wide_for_its_format_is_refused_before_any_file(tmp_path):
    """A 33-image grid as .webp was Pillow's ValueError traceback (WebP's sides stop at 16383 px)."""
    from zoodip.images import check_encodable, grid_size, save_images

    assert grid_size(33, 1, (512, 64)) == (33 * 514 + 2, 68)
    with pytest.raises(ZoodipError, match=r"a \.webp image holds at most 16383 px a side, and this one is 16964x68"):
        check_encodable(tmp_path / "g.webp", grid_size(33, 1, (512, 64)))
    check_encodable(tmp_path / "g.png", (100_000, 8))  # PNG has no such limit
    with pytest.raises(ZoodipError, match="holds at most 16383 px"):
        save_images([(Image.new("RGB", (8, 8)), tmp_path / "a.webp"), (Image.new("RGB", (16384, 2)), tmp_path / "b.webp")])
    assert list(tmp_path.iterdir()) == []


def test_the_planned_size_follows_the_hires_fix_rounding_and_leaves_a_bad_scale_to_its_check():
    """The output's size check multiplied the sides by the scale unrounded (a WebP grid that fits was refused) and
    raised on a NaN scale (a traceback before the scale's own one line)."""
    from types import SimpleNamespace

    from zoodip.hires import planned_size

    model = SimpleNamespace(sample_size=8, vae_scale_factor=8, unet_halvings=3, unet_follows_skips=True)
    assert planned_size(model, 3640, 16, 1.5) == (5456, 24) and planned_size(model, None, None) == (64, 64)
    assert planned_size(model, 64, 64, float("nan")) is None and planned_size(model, 64, 64, float("inf")) is None
    with pytest.raises(ZoodipError, match="width must be a positive multiple of 8, got 1001"):
        planned_size(model, 1001, 64)


def test_the_out_file_is_renamed_into_place_last(tmp_path, monkeypatch):
    """A kill between the renames left a new --out beside old latents (they went last): --out now goes last, so a new
    --out says the whole set is new; one stopped before it leaves the --out that was there."""
    from pathlib import Path

    from zoodip.images import save_images

    for name in ("a.png", "a-1.png"):
        Image.new("RGB", (8, 8), "blue").save(tmp_path / name)
    (tmp_path / "a.npy").write_bytes(b"old latents")
    renames, replace = [], Path.replace

    def killed_at_the_last(self, target):
        if len(renames) == 2:
            raise KeyboardInterrupt  # as a kill between two renames, for what is there afterwards
        renames.append(Path(target).name)
        return replace(self, target)
    monkeypatch.setattr(Path, "replace", killed_at_the_last)
    red = Image.new("RGB", (8, 8), "red")
    with pytest.raises(KeyboardInterrupt):
        save_images([(red, tmp_path / "a-1.png"), (red, tmp_path / "a.png")],
                    also=[("--save-latents", tmp_path / "a.npy", lambda handle: handle.write(b"new latents"))])
    assert renames == ["a.npy", "a-1.png"]
    assert Image.open(tmp_path / "a.png").getpixel((0, 0)) == (0, 0, 255)  # the old --out: not a set yet
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-1.png", "a.npy", "a.png"]  # no temp file left


def test_images_reach_the_disk_before_they_are_renamed_into_place(tmp_path, monkeypatch):
    """Pillow wrote each image to its temp file and the rename followed at once, with no fsync of the file or the
    folder: a power cut could leave an empty PNG under the final name, where a checkpoint's write is synced."""
    import os

    from PIL import Image as PILImage

    from zoodip.images import save_images

    synced, real_fsync = [], os.fsync

    def record(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", record)
    out = tmp_path / "out.png"
    save_images([(PILImage.new("RGB", (8, 8)), out), (PILImage.new("RGB", (8, 8)), tmp_path / "b.webp")],
                texts=["a prompt", "a prompt"])
    assert any(".out.png.tmp-" in name for name in synced) and any(".b.webp.tmp-" in name for name in synced)
    assert str(tmp_path) in synced  # the folder, which holds the renames
    with PILImage.open(out) as image:
        assert image.info.get("parameters") == "a prompt" and out.stat().st_size > 0

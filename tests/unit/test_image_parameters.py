"""Reading an image's generation parameters from its own chunks and segments (zoodip.image_parameters)."""
from __future__ import annotations

import io
import struct
import zlib

import pytest
from PIL import Image, PngImagePlugin

from zoodip.errors import ZoodipError
from zoodip.image_parameters import exif_user_comment, read_parameters

TEXT = "a photo of <my-dog>\nNegative prompt: blurry\nSteps: 20, Seed: 7"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(*chunks: bytes, width: int = 4, height: int = 4) -> bytes:
    """A PNG whose chunks are given: IHDR (8-bit RGB) first, IEND last."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + b"".join(chunks) + _chunk(b"IEND", b"")


def _idat(width: int = 4, height: int = 4) -> bytes:
    return _chunk(b"IDAT", zlib.compress(b"".join(b"\0" + b"\x80" * 3 * width for _ in range(height))))


def test_a_text_chunk_after_the_pixels_is_read_as_one_before_them(tmp_path):
    after = tmp_path / "after.png"
    after.write_bytes(_png(_idat(), _chunk(b"tEXt", b"parameters\0" + TEXT.encode("latin-1"))))
    assert Image.open(after).size == (4, 4)  # a valid PNG
    assert read_parameters(after) == TEXT


@pytest.mark.parametrize("zip_", [False, True])
def test_compressed_and_international_text_as_pillow_writes_them(tmp_path, zip_):
    for text in (TEXT, "ünïcode ✓ " + TEXT):  # Latin-1 (tEXt, zTXt) and beyond it (iTXt)
        info = PngImagePlugin.PngInfo()
        info.add_text("parameters", text, zip=zip_)
        Image.new("RGB", (4, 4)).save(tmp_path / "p.png", pnginfo=info)
        assert read_parameters(tmp_path / "p.png") == text


def test_an_image_of_any_size_is_read_without_touching_pillows_pixel_limit(tmp_path, monkeypatch):
    huge = tmp_path / "huge.png"  # its header says 100000 x 100000; no pixel is ever read
    huge.write_bytes(_png(_chunk(b"tEXt", b"parameters\0" + TEXT.encode()), width=100_000, height=100_000))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    assert read_parameters(huge) == TEXT
    assert Image.MAX_IMAGE_PIXELS == 1000


def test_a_text_that_inflates_past_16_mb_is_refused_in_one_line(tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png(_chunk(b"zTXt", b"parameters\0\0" + zlib.compress(b"a" * (40 << 20), 9)), _idat()))
    with pytest.raises(ZoodipError, match="inflates past 16 MB") as caught:
        read_parameters(bomb)
    assert "\n" not in str(caught.value)


def _jpeg_with_exif(exif: bytes) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (9, 9, 9)).save(buffer, "JPEG", exif=exif)
    return buffer.getvalue()


def _little_endian_exif(comment: bytes) -> bytes:
    """EXIF in Intel byte order (as cameras and Windows write it), its UserComment typed UNDEFINED."""
    exif_ifd = 8 + 18
    return (b"Exif\0\0II\x2a\0" + struct.pack("<I", 8) + struct.pack("<HHHII", 1, 0x8769, 4, 1, exif_ifd)
            + struct.pack("<I", 0) + struct.pack("<HHHII", 1, 0x9286, 7, len(comment), exif_ifd + 18)
            + struct.pack("<I", 0) + comment)


@pytest.mark.parametrize("comment", [
    b"UNICODE\0" + TEXT.encode("utf-16-be"),  # A1111's (piexif's)
    b"UNICODE\0" + TEXT.encode("utf-16-le"),  # a writer that follows the TIFF's byte order
    b"UNICODE\0" + "\ufeff".encode("utf-16-le") + TEXT.encode("utf-16-le"),  # with a byte-order mark
    b"ASCII\0\0\0" + TEXT.encode("ascii"),
])
def test_exif_comments_in_either_byte_order(tmp_path, comment):
    for name, exif in (("be.jpg", exif_user_comment(comment)), ("le.jpg", _little_endian_exif(comment))):
        (tmp_path / name).write_bytes(_jpeg_with_exif(exif))
        assert read_parameters(tmp_path / name) == TEXT


def test_images_without_parameters_and_damaged_files(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "plain.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "plain.jpg")
    Image.new("RGB", (8, 8)).save(tmp_path / "plain.webp")
    Image.new("RGB", (8, 8)).save(tmp_path / "plain.bmp")
    for name in ("plain.png", "plain.jpg", "plain.webp", "plain.bmp"):
        assert read_parameters(tmp_path / name) is None
    good = _jpeg_with_exif(exif_user_comment(b"UNICODE\0" + TEXT.encode("utf-16-be")))
    for name, data in (("cut.jpg", good[:30]), ("noise.png", b"\x89PNG\r\n\x1a\n" + b"\xff" * 64),
                       ("text.png", b"not an image at all"), ("empty.jpg", b"")):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ZoodipError, match="cannot read image") as caught:
            read_parameters(tmp_path / name)
        assert "\n" not in str(caught.value)
    cut = tmp_path / "cut.png"  # cut short after its parameters: they are read
    cut.write_bytes(_png(_chunk(b"tEXt", b"parameters\0" + TEXT.encode()), _idat())[:-20])
    assert read_parameters(cut) == TEXT


def test_a_comment_of_characters_whose_low_byte_is_zero_is_read_in_its_byte_order(tmp_path):
    text = "一" * 300 + "\nSteps: 20"  # U+4E00: its zero byte falls where little-endian Latin text has its zeros
    for order, exif in (("be", exif_user_comment(b"UNICODE\0" + text.encode("utf-16-be"))),
                        ("le", _little_endian_exif(b"UNICODE\0" + text.encode("utf-16-le")))):
        (tmp_path / f"{order}.jpg").write_bytes(_jpeg_with_exif(exif))
        assert read_parameters(tmp_path / f"{order}.jpg") == text


def test_pngs_read_as_pillow_and_so_a1111_reads_them(tmp_path):
    def text_chunk(value: bytes) -> bytes:
        return _chunk(b"tEXt", b"parameters\0" + value)

    cases = {
        "two.png": (_png(text_chunk(b"FIRST"), text_chunk(b"SECOND"), _idat()), "SECOND"),  # the last before the pixels
        "around.png": (_png(text_chunk(b"BEFORE"), _idat(), text_chunk(b"AFTER")), "BEFORE"),
        "empty.png": (_png(text_chunk(b""), _idat()), None),
        "exif.png": (_png(_chunk(b"eXIf", exif_user_comment(b"UNICODE\0" + TEXT.encode("utf-16-be"))[6:]), _idat()),
                     TEXT),
    }
    for name, (data, expected) in cases.items():
        (tmp_path / name).write_bytes(data)
        assert read_parameters(tmp_path / name) == expected, name


@pytest.mark.parametrize("chunks, words", [
    ([_chunk(b"zTXt", b"parameters\0\0" + zlib.compress(TEXT.encode())[:-6])], "cut short"),
    ([_chunk(b"zTXt", b"parameters\0\1" + zlib.compress(TEXT.encode()))], "unknown compression method"),
    ([_chunk(b"tEXt", b"parameters\0" + b"a" * ((16 << 20) + 1))], "past the 16 MB"),
])
def test_text_chunks_that_cannot_be_read_whole_are_said(tmp_path, chunks, words):
    (tmp_path / "x.png").write_bytes(_png(*chunks, _idat()))
    with pytest.raises(ZoodipError, match=words):
        read_parameters(tmp_path / "x.png")


def test_damaged_jpegs_webps_and_tiffs(tmp_path):
    import time

    (tmp_path / "fill.jpg").write_bytes(b"\xff\xd8" + b"\xff" * (8 << 20))  # fill bytes to the end: read in blocks
    started = time.perf_counter()
    with pytest.raises(ZoodipError, match="damaged or cut short"):
        read_parameters(tmp_path / "fill.jpg")
    assert time.perf_counter() - started < 1.0
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, "WEBP", exif=exif_user_comment(b"ASCII\0\0\0" + b"x"))
    (tmp_path / "cut.webp").write_bytes(buffer.getvalue()[:20])
    with pytest.raises(ZoodipError, match="cut short"):
        read_parameters(tmp_path / "cut.webp")
    undefined = exif_user_comment(b"\0" * 8 + TEXT.encode())  # an undefined character code: UTF-8, as A1111 reads it
    Image.new("RGB", (8, 8)).save(tmp_path / "u.tiff", exif=undefined)
    assert read_parameters(tmp_path / "u.tiff") == TEXT


def test_a_gifs_comment_is_read_as_a1111_reads_it(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "c.gif", comment=TEXT.encode())
    assert read_parameters(tmp_path / "c.gif") == TEXT


def test_a_damaged_exif_is_said_in_one_line_not_in_pillows_warnings(tmp_path):
    """Found by a sweep: Pillow's "Corrupt EXIF data" came out as a line of its own, then "holds no parameters"."""
    import warnings

    buffer = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buffer, "JPEG")
    ifd = b"Exif\0\0MM\0\x2a" + struct.pack(">I", 8) + struct.pack(">HHHII", 1, 0x8769, 4, 1, 60000) + b"\0" * 4
    app1 = b"\xff\xe1" + struct.pack(">H", len(ifd) + 2) + ifd  # the EXIF sub-IFD points past the segment
    (tmp_path / "bad.jpg").write_bytes(buffer.getvalue()[:2] + app1 + buffer.getvalue()[2:])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ZoodipError, match=r"bad.jpg \(its EXIF data is damaged: Corrupt EXIF data\. Expecting"):
            read_parameters(tmp_path / "bad.jpg")
    assert caught == []


@pytest.mark.parametrize("fields, said", [({"Model hash": "6ce0161689"}, "(Model hash 6ce0161689; "),
                                          ({"Model hash": "6ce0161689", "Model": "v1-5"}, "(Model hash 6ce0161689, v1-5; ")])
def test_another_models_note_names_the_model_only_where_the_image_does(fields, said):
    """An A1111 image without a "Model" field was said to be made with 'Model hash 6ce0161689, ?'."""
    from types import SimpleNamespace

    from zoodip.from_parameters import ImageParameters, parameter_notes

    model = SimpleNamespace(manifest={}, identity="f" * 64)
    notes = parameter_notes(ImageParameters("p", "", {}, {}, [], fields), model, {}, image_given=False,
                            mask_given=False, latents_given=False)
    assert [note for note in notes if said in note], notes

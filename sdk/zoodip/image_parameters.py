"""An image's generation parameters where A1111 keeps them: a PNG's ``parameters`` text; a JPEG's or WebP's EXIF
UserComment (in the EXIF sub-IFD), UTF-16 text after EXIF's 8-byte "UNICODE" character code.

Written through Pillow's save options (``parameters_option``); read from the file's own chunks and segments
(``read_parameters``), without opening the image: no pixel limit to lift (Pillow's is process-wide, and a server
reads many images at once), text chunks found after the pixel data too, and an image of any size read in a few
kilobytes. The EXIF block itself is parsed by Pillow (``Image.Exif``), which reads no pixels.
"""
from __future__ import annotations

import struct
import warnings
import zlib
from pathlib import Path
from typing import Any, BinaryIO

from PIL import Image, PngImagePlugin, TiffImagePlugin, UnidentifiedImageError

from .errors import Given, ZoodipError
from .paths import why_missing

PARAMETERS_KEY = "parameters"
_EXIF_IFD, _USER_COMMENT = 0x8769, 0x9286
_TIFF_LONG, _TIFF_UNDEFINED = 4, 7  # TIFF field types
_JPEG_SEGMENT = 65533  # the most bytes a JPEG's EXIF segment holds
_UNICODE, _ASCII = b"UNICODE\0", b"ASCII\0\0\0"  # EXIF's character codes
MAX_TEXT = 16 << 20  # a parameters text past this is not one
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def parameters_option(path: Path, text: str) -> dict[str, Any]:
    """Pillow's save option that writes ``text`` where A1111 would for ``path``'s format."""
    if path.suffix.lower() == ".png":
        info = PngImagePlugin.PngInfo()
        info.add_text(PARAMETERS_KEY, text)  # Latin-1 text, or UTF-8 international text where it must, as A1111's
        return {"pnginfo": info}
    exif = exif_user_comment(_UNICODE + text.encode("utf-16-be"))
    if len(exif) > _JPEG_SEGMENT and path.suffix.lower() in (".jpg", ".jpeg"):
        warnings.warn(f"the generation parameters ({len(text)} characters) do not fit a JPEG's EXIF (64 KB): {path} is "
                      "written without them; save a .png to keep them", stacklevel=4)
        return {}
    return {"exif": exif}


def exif_user_comment(comment: bytes) -> bytes:
    """EXIF data holding only ``comment`` as the UserComment, typed UNDEFINED as EXIF says (Pillow's own writer types
    it BYTE, which piexif, and so A1111, reads back as numbers): a big-endian TIFF header, IFD0 with one entry, the
    EXIF sub-IFD's offset, and that sub-IFD with one entry pointing at the comment's bytes after it."""
    exif_ifd = 8 + 18  # after the 8-byte header and IFD0 (an entry count, one 12-byte entry, the next-IFD offset)
    data = exif_ifd + 18
    return (b"Exif\0\0MM\0\x2a" + struct.pack(">I", 8)
            + struct.pack(">HHHII", 1, _EXIF_IFD, _TIFF_LONG, 1, exif_ifd) + struct.pack(">I", 0)
            + struct.pack(">HHHII", 1, _USER_COMMENT, _TIFF_UNDEFINED, len(comment), data) + struct.pack(">I", 0)
            + comment)


def read_parameters(path: str | Path) -> str | None:
    """An image's generation parameters (a PNG's ``parameters`` text, else its EXIF comment; a JPEG's, WebP's or TIFF's
    EXIF comment; None: it has none), or one line for what is not an image that can be read."""
    if not Path(path).is_file():  # a pipe would block the read for ever
        raise ZoodipError(Given(path), f" {why_missing(path)}: pass an image zoodip or A1111 wrote")
    with warnings.catch_warnings(record=True) as caught:  # Pillow's words on EXIF: not lines of their own
        warnings.simplefilter("always")
        text = _read_text(path)
    damaged = [str(w.message).strip() for w in caught if str(w.message).startswith(_PILLOW_DAMAGED)]
    if text is None and damaged:  # its parameters may have been there
        raise ZoodipError(f"cannot read image {path} (its EXIF data is damaged: {damaged[0].splitlines()[0]}): pass an "
                          "image zoodip or A1111 wrote")
    return text


# Pillow's warnings on an EXIF cut short or pointing past its end
_PILLOW_DAMAGED = ("Corrupt EXIF data", "Tag data larger than file", "Truncated File Read")


def _read_text(path: str | Path) -> str | None:
    """``read_parameters``' reading, by the file's format."""
    try:
        with open(path, "rb") as file:
            head = file.read(12)
            file.seek(0)
            if head.startswith(PNG_SIGNATURE):
                text = _png_parameters(file)
            elif head.startswith(b"\xff\xd8"):
                text = _comment(_jpeg_exif(file))
            elif head[:4] == b"RIFF" and head[8:12] == b"WEBP":
                text = _comment(_webp_exif(file))
            elif head[:4] in (b"II*\0", b"MM\0*"):  # TIFF: its own plugin, which reads the header and no pixel
                with TiffImagePlugin.TiffImageFile(file) as image:
                    text = _comment(image.getexif())
            else:
                with Image.open(file) as image:  # another format Pillow reads (GIF, BMP, ...): its EXIF, if any
                    comment = image.info.get("comment")  # a GIF's comment, which A1111 reads too
                    text = _comment(image.getexif()) or (comment.decode("utf-8", errors="replace")
                                                         if isinstance(comment, bytes) else None)
    except (ZoodipError, _TooLarge) as exc:
        raise ZoodipError(f"cannot read image {path}: {exc}") from None
    except UnidentifiedImageError:  # (its message names the file object: "<_io.BufferedReader name=...>")
        raise ZoodipError(f"cannot read image {path} (not an image format Pillow reads): pass an image zoodip or A1111 "
                          "wrote") from None
    except Exception as exc:  # damaged chunks, EXIF or files of every kind
        reason = _DAMAGED if isinstance(exc, (IndexError, struct.error, EOFError)) or not str(exc) else str(exc)
        raise ZoodipError(f"cannot read image {path} ({reason.splitlines()[0]}): pass an image zoodip or A1111 "
                          "wrote") from None
    return text or None


_DAMAGED = "its chunks or segments are damaged or cut short"
_MAX_PARTS = 100_000  # chunks or segments walked before the text: far more than any image holds there


class _TooLarge(ValueError):
    """A parameters text past ``MAX_TEXT``."""


def _png_parameters(file: BinaryIO) -> str | None:
    """The ``parameters`` text (tEXt, zTXt or iTXt): the last one before the pixel data, as Pillow and so A1111 read
    it, else one after it; else the eXIf chunk's comment."""
    size = file.seek(0, 2)
    file.seek(len(PNG_SIGNATURE))
    before, after, exif, seen_pixels = None, None, None, False
    for _ in range(_MAX_PARTS):
        header = file.read(8)
        if len(header) < 8:
            raise ValueError("the PNG ends before its last chunk: cut short")
        length, kind = struct.unpack(">I4s", header)
        if kind == b"IDAT" and before is not None:
            return before  # what Pillow, and so A1111, reads: the file's later chunks are not needed
        if not kind.isalpha() or file.tell() + length + 4 > size or (kind == b"IHDR") != (file.tell() == 16):
            raise ValueError(_DAMAGED)
        if kind == b"IEND":
            text = before if before is not None else after
            return text if text is not None else _comment(exif)
        if kind in (b"tEXt", b"zTXt", b"iTXt", b"eXIf") and length > MAX_TEXT:
            raise _TooLarge(f"a text chunk of {length} bytes, past the {MAX_TEXT >> 20} MB a parameters text may hold")
        if kind in (b"tEXt", b"zTXt", b"iTXt"):
            keyword, _, body = file.read(length).partition(b"\0")
            if keyword == PARAMETERS_KEY.encode():
                text = _png_text(kind, body)
                before, after = (before, text) if seen_pixels else (text, after)
        elif kind == b"eXIf":
            exif = file.read(length)
        else:
            seen_pixels = seen_pixels or kind == b"IDAT"
            file.seek(length, 1)
        file.seek(4, 1)  # the chunk's CRC
    raise ValueError(f"more than {_MAX_PARTS} chunks: {_DAMAGED}")


def _png_text(kind: bytes, body: bytes) -> str:
    if kind == b"tEXt":
        return body.decode("latin-1")
    if kind == b"zTXt":  # a compression method byte (0: zlib), then the stream
        if body[:1] != b"\0":
            raise ValueError("a compressed text chunk of an unknown compression method")
        return _inflated(body[1:]).decode("latin-1")
    compressed, method, body = body[:1] == b"\1", body[1:2], body[2:]  # iTXt: flags, language, translated keyword
    parts = body.split(b"\0", 2)
    if len(parts) < 3 or (compressed and method != b"\0"):
        raise ValueError(f"an international text chunk: {_DAMAGED}")
    return (_inflated(parts[2]) if compressed else parts[2]).decode("utf-8", errors="replace")


def _inflated(data: bytes) -> bytes:
    """zlib's data, refused past ``MAX_TEXT`` (a small chunk can inflate to gigabytes) or cut short."""
    inflater = zlib.decompressobj()
    text = inflater.decompress(data, MAX_TEXT)
    if inflater.unconsumed_tail:
        raise _TooLarge(f"a compressed text chunk inflates past {MAX_TEXT >> 20} MB")
    if not inflater.eof:
        raise ValueError("a compressed text chunk is cut short")
    return text


def _jpeg_exif(file: BinaryIO) -> bytes | None:
    """The APP1 segment that holds EXIF (before the image data, where JPEG keeps it)."""
    file.seek(2)
    for _ in range(_MAX_PARTS):
        marker = file.read(2)
        if len(marker) < 2 or marker[0] != 0xFF:
            break
        if marker[1] == 0xFF:  # fill bytes: skipped a block at a time
            file.seek(-1, 1)
            fill = file.read(1 << 16).lstrip(b"\xff")
            if not fill:
                break
            file.seek(-len(fill), 1)
            continue
        if marker[1] in (0xDA, 0xD9):  # the scan's data, or the end: no EXIF before it
            return None
        if 0xD0 <= marker[1] <= 0xD7 or marker[1] == 0x01:  # markers without a length
            continue
        length = struct.unpack(">H", file.read(2))[0]
        segment = file.read(max(length - 2, 0))
        if len(segment) != length - 2:
            break
        if marker[1] == 0xE1 and segment.startswith(b"Exif\0\0"):
            return segment
    raise ValueError("the JPEG's segments are damaged or cut short")


def _webp_exif(file: BinaryIO) -> bytes | None:
    """The RIFF container's EXIF chunk."""
    size = file.seek(0, 2)
    file.seek(4)
    if struct.unpack("<I", file.read(4))[0] + 8 > size:
        raise ValueError("the WebP is cut short")
    file.seek(12)
    for _ in range(_MAX_PARTS):
        header = file.read(8)
        if len(header) < 8:
            return None
        kind, length = header[:4], struct.unpack("<I", header[4:])[0]
        if kind == b"EXIF":
            if len(data := file.read(length)) != length:
                raise ValueError("the WebP's EXIF chunk is cut short")
            return data
        file.seek(length + (length & 1), 1)  # chunks are padded to an even length
    raise ValueError(f"more than {_MAX_PARTS} chunks: {_DAMAGED}")


def _comment(exif: bytes | Image.Exif | None) -> str | None:
    """The EXIF UserComment's text (UNICODE, ASCII or, as A1111 reads it, undefined-coded UTF-8), else None."""
    if exif is None:
        return None
    if isinstance(exif, bytes):
        parsed = Image.Exif()
        parsed.load(exif if exif.startswith(b"Exif\0\0") else b"Exif\0\0" + exif)
        exif = parsed
    comment = exif.get_ifd(_EXIF_IFD).get(_USER_COMMENT)
    comment = bytes(comment) if isinstance(comment, tuple) else comment  # typed BYTE by another writer
    if not isinstance(comment, bytes) or len(comment) < 8:
        return None
    code, body = comment[:8], comment[8:]
    if code == _UNICODE:
        text = _utf16(body, getattr(exif, "endian", ">"))
    else:
        text = body.decode("ascii" if code == _ASCII else "utf-8", errors="replace" if code == _ASCII else "ignore")
    return text.lstrip("\ufeff").rstrip("\0") or None


def _utf16(body: bytes, endian: str) -> str:
    """UTF-16 in the byte order a byte-order mark gives; else the one whose text reads as A1111's (its "Steps: "
    field), else the one that decodes, trying big-endian first (A1111's and zoodip's) unless the TIFF is
    little-endian (a writer that follows it)."""
    if body[:2] in (b"\xfe\xff", b"\xff\xfe"):
        return body.decode("utf-16-be" if body[:2] == b"\xfe\xff" else "utf-16-le", errors="replace")
    orders = ("utf-16-le", "utf-16-be") if endian == "<" else ("utf-16-be", "utf-16-le")
    texts = [body.decode(order, errors="replace") for order in orders]
    for test in (lambda text: "Steps: " in text, lambda text: "\ufffd" not in text):
        for text in texts:
            if test(text):
                return text
    return texts[0]

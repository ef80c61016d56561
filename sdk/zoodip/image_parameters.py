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

from PIL import Image, PngImagePlugin

from .errors import ZoodipError

PARAMETERS_KEY = "parameters"
_EXIF_IFD, _USER_COMMENT = 0x8769, 0x9286
_TIFF_LONG, _TIFF_UNDEFINED = 4, 7  # TIFF field types
_JPEG_SEGMENT = 65533  # the most bytes a JPEG's EXIF segment holds
_UNICODE, _ASCII = b"UNICODE\0", b"ASCII\0\0\0"  # EXIF's character codes
_MAX_TEXT = 1 << 20  # a parameters text past this is not one (Pillow's limit on a PNG text chunk, too)
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


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
    """An image's generation parameters (a PNG's ``parameters`` text, a JPEG's or WebP's EXIF comment; None: it has
    none), or one line for what is not an image that can be read."""
    if not Path(path).is_file():  # a pipe would block the read for ever
        raise ZoodipError(f"{path} does not exist or is not a regular file: pass an image zoodip or A1111 wrote")
    try:
        with open(path, "rb") as file:
            head = file.read(12)
            file.seek(0)
            if head.startswith(_PNG_SIGNATURE):
                return _png_parameters(file)
            if head.startswith(b"\xff\xd8"):
                return _comment(_jpeg_exif(file))
            if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
                return _comment(_webp_exif(file))
        with Image.open(path) as image:  # another format Pillow reads (TIFF, ...): its EXIF, if it has one
            return _comment(image.getexif())
    except ZoodipError:
        raise
    except Exception as exc:  # damaged chunks, EXIF or files of every kind
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ZoodipError(f"cannot read image {path} ({reason}): pass an image zoodip or A1111 wrote") from None


def _png_parameters(file: BinaryIO) -> str | None:
    """The first ``parameters`` text chunk (tEXt, zTXt or iTXt), before or after the pixel data."""
    file.seek(len(_PNG_SIGNATURE))
    size = file.seek(0, 2)
    file.seek(len(_PNG_SIGNATURE))
    while len(header := file.read(8)) == 8:
        length, kind = struct.unpack(">I4s", header)
        if not kind.isalpha() or file.tell() + length + 4 > size or (kind == b"IHDR") != (file.tell() == 16):
            raise ValueError("damaged PNG chunks")
        if kind in (b"tEXt", b"zTXt", b"iTXt") and length <= _MAX_TEXT:
            keyword, _, body = file.read(length).partition(b"\0")
            if keyword == PARAMETERS_KEY.encode():
                return _png_text(kind, body)
        elif kind == b"IEND":
            return None
        else:
            file.seek(length, 1)
        file.seek(4, 1)  # the chunk's CRC
    raise ValueError("the PNG ends before its last chunk: cut short")


def _png_text(kind: bytes, body: bytes) -> str:
    if kind == b"tEXt":
        return body.decode("latin-1")
    if kind == b"zTXt":  # a compression method byte, then zlib
        return _inflated(body[1:]).decode("latin-1")
    compressed, body = body[0], body[2:]  # iTXt: flag, method, language and translated keyword, then UTF-8
    text = body.split(b"\0", 2)[-1]
    return (_inflated(text) if compressed else text).decode("utf-8", errors="replace")


def _inflated(data: bytes) -> bytes:
    """zlib's data, refused past ``_MAX_TEXT`` (a small chunk can inflate to gigabytes)."""
    inflater = zlib.decompressobj()
    text = inflater.decompress(data, _MAX_TEXT)
    if inflater.unconsumed_tail:
        raise ValueError("a compressed text chunk inflates past 1 MB")
    return text


def _jpeg_exif(file: BinaryIO) -> bytes | None:
    """The APP1 segment that holds EXIF (before the image data, where JPEG keeps it)."""
    file.seek(2)
    while (marker := file.read(2)) and marker[0] == 0xFF:
        while marker[1] == 0xFF:  # fill bytes
            marker = marker[1:] + file.read(1)
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
    file.seek(12)
    while len(header := file.read(8)) == 8:
        kind, length = header[:4], struct.unpack("<I", header[4:])[0]
        if kind == b"EXIF":
            if len(data := file.read(length)) != length:
                raise ValueError("the WebP's EXIF chunk is cut short")
            return data
        file.seek(length + (length & 1), 1)  # chunks are padded to an even length
    return None


def _comment(exif: bytes | Image.Exif | None) -> str | None:
    """The EXIF UserComment's text (UNICODE or ASCII coded), else None."""
    if exif is None:
        return None
    if isinstance(exif, bytes):
        parsed = Image.Exif()
        parsed.load(exif if exif.startswith(b"Exif\0\0") else b"Exif\0\0" + exif)
        exif = parsed
    comment = exif.get_ifd(_EXIF_IFD).get(_USER_COMMENT)
    comment = bytes(comment) if isinstance(comment, tuple) else comment  # typed BYTE by another writer
    if not isinstance(comment, bytes) or comment[:8] not in (_UNICODE, _ASCII):
        return None
    body = comment[8:]
    encoding = "ascii" if comment[:8] == _ASCII else _utf16_order(body, getattr(exif, "endian", ">"))
    return body.decode(encoding, errors="replace").lstrip("\ufeff").rstrip("\0") or None


def _utf16_order(body: bytes, endian: str) -> str:
    """UTF-16's byte order: a byte-order mark's; else where the zero bytes of Latin text fall (A1111's is big-endian;
    writers that follow the TIFF's byte order write little-endian); else the TIFF's."""
    if body[:2] in (b"\xfe\xff", b"\xff\xfe"):
        return "utf-16-be" if body[:2] == b"\xfe\xff" else "utf-16-le"
    high_first, high_last = body[0::2].count(0), body[1::2].count(0)
    if high_first != high_last:
        return "utf-16-be" if high_first > high_last else "utf-16-le"
    return "utf-16-le" if endian == "<" else "utf-16-be"

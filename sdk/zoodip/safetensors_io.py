"""A small, dependency-free reader and writer of the safetensors format.

The format (https://github.com/huggingface/safetensors) is simple enough to handle with the
standard library and NumPy, which keeps the runtime free of torch and of native wheels that may
not exist for a phone:

    [8 bytes]  N, the header length, unsigned little-endian
    [N bytes]  JSON: {"name": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}, ...,
                      "__metadata__": {"str": "str"}}   (optional; string values only)
    [rest]     the tensors' bytes, little-endian, C order; offsets are relative to this buffer

Files we write are read by the official ``safetensors`` package and vice versa: the header is
padded with spaces to a multiple of 8 bytes and the tensors tile the buffer without gaps, which is
what the reference implementation checks.
"""
from __future__ import annotations

import codecs
import json
import math
import os
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Mapping

import numpy as np

from .errors import Given, ZoodipError
from .image_parameters import PNG_SIGNATURE
from .paths import atomic_write_bytes
from .json_text import parse_json
from .latents_file import NPY_MAGIC

# safetensors dtype name -> little-endian NumPy dtype. BF16 has no NumPy dtype; it is read as
# float32 (exactly: bfloat16 is the top half of a float32) and is never written.
_READ_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
# Keyed by (kind, itemsize) so that either byte order of an input array is accepted.
_WRITE_DTYPES: dict[tuple[str, int], str] = {
    ("f", 8): "F64",
    ("f", 4): "F32",
    ("f", 2): "F16",
    ("i", 8): "I64",
    ("i", 4): "I32",
    ("i", 2): "I16",
    ("i", 1): "I8",
    ("u", 1): "U8",
    ("b", 1): "BOOL",
}
# The reference implementation refuses headers above 100 MB; so do we, before allocating.
_MAX_HEADER_BYTES = 100_000_000
_METADATA_KEY = "__metadata__"


def save_file(
    tensors: Mapping[str, np.ndarray], path: str | os.PathLike[str], metadata: Mapping[str, str] | None = None,
    *, then: str = "try again",
) -> Path:
    """Write ``tensors`` to ``path`` in safetensors format, atomically.

    The bytes go to a temporary file in the same folder, which is flushed to disk and then renamed
    over ``path``: a crash or a full disk leaves either the old file or the new one, never half of
    one (important on phones, where the app can be killed at any time).
    """
    path = Path(path)
    header: dict[str, object] = {}
    if metadata:
        bad = [k for k, v in metadata.items() if not isinstance(k, str) or not isinstance(v, str)]
        if bad:
            raise ZoodipError(f"safetensors metadata must map strings to strings; bad entries: {bad[:3]}")
        header[_METADATA_KEY] = dict(metadata)

    chunks: list[bytes] = []
    offset = 0
    for name in sorted(tensors):
        if not isinstance(name, str) or name == _METADATA_KEY:
            raise ZoodipError(f"invalid tensor name {name!r} for a safetensors file: use a plain string")
        array = np.asarray(tensors[name])
        code = _WRITE_DTYPES.get((array.dtype.kind, array.dtype.itemsize))
        if code is None:
            raise ZoodipError(
                f"tensor {name!r} has dtype {array.dtype}, which these safetensors files cannot hold: "
                "convert it to float32/float16/float64, int8/16/32/64, uint8 or bool"
            )
        data = np.ascontiguousarray(array, dtype=_READ_DTYPES[code]).tobytes()
        header[name] = {"dtype": code, "shape": [int(d) for d in array.shape], "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)

    header_bytes = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    # Pad so the data buffer starts 8-byte aligned (lets readers map tensors in place).
    header_bytes += b" " * (-len(header_bytes) % 8)

    def write(handle: BinaryIO) -> None:
        handle.write(len(header_bytes).to_bytes(8, "little"))
        handle.write(header_bytes)
        for chunk in chunks:
            handle.write(chunk)

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, write, then)  # (``then``: what the user does after a failed write)
    return path


def load_file(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Read every tensor of a safetensors file as a writable NumPy array (BF16 becomes float32)."""
    return read_file(path)[0]


def load_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file ({} when it has none); reads the header only."""
    return read_file(path, select=lambda header: [])[1]


def read_file(path: str | os.PathLike[str], select: Callable[[dict[str, dict]], Iterable[str]] | None = None,
              ) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Tensors and metadata of a safetensors file; any malformation is a ``ZoodipError``.

    The header is read and checked first; ``select(header)`` (tensor name -> {dtype, shape,
    data_offsets}) may then name the tensors to read, or raise to refuse the file, so a multi-GB
    file that is not what the caller wants is refused after reading a few kB, not all of it.
    """
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            header, metadata, data_start = _read_header(handle, size, path)
            names = list(header) if select is None else list(select(header))
            tensors = {}
            for name in names:
                begin, end = header[name]["data_offsets"]
                handle.seek(data_start + begin)
                tensors[name] = _to_array(handle.read(end - begin), header[name])
    except FileNotFoundError:
        raise ZoodipError(Given(path), " does not exist: check the path") from None
    except IsADirectoryError:
        raise ZoodipError(f"{path} is a folder, not a safetensors file: name the file") from None
    except OSError as exc:
        raise ZoodipError("cannot read ", Given(path), f" ({exc.strerror or exc}): check the path and permissions") from None
    return tensors, metadata


def _bad(path: Path, reason: str) -> ZoodipError:
    return ZoodipError(f"{path} is not a valid safetensors file ({reason}): re-download or re-save it")


# Other formats a file given for a safetensors one often is (by its first bytes): said as such, since "truncated?
# re-download it" would send the user after a download that is fine.
# (Pickles, torch.save's zip ones too, are told apart before: embeddings.py refuses them with the converter's name.)
_FOREIGN_MAGIC = ((NPY_MAGIC, "a NumPy array file (.npy)"), (PNG_SIGNATURE, "a PNG image"),
                  (b"\xff\xd8\xff", "a JPEG image"))


def _foreign(path: Path, first: bytes) -> ZoodipError | None:
    """The error for a file of another format, or None where its first bytes name none."""
    kind = next((name for magic, name in _FOREIGN_MAGIC if first.startswith(magic)), None)
    if kind is None and _reads_as_text(first):  # (a .txt, notes, JSON: not a download cut short)
        kind = "JSON or text"
    if kind is None:
        return None
    return ZoodipError(f"{path} is {kind}, not a safetensors file: convert it to safetensors, or pass the right file")


def _reads_as_text(first: bytes) -> bool:
    """Whether a file's first bytes are UTF-8 text (a character cut at their end allowed). Text has no NUL byte where a
    real header length (cut short: 379 bytes reads '{' first) has its zero high bytes."""
    try:
        text = codecs.getincrementaldecoder("utf-8")().decode(first).removeprefix("\ufeff")
    except UnicodeDecodeError:
        return False
    return b"\x00" not in first and all(ch.isprintable() or ch in "\t\r\n" for ch in text)


def _read_header(handle: BinaryIO, size: int, path: Path) -> tuple[dict[str, dict], dict[str, str], int]:
    """The checked header entries, the metadata and where the data buffer starts."""
    first = handle.read(8)
    if size < 8:  # ('{}' or '[1]' saved under the embedding's name is JSON too, not a cut download)
        raise _foreign(path, first) or _bad(path, "shorter than its 8-byte header length")
    header_len = int.from_bytes(first, "little")
    if header_len > _MAX_HEADER_BYTES or 8 + header_len > size:
        raise _foreign(path, first) or _bad(path, f"header length {header_len} does not fit the {size}-byte file; truncated?")
    try:
        header = parse_json(handle.read(header_len).decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise _bad(path, "header is not JSON") from None
    if not isinstance(header, dict):
        raise _bad(path, "header is not a JSON object")

    metadata = header.pop(_METADATA_KEY, None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise _bad(path, "__metadata__ is not a string-to-string map")

    data_len = size - 8 - header_len
    for name, info in header.items():
        if not isinstance(info, dict):
            raise _bad(path, f"entry {name!r} is not an object")
        code, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if code not in _READ_DTYPES:
            raise _bad(path, f"tensor {name!r} has unsupported dtype {code!r}")
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise _bad(path, f"tensor {name!r} has an invalid shape {shape!r}")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= data_len
        ):
            raise _bad(path, f"tensor {name!r} has data offsets {offsets!r} outside the {data_len}-byte buffer; truncated?")
        need = math.prod(shape) * _READ_DTYPES[code].itemsize
        if offsets[1] - offsets[0] != need:
            raise _bad(path, f"tensor {name!r} spans {offsets[1] - offsets[0]} bytes, its shape {shape} needs {need}")
    return header, dict(metadata), 8 + header_len


def _to_array(raw: bytes, info: dict) -> np.ndarray:
    """One tensor's bytes -> an owned, writable, native-order array (BF16 becomes float32 exactly)."""
    code, shape = info["dtype"], info["shape"]
    dtype = _READ_DTYPES[code]
    array = np.frombuffer(raw, dtype=dtype, count=math.prod(shape)).reshape(shape)
    if code == "BF16":
        return (array.astype("<u4") << 16).view("<f4").astype(np.float32)
    return array.astype(dtype.newbyteorder("="), copy=True)

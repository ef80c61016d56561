"""Tensors of a ``torch.save`` file, read without torch and without running anything the file says.

A ``torch.save`` file (torch 1.6 and later) is a zip archive: ``<name>/data.pkl``, a pickle of the saved
object, whose tensors refer by key to raw storages ``<name>/data/<key>``. A pickle is a small program, and an
ordinary unpickler calls whatever function it names: that is why loading a downloaded ``.pt`` with
``torch.load`` (without ``weights_only``) can run code. This reader unpickles against a closed list of names
(``_GLOBALS``): plain containers, and torch's tensor-rebuilding functions replaced by ones that only record
where a tensor's numbers are (``StoredTensor``). Any other name ends the read with an error, before anything
is called. A tensor's numbers are read only when the caller asks for that tensor, with its extent checked
against its storage, so a multi-GB checkpoint passed by mistake costs its pickle, not its data.
"""
from __future__ import annotations

import io
import math
import pickle
import zipfile
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from .errors import ZoodipError

# torch's storage classes -> (NumPy dtype, safetensors' name of the type). bfloat16 has no NumPy dtype: its
# 16 bits are the top half of a float32's.
_STORAGES = {"FloatStorage": ("<f4", "F32"), "HalfStorage": ("<f2", "F16"), "DoubleStorage": ("<f8", "F64"),
             "BFloat16Storage": ("<u2", "BF16"), "LongStorage": ("<i8", "I64"), "IntStorage": ("<i4", "I32"),
             "ShortStorage": ("<i2", "I16"), "CharStorage": ("i1", "I8"), "ByteStorage": ("u1", "U8"),
             "BoolStorage": ("?", "BOOL")}
MAX_PICKLE_BYTES = 16 << 20  # an embedding's pickle is a few hundred bytes; a checkpoint's a few MB
MAX_STORAGE_BYTES = 256 << 20  # what one tensor's storage may take in memory when it is read


@dataclass(frozen=True)
class _StorageType:
    name: str  # torch's class name, e.g. "FloatStorage"


@dataclass(frozen=True)
class _StorageRef:
    """What a tensor's storage reference unpickles to (only ``persistent_load`` makes one)."""

    type_name: str
    key: str
    numel: int


@dataclass(frozen=True)
class StoredTensor:
    """Where a tensor's numbers are: ``shape`` elements from ``offset``, ``strides`` apart (in elements)."""

    storage_type: str
    key: str
    storage_numel: int
    offset: int
    shape: tuple[int, ...]
    strides: tuple[int, ...]

    @property
    def dtype(self) -> str:
        """The tensor's type, as safetensors names it ("F32", "F16", "BF16", ...)."""
        return _STORAGES[self.storage_type][1]


def _rebuild_tensor(storage: Any, offset: Any, shape: Any, strides: Any, *_: Any) -> StoredTensor:
    """Stands in for torch._utils._rebuild_tensor(_v2): the trailing requires_grad, hooks and metadata are dropped."""
    if not isinstance(storage, _StorageRef):
        raise ZoodipError("a tensor refers to no storage")
    ints = [offset, *shape, *strides]
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in ints) or len(shape) != len(strides):
        raise ZoodipError(f"a tensor has an invalid layout (offset {offset!r}, shape {shape!r}, strides {strides!r})")
    return StoredTensor(storage.type_name, storage.key, storage.numel, offset, tuple(shape), tuple(strides))


def _rebuild_parameter(data: Any, *_: Any) -> Any:
    """Stands in for torch._utils._rebuild_parameter: a parameter is its tensor."""
    return data


# What a name in the pickle may resolve to. Each lookup makes a new object: a pickle can set attributes on
# what it is given (BUILD), which must not reach this module's functions or outlive the read.
_GLOBALS: dict[tuple[str, str], Callable[[], Any]] = {
    ("collections", "OrderedDict"): lambda: OrderedDict,  # immutable built-in types
    ("torch", "Size"): lambda: tuple,
    ("torch._utils", "_rebuild_tensor"): lambda: lambda *args: _rebuild_tensor(*args),
    ("torch._utils", "_rebuild_tensor_v2"): lambda: lambda *args: _rebuild_tensor(*args),
    ("torch._utils", "_rebuild_parameter"): lambda: lambda *args: _rebuild_parameter(*args),
    **{("torch", name): (lambda name=name: _StorageType(name)) for name in _STORAGES},
}


class _ClosedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        make = _GLOBALS.get((module, name))
        if make is None:
            raise ZoodipError(f"it holds a {module}.{name} object, and zoodip unpickles only tensors and plain containers")
        return make()

    def persistent_load(self, pid: Any) -> _StorageRef:
        # torch's reference to a storage: ("storage", storage type, key, location, number of elements)
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _StorageType)
                and isinstance(pid[2], str) and isinstance(pid[4], int) and pid[4] >= 0):
            raise ZoodipError(f"it refers to an unknown kind of storage ({str(pid)[:80]})")
        return _StorageRef(pid[1].name, pid[2], pid[4])


def read_torch_save(path: str | Path, select: Callable[[Any], StoredTensor]) -> np.ndarray:
    """The tensor that ``select(saved object)`` picks from a ``torch.save`` file, as a NumPy array.

    The saved object holds ``StoredTensor`` records where the file had tensors; ``select`` may raise to refuse
    the file (its errors pass as they are). Every other problem (not a zip archive, a forbidden name, a storage
    that does not hold the tensor) is a ``ZoodipError`` naming the file.
    """
    path = Path(path)
    with _as_zoodip_errors(path):
        archive = zipfile.ZipFile(path)
    with archive:
        with _as_zoodip_errors(path):
            root = _root(archive)
            saved = _unpickled(archive, root)
        tensor = select(saved)
        with _as_zoodip_errors(path):
            return _numbers(archive, root, tensor)


@contextmanager
def _as_zoodip_errors(path: Path) -> Iterator[None]:
    """Whatever goes wrong reading ``path`` becomes one ``ZoodipError`` line naming it."""
    try:
        yield
    except ZoodipError as exc:
        raise ZoodipError(f"{path} cannot be read as a torch.save file: {exc}") from None
    except FileNotFoundError:
        raise ZoodipError(f"{path} does not exist: check the path") from None
    except (zipfile.BadZipFile, KeyError, EOFError, pickle.UnpicklingError, TypeError, ValueError, AttributeError,
            IndexError, RecursionError, MemoryError, OSError) as exc:
        raise ZoodipError(f"{path} cannot be read as a torch.save file ({type(exc).__name__}: {str(exc)[:120]}): "
                          "it is damaged or not a torch.save file; re-download it") from None


def _unpickled(archive: zipfile.ZipFile, root: str) -> Any:
    """The saved object, its tensors as ``StoredTensor`` records (the closed unpickler)."""
    pickled = archive.getinfo(f"{root}data.pkl")
    if pickled.file_size > MAX_PICKLE_BYTES:
        raise ZoodipError(f"its pickle takes {pickled.file_size} bytes, more than an embedding's")
    if f"{root}byteorder" in archive.namelist():
        byteorder = archive.getinfo(f"{root}byteorder")
        if byteorder.file_size > 16 or archive.read(byteorder).strip() != b"little":
            raise ZoodipError("it was not saved on a little-endian machine")
    return _ClosedUnpickler(io.BytesIO(archive.read(pickled))).load()


def _root(archive: zipfile.ZipFile) -> str:
    """The archive's top folder, as torch names it (the file's stem when it was saved): ``name/``."""
    roots = [name[: -len("data.pkl")] for name in archive.namelist() if name.endswith("data.pkl") and name.count("/") == 1]
    if len(roots) != 1:
        raise ZoodipError("it is a zip archive without exactly one <name>/data.pkl, so not a torch.save file")
    return roots[0]


def _numbers(archive: zipfile.ZipFile, root: str, tensor: StoredTensor) -> np.ndarray:
    """The tensor's numbers, read from its storage after checking that the storage holds them."""
    if not isinstance(tensor, StoredTensor):
        raise ZoodipError(f"the object selected is a {type(tensor).__name__}, not a tensor")
    dtype = np.dtype(_STORAGES[tensor.storage_type][0])
    info = archive.getinfo(f"{root}data/{tensor.key}")
    if info.file_size != tensor.storage_numel * dtype.itemsize or info.file_size > MAX_STORAGE_BYTES:
        raise ZoodipError(f"storage {tensor.key} takes {info.file_size} bytes, not the {tensor.storage_numel} "
                          f"elements of {dtype.itemsize} bytes it is said to hold, or more than an embedding's")
    _check_extent(tensor, MAX_STORAGE_BYTES // dtype.itemsize)
    storage = np.frombuffer(archive.read(info), dtype=dtype)
    if not math.prod(tensor.shape):
        return np.zeros(tensor.shape, dtype=dtype)
    view = np.lib.stride_tricks.as_strided(storage[tensor.offset:], tensor.shape,
                                           [s * dtype.itemsize for s in tensor.strides], writeable=False)
    array = np.array(view)
    if tensor.storage_type == "BFloat16Storage":
        array = (array.astype(np.uint32) << 16).view(np.float32)
    return array


def _check_extent(tensor: StoredTensor, max_elements: int) -> None:
    """Refuse a layout that reads outside its storage or would take more memory than a storage may.

    Checked again here, not only when the pickle built the record: a pickle can rewrite an object's fields
    after building it (its BUILD instruction), so only what is true when the numbers are read counts.
    """
    ints = [tensor.offset, tensor.storage_numel, *tensor.shape, *tensor.strides]
    if (not all(type(n) is int and n >= 0 for n in ints) or len(tensor.shape) != len(tensor.strides)
            or math.prod(tensor.shape) > max_elements):
        raise ZoodipError(f"a tensor has an invalid or oversized layout (shape {tensor.shape!r}, strides {tensor.strides!r})")
    last = tensor.offset + sum((n - 1) * s for n, s in zip(tensor.shape, tensor.strides))
    if math.prod(tensor.shape) and last >= tensor.storage_numel:
        raise ZoodipError(f"a {list(tensor.shape)} tensor reaches element {last} of a storage of {tensor.storage_numel}")

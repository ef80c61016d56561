"""Textual-inversion embedding files: write the diffusers format, read the common ones.

What we write is exactly what diffusers' ``textual_inversion.py`` training script writes, a
safetensors file holding one float32 tensor ``{placeholder_token: [num_vectors, hidden]}``, so
``StableDiffusionPipeline.load_textual_inversion(path)`` (and A1111/webui, which accepts the same
single-key layout) load a zoodip embedding without conversion. On request (``--a1111``) the same
vectors are also written as A1111 names its safetensors embeddings, ``NAME.safetensors`` holding
``emb_params`` (:func:`save_a1111_embedding`), whose trigger word in A1111 is NAME.

What we read: that format (also with a 1-D ``[hidden]`` tensor), A1111/webui safetensors files
(an ``emb_params`` tensor, the token being the file's name), and flattened ``string_to_param.*``
exports. Pickled ``.pt``/``.bin`` files are refused: unpickling runs arbitrary code, and this SDK
loads files a user downloaded.
"""
from __future__ import annotations

import os
import re
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import Given, ZoodipError
from .integrity import file_sha256
from .safetensors_io import load_metadata, read_file, save_file
from .json_text import parse_json
from .validation import positive_int

# A prompt holds at most 75 tokens (77 with its start and end markers), so no usable embedding has
# more vectors; text encoders in use are at most 4096 wide. Checked on the file's header, before
# its data is read: a multi-GB checkpoint passed by mistake is refused after a few kB.
MAX_VECTORS = 75
MAX_WIDTH = 4096
_PICKLE_SUFFIXES = {".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle"}
# What an A1111 embeddings folder holds; its pickles (.pt/.bin) are refused one by one, each skip said.
EMBEDDING_SUFFIXES = (".safetensors", ".pt", ".bin")
# A run folder's files (zoodip.run_folder): its embedding, and its step snapshots (diffusers' --save_steps names; a
# cancelled run writes one too), the same token at earlier steps.
EMBEDDING_NAME = "learned_embeds.safetensors"
SNAPSHOT_NAME = "learned_embeds-steps-{step}.safetensors"
SNAPSHOT_FILE = re.compile(r"^learned_embeds-steps-(\d+)\.safetensors$")  # (SNAPSHOT_NAME's files)
# Pickles are converted on a desktop with torch, by a script kept outside the SDK.
_CONVERT_HINT = ("convert it on a desktop with the converter in zoodip's repository (it needs torch): python "
                 "tools/pt_embedding_to_safetensors.py IN.pt OUT.safetensors")
# zoodip's own entries of the safetensors header (__metadata__, strings only). Loaders that do not know
# them (diffusers, A1111, the safetensors package) read the tensors and ignore the header's metadata.
METADATA_PREFIX = "zoodip_"


def _metadata_key(name: str) -> str:
    return name if name.startswith(METADATA_PREFIX) else METADATA_PREFIX + name


def save_learned_embeds(path: str | os.PathLike[str], token: str, vectors: np.ndarray,
                        metadata: Mapping[str, str] | None = None, *, then: str = "try again") -> Path:
    """Save a learned embedding in the diffusers textual-inversion format; returns the path.

    ``vectors`` is [num_vectors, hidden] or [hidden]; it is stored as float32 [num_vectors, hidden]
    under the key ``token``. The write is atomic (a crash never leaves a half-written file).
    ``metadata`` (strings) goes into the header, each key prefixed ``zoodip_`` (see
    :func:`read_embedding_metadata`). ``then``: what the user does after a failed write (its line's end).
    """
    array = _checked_vectors(path, token, vectors)
    return save_file({token: array}, path, metadata=_header(token, array, metadata), then=then)


def save_a1111_embedding(path: str | os.PathLike[str], token: str, vectors: np.ndarray,
                         metadata: Mapping[str, str] | None = None, *, then: str = "try again") -> Path:
    """Save a learned embedding as A1111/webui keeps one in safetensors: ``{"emb_params": [num_vectors, hidden]}``.

    A1111 takes the trigger word from the file name (name the file with :func:`a1111_file_name`) and reads
    only the tensor of a ``.safetensors`` embedding; the header carries zoodip's metadata as
    :func:`save_learned_embeds` writes it, which :func:`load_embedding_file` and ``zoodip info`` read back.
    """
    array = _checked_vectors(path, token, vectors)
    return save_file({"emb_params": array}, path, metadata=_header(token, array, metadata), then=then)


def a1111_file_name(token: str) -> str:
    """The A1111 file name of ``token``: ``NAME.safetensors``, NAME the token without its ``<>`` (A1111's trigger word).

    NAME keeps to the characters A1111 itself allows in an embedding's name (letters, digits, ``.``, ``_``,
    ``-``), so that it is a file name on every system, and may not be one of a run folder's own names.
    """
    name = token.strip().strip("<>")
    if not name or not all(ch.isalnum() or ch in "._-" for ch in name) or name.startswith("."):
        raise ZoodipError(f"a1111=True: the token {token!r} makes no A1111 file name (its trigger word is the file name): "
                          "use letters, digits, '.', '_' or '-' in placeholder_token, e.g. '<my-dog>'")
    if name.startswith("learned_embeds"):
        raise ZoodipError(f"a1111=True: the token {token!r} would name the A1111 file like the run's diffusers "
                          "files (learned_embeds*): choose another placeholder_token")
    return f"{name}.safetensors"


def warn_of_a1111_trigger(token: str, tokenizer: Any) -> None:
    """Warn of an ``--a1111`` file whose name, A1111's trigger word, is a word of ``tokenizer``'s vocabulary: A1111
    takes the word over in every prompt (zoodip and diffusers load such a file under ``<NAME>`` only)."""
    trigger = a1111_file_name(token)[: -len(".safetensors")]
    if tokenizer.is_known_word(trigger):
        warnings.warn(f"a1111=True: A1111 calls the embedding by its file's name, {trigger!r}, a word of the vocabulary, "
                      "which it takes over in every prompt there: rename the file (its trigger), or train with a "
                      f"placeholder_token whose name is no word, e.g. '<my-{trigger}>'", stacklevel=2)


def _checked_vectors(path: str | os.PathLike[str], token: str, vectors: np.ndarray) -> np.ndarray:
    """``vectors`` as float32 [num_vectors, hidden], refused (with the token and file name) where unsavable."""
    if not isinstance(token, str) or not token.strip() or any(ch.isspace() for ch in token):
        raise ZoodipError(f"invalid placeholder token {token!r}: use one word without spaces, e.g. '<my-cat>'")
    if Path(path).suffix.lower() in _PICKLE_SUFFIXES:
        # The bytes would be safetensors, but every tool (this SDK included) treats the name as a pickle.
        raise ZoodipError(Given(path), f": name embedding files '*.safetensors' (e.g. learned_embeds.safetensors), not {Path(path).suffix}")
    array = np.asarray(vectors, dtype=np.float32)
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2 or array.shape[0] < 1 or array.shape[1] < 1:
        raise ZoodipError(f"embedding vectors must have shape [num_vectors, hidden] or [hidden], got {list(np.shape(vectors))}")
    if not np.isfinite(array).all():
        raise ZoodipError(f"the embedding for {token} contains NaN or infinite values, so it was not saved: if training produced it, lower the learning rate")
    return array


def _header(token: str, array: np.ndarray, metadata: Mapping[str, str] | None) -> dict[str, str]:
    # {"format": "pt"} is what safetensors.torch writes; some loaders look for it.
    header = {"format": "pt", "zoodip_token": token, "zoodip_num_vectors": str(array.shape[0])}
    for key, value in (metadata or {}).items():
        header[_metadata_key(str(key))] = value
    return header


def read_embedding_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """zoodip's entries of an embedding file's header, without the ``zoodip_`` prefix ({} for others' files).

    Reads the header only. Values are strings as stored (``settings`` is JSON).
    """
    if Path(path).suffix.lower() in _PICKLE_SUFFIXES:
        return {}
    return {key[len(METADATA_PREFIX):]: value for key, value in load_metadata(path).items()
            if key.startswith(METADATA_PREFIX)}


def load_embedding_file(path: str | os.PathLike[str], token: str | None = None) -> tuple[str, np.ndarray]:
    """Read a textual-inversion embedding: returns ``(token, vectors)``, vectors float32 [n, hidden].

    ``token`` renames the embedding (as diffusers' ``load_textual_inversion(token=...)`` does).
    Formats without a stored token name (A1111 ``emb_params``) default to ``"<file stem>"``; a
    stem already written as ``<...>`` is used as is. (A1111 itself uses the bare stem:
    :func:`load_embeddings` adds it as a second name.)
    """
    name, vectors, _ = _load(Path(_path_text(path, "path")), token)
    return name, vectors


def _path_text(path: object, name: str) -> str:
    """A path argument as text (bytes as the OS decodes them), or one line for what is not a path."""
    if not isinstance(path, (str, bytes, os.PathLike)):
        raise ZoodipError(f"{name} must be a file path (str or Path), got {type(path).__name__}")
    return os.fsdecode(path)


A1111_HASH_CHARS = 12  # A1111's short hash of an embedding file, which its images' "TI hashes" name


def short_hash(path: str | os.PathLike[str]) -> str:
    """A1111's short hash of an embedding file: the first characters of its SHA-256 (the same file, the same hash,
    whichever tool reads it)."""
    return file_sha256(Path(path))[:A1111_HASH_CHARS]


def load_embeddings(specs: Sequence[str | os.PathLike[str] | tuple[str, str | None]], tokenizer: Any = None,
                    hidden: int | None = None, model_id: str | None = None, clip_skip: int | None = None,
                    hashes: dict[str, str] | None = None) -> tuple[dict[str, np.ndarray], list[list[str]]]:
    """Embeddings for a prompt from ``PATH``, ``PATH:TOKEN`` or ``FOLDER`` specs (``--embedding``), or
    ``(PATH, TOKEN or None)`` pairs (a token holding ':', a path never split).

    Returns ``({token: vectors}, groups)``, each group the names of one named file. ``PATH:TOKEN`` names the
    token (as diffusers' ``load_textual_inversion(path, token=...)``). A file without a stored token
    (A1111's ``emb_params``) answers to its file name, A1111's trigger word, and to ``<stem>``; a stem
    that is already a vocabulary word of ``tokenizer`` keeps only ``<stem>`` (it would change that
    word's meaning), as does one with spaces. ``hidden``: the text encoder's width, checked per file.
    ``model_id``: the export's identity; a zoodip file trained on another export gets a warning, and so does one
    trained at another ``clip_skip`` than the generation's (where given). A ``FOLDER`` is loaded as A1111 loads its
    embeddings folder: every ``EMBEDDING_SUFFIXES`` file in it and its subfolders, a file that cannot be used (another model's width, damaged, a name taken) skipped with a warning, and
    none of them in ``groups``, so that the ones a prompt does not use are not warned about. ``hashes``, where
    given, gets each name's file's ``short_hash``, taken as the file is loaded (the images' parameters name the files
    a prompt used, as they were when read, whatever happens to them later).
    """
    if isinstance(specs, (str, os.PathLike)):  # one path, as diffusers' load_textual_inversion takes it
        specs = [specs]
    if not isinstance(specs, (list, tuple)):
        raise ZoodipError(f"embeddings must be a list of paths (PATH, PATH:TOKEN or FOLDER), got {specs!r:.60}")
    if clip_skip is not None:  # compared with the number a file records: "1" would differ from 1
        if not isinstance(clip_skip, (int, np.integer)) or isinstance(clip_skip, bool) or clip_skip < 0:
            raise ZoodipError(f"clip_skip must be a whole number >= 0 (or None), got {clip_skip!r:.60}")
        clip_skip = int(clip_skip)
    added: dict[str, np.ndarray] = {}
    groups: list[list[str]] = []
    if hidden is not None and (isinstance(hidden, bool) or not isinstance(hidden, (int, np.integer)) or hidden < 1):
        raise ZoodipError(f"hidden must be the text encoder's width (a whole number, e.g. 768), got {hidden!r:.60}")
    for spec in specs:
        if isinstance(spec, tuple) and len(spec) != 2:
            raise ZoodipError(f"an embedding spec as a tuple is (PATH, TOKEN or None), got {spec!r:.60}")
        shown = _path_text(spec[0] if isinstance(spec, tuple) else spec, "an embedding spec")
        if not shown.strip():  # Path("") would be the current folder
            raise ZoodipError("an embedding path is empty: name a .safetensors file or a folder of them")
        path, token = (Path(shown), spec[1]) if isinstance(spec, tuple) else _split_spec(shown)
        if not path.is_dir():
            groups.append(_add(added, path, token, shown, tokenizer, hidden, model_id, clip_skip))
            _note_hashes(hashes, groups[-1], path)
            continue
        if token is not None:
            raise ZoodipError(f"the embedding spec {spec!r}: a folder's embeddings keep their own names; drop ':{token}'")
        _add_folder(added, path, hashes, tokenizer, hidden, model_id, clip_skip)
    return added, groups


def _add_folder(added: dict[str, np.ndarray], path: Path, hashes: dict[str, str] | None, *details: Any) -> None:
    """A folder's embedding files into ``added`` (``_add``'s ``details``); a file it cannot use is skipped with a
    warning. A run's step snapshots of a token loaded from its newest file are left out, and those that cannot be
    used are skipped, each said in one line; a copy of a loaded token (a run's --a1111 file) adds only its own names
    (A1111's trigger word)."""
    files = _newest_first(_embedding_files(path))
    if not files:
        raise ZoodipError(Given(path), f" is a folder without embedding files ({', '.join(EMBEDDING_SUFFIXES)}): name a "
                          ".safetensors file or a folder of them")
    earlier: list[str] = []
    unusable: list[str] = []  # (the snapshots': one line, not one a step)
    for file in files:
        snapshot = bool(SNAPSHOT_FILE.match(file.name))
        try:
            loaded = _load(file, None)
            if snapshot and loaded[0] in added:
                earlier.append(file.name)
                continue
            own: dict[str, np.ndarray] = {}  # (its names apart first: a copy's equal vectors are no clash)
            names = _add(own, file, None, str(file), *details, loaded=loaded)
            for alias in names:
                if alias in added and not np.array_equal(added[alias], own[alias]):
                    raise _clash(alias, str(file))
            joined = [alias for alias in names if alias not in added]
            added.update({alias: own[alias] for alias in joined})
            _note_hashes(hashes, joined, file)
        except ZoodipError as exc:
            if snapshot:
                unusable.append(str(exc))
            else:
                warnings.warn(f"skipped {file.relative_to(path)} of the folder {path}: {exc}", stacklevel=3)
    if earlier:
        warnings.warn(f"{path} holds a run: its {len(earlier)} earlier step snapshots are not used (name one to use "
                      "it)", stacklevel=3)
    if unusable:
        warnings.warn(f"skipped {len(unusable)} step snapshots of the folder {path}: {unusable[0]}", stacklevel=3)


_MAX_FOLDERS = 1000  # an embeddings folder's subfolders walked: far more than one holds, far fewer than a home folder


def _embedding_files(folder: Path) -> list[Path]:
    """The ``EMBEDDING_SUFFIXES`` files of ``folder`` and of its subfolders, as A1111 walks its embeddings folder (links
    followed; each real folder once, so that a link back up is no endless walk; hidden ones, .git or .venv, left out)."""
    found: list[Path] = []
    seen: set[str] = set()
    for root, folders, names in os.walk(folder, followlinks=True):
        if os.path.realpath(root) in seen:
            folders.clear()
            continue
        seen.add(os.path.realpath(root))
        if len(seen) > _MAX_FOLDERS:
            raise ZoodipError(f"{folder} holds more than {_MAX_FOLDERS} folders, more than an embeddings folder does: "
                              "name the folder of your embeddings, or one embedding file")
        folders[:] = sorted(name for name in folders if not name.startswith("."))
        found += [Path(root, name) for name in sorted(names)
                  if Path(name).suffix.lower() in EMBEDDING_SUFFIXES and Path(root, name).is_file()]
    return found


def _newest_first(files: list[Path]) -> list[Path]:
    """A run's embedding first, then its step snapshots latest first, then the rest by name: where a run's files name
    one token, the newest readable one stands for it (by name, the first step's snapshot came first)."""
    def order(file: Path) -> tuple[int, int, str]:
        found = SNAPSHOT_FILE.match(file.name)
        return (0, 0, "") if file.name == EMBEDDING_NAME else (1, -int(found.group(1)), "") if found else (2, 0, file.name)
    return sorted(files, key=order)


def _note_hashes(hashes: dict[str, str] | None, names: list[str], path: Path) -> None:
    if hashes is not None:
        try:
            hashes.update(dict.fromkeys(names, short_hash(path)))
        except OSError as exc:  # gone or replaced since it was read a moment ago
            raise ZoodipError(f"cannot read {path} again ({exc.strerror or exc}): was it moved while being loaded?") from None


def _add(added: dict[str, np.ndarray], path: Path, token: str | None, spec: str, tokenizer: Any, hidden: int | None,
         model_id: str | None, clip_skip: int | None = None,
         loaded: tuple[str, np.ndarray, bool] | None = None) -> list[str]:
    """One file's embedding into ``added`` under each of its names (see ``load_embeddings``); returns the names.
    ``loaded``: what ``_load(path, token)`` gave, where the caller has read the file already."""
    name, vectors, named_by_file = _load(path, token) if loaded is None else loaded
    if any(ch.isspace() for ch in name):  # (A1111 reads a file name such as "bad hands" as several words)
        raise ZoodipError(f"{spec}: its name {name!r} holds a space, which no added token can: load it under a name "
                          "without one, load_textual_inversion(PATH, token=TOKEN)")
    if hidden is not None:
        check_hidden_size(vectors, hidden, path)
    metadata = read_embedding_metadata(path) if model_id is not None or clip_skip is not None else {}
    trained_on = metadata.get("model") if model_id is not None else None
    if trained_on is not None and trained_on != model_id:
        warnings.warn(f"{path} was trained on another export (manifest {trained_on}, this one is {model_id}): "
                      "a token learned on one model means little to another", stacklevel=3)
    trained_skip = _trained_clip_skip(metadata) if metadata and clip_skip is not None else clip_skip
    if trained_skip != clip_skip:
        warnings.warn(f"{path} was trained at clip_skip={trained_skip} and is used at clip_skip={clip_skip}: "
                      f"pass clip_skip={trained_skip} to condition on the layer it learned", stacklevel=3)
    if tokenizer is not None and callable(getattr(tokenizer, "is_known_word", None)) and tokenizer.is_known_word(name):
        raise ZoodipError(f"{spec}: its token {name!r} is already a word of the vocabulary, which it would take over: "
                          "rename it with load_textual_inversion(PATH, token=TOKEN)")
    names = [name]
    stem = path.stem
    if (named_by_file and name == f"<{stem}>" and stem and not any(ch.isspace() for ch in stem)
            and not (tokenizer is not None and len(tokenizer.token_ids_for_word(stem)) == 1)):
        names.append(stem)  # A1111's trigger word
    for alias in names:
        if alias in added:
            raise _clash(alias, spec)
    for alias in names:
        added[alias] = vectors
    return names


def _clash(alias: str, spec: str) -> ZoodipError:
    return ZoodipError(f"two embeddings are named {alias!r} ({spec} and an earlier one): rename one with "
                       "load_textual_inversion(PATH, token=TOKEN)")


def _trained_clip_skip(metadata: dict[str, str]) -> int:
    """The ``clip_skip`` a zoodip embedding's header records (0: its last layer, also where it says nothing or what it
    says is no layer count: a damaged or hand-made record, e.g. 1e400, -3, true or "2")."""
    try:
        return positive_int("clip_skip", parse_json(metadata.get("settings", "{}")).get("clip_skip", 0), minimum=0)
    except (ValueError, AttributeError, ZoodipError):
        return 0


def _split_spec(spec: str) -> tuple[Path, str | None]:
    """``PATH`` or ``PATH:TOKEN``; a path that exists as written is never split (it may hold a colon)."""
    if Path(spec).exists() or ":" not in spec:
        return Path(spec), None
    path, token = spec.rsplit(":", 1)
    if not token.strip() or any(ch.isspace() for ch in token):
        raise ZoodipError(f"the embedding spec {spec!r}: the token after ':' must be one word, e.g. {path}:<my-dog>")
    return Path(path), token


def _load(path: Path, token: str | None) -> tuple[str, np.ndarray, bool]:
    """(token, vectors, whether the name came from the file name rather than the file)."""
    if path.exists() and not path.is_file() and not path.is_dir():  # a pipe would block the read for ever
        raise ZoodipError(Given(path), " is not a regular file (a pipe or a device): pass an embedding file")
    key, vectors = _read_embedding(path)
    stored_token = None if key == "emb_params" or key.startswith("string_to_param.") else key
    if token is not None:
        if not isinstance(token, str) or not token.strip() or any(ch.isspace() for ch in token):
            raise ZoodipError(f"invalid token {token!r} for {path.name}: use one word without spaces, e.g. '<my-dog>'")
        name = token
    elif stored_token is not None:
        if not stored_token.strip() or any(ch.isspace() for ch in stored_token):
            what = "holds spaces" if stored_token else "is empty"
            raise ZoodipError(Given(path), f": its token {stored_token!r:.60} {what}, which a prompt cannot name as one "
                              "token: rename it with load_textual_inversion(PATH, token=TOKEN)")
        name = stored_token
    else:
        name = path.stem if (path.stem.startswith("<") and path.stem.endswith(">")) else f"<{path.stem}>"

    if not np.issubdtype(vectors.dtype, np.floating):
        raise ZoodipError(Given(path), f" stores its embedding as {vectors.dtype}, not floats: it is not a textual-inversion embedding")
    if vectors.ndim == 1:
        vectors = vectors[None, :]
    if vectors.ndim != 2 or vectors.shape[0] < 1 or vectors.shape[1] < 1:
        raise ZoodipError(Given(path), f" holds a tensor of shape {list(vectors.shape)}, expected [number of vectors, "
                          "hidden size] or [hidden size]")
    if not np.isfinite(vectors).all():
        raise ZoodipError(Given(path), " contains NaN or infinite values: the embedding is broken, retrain or re-download it")
    largest = float(np.max(np.abs(vectors)))  # (a float64 file's: past float32's range, the cast would make it inf)
    if largest > float(np.finfo(np.float32).max):
        raise ZoodipError(Given(path), f" holds values as large as {largest:.3g}, past the float32 range the text "
                          "encoder computes in: the embedding is broken, retrain or re-download it")
    return name, np.ascontiguousarray(vectors, dtype=np.float32), token is None and stored_token is None


def _read_embedding(path: Path) -> tuple[str, np.ndarray]:
    """(the embedding's name in the file, its array) from a safetensors file; pickles are refused."""
    pickle_error = ZoodipError(
        f"{path} is a pickle (.pt/.bin), which zoodip does not load because unpickling can run arbitrary code; "
        + _CONVERT_HINT
    )
    if path.suffix.lower() in _PICKLE_SUFFIXES and path.is_file():  # (a mistyped path: "does not exist", below)
        raise pickle_error
    chosen: list[str] = []
    parsed: list[bool] = []  # the header parsed: whatever goes wrong next, it is not a pickle

    def select(header: dict[str, dict]) -> list[str]:
        parsed.append(True)
        if not header:
            raise ZoodipError(Given(path), " holds no tensors: it is not a textual-inversion embedding")
        chosen.append(_pick_embedding(header, path))
        _check_embedding_header(header[chosen[0]], path)
        return chosen

    try:
        tensors, _ = read_file(path, select=select)
    except ZoodipError:
        # A renamed torch.save file: say what it is rather than "invalid safetensors".
        if not parsed and _looks_pickled(path):
            raise pickle_error from None
        names = None if parsed else _zip_names(path)
        if names and all(name.endswith(".npy") for name in names):
            raise ZoodipError(Given(path), f" is a NumPy archive (.npz, as a run's checkpoint.npz), not an embedding: pass "
                              "the run's learned_embeds.safetensors") from None
        raise
    return chosen[0], tensors[chosen[0]]


def check_hidden_size(vectors: np.ndarray, hidden: int, path: str | os.PathLike[str]) -> None:
    """Raise a clear error when an embedding was made for a text encoder of another width."""
    width = int(np.shape(vectors)[-1])
    if width != int(hidden):
        raise ZoodipError(
            f"{path} holds {width}-wide vectors but this model's text encoder is {hidden} wide: "
            "the embedding was made for another model family (SD1.x uses 768, SD2.x 1024); use one trained for this model"
        )


def _check_embedding_header(info: dict, path: Path) -> None:
    """Refuse, from the header alone, a tensor that cannot be an embedding (type or size)."""
    shape = info["shape"]
    if not str(info["dtype"]).startswith(("F", "BF")):
        raise ZoodipError(Given(path), f" stores its embedding as {info['dtype']}, not floats: it is not a textual-inversion embedding")
    if len(shape) not in (1, 2) or 0 in shape:
        raise ZoodipError(Given(path), f" holds a tensor of shape {shape}, expected [number of vectors, hidden size] or [hidden size]")
    vectors, width = (1, shape[0]) if len(shape) == 1 else shape
    if vectors > MAX_VECTORS or width > MAX_WIDTH:
        raise ZoodipError(Given(path), f" holds a {shape} tensor, larger than any textual-inversion embedding (at most "
                          f"{MAX_VECTORS} vectors of width {MAX_WIDTH}): is this a model checkpoint?")


def _pick_embedding(tensors: dict[str, object], path: Path) -> str:
    """The name of the embedding tensor of a file, by layout (from the header's names)."""
    if "emb_params" in tensors:  # A1111/webui safetensors: the token is the file name
        return "emb_params"
    flattened = [k for k in tensors if k.startswith("string_to_param.")]
    if len(flattened) == 1:  # an A1111 pickle's state flattened into safetensors
        return flattened[0]
    if {"clip_l", "clip_g"} <= set(tensors):
        raise ZoodipError(Given(path), " is an SDXL embedding (clip_l + clip_g): zoodip runs SD1.x/SD2.x models; use an SD1.x/2.x embedding")
    if len(tensors) == 1:  # diffusers (and zoodip): {token: vectors}
        return next(iter(tensors))
    names = sorted(tensors)
    if any(name.startswith("model.diffusion_model.") for name in names):  # A1111's layout of a whole model
        raise ZoodipError(Given(path), f" is a Stable Diffusion checkpoint ({len(names)} tensors), not an embedding: export it "
                          "with 'zoodip export CHECKPOINT.safetensors OUT_DIR' and load OUT_DIR as the model "
                          "(export_dir=OUT_DIR)")
    raise ZoodipError(
        f"{path} holds {len(names)} tensors ({', '.join(names[:4])}{', ...' if len(names) > 4 else ''}): "
        "a textual-inversion embedding has one ({token: vectors}) or 'emb_params'; is this a LoRA or a model checkpoint?"
    )


def _looks_pickled(path: Path) -> bool:
    """True for torch.save output: a zip archive or a raw pickle stream (protocol 2+).

    Only consulted once safetensors parsing failed, since a valid header length can start with
    the same bytes.
    """
    try:
        with open(path, "rb") as handle:
            head = handle.read(2)
    except OSError:
        return False
    if head == b"PK":  # a zip: torch.save's holds a pickle (data.pkl); NumPy's .npz (a run's checkpoint) only arrays
        names = _zip_names(path)
        return names is None or any(name.endswith(".pkl") for name in names)  # a damaged zip: most likely torch's
    return head[:1] == b"\x80"


def _zip_names(path: Path) -> list[str] | None:
    """The entries of the zip archive at ``path``, None if it is not a readable zip."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return None

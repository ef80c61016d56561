"""CLIP's real BPE vocabulary, in the transformers ``CLIPTokenizer`` file format.

No hub access here, but CLIP's merges ship inside PyPI packages (``open-clip-torch`` carries
``bpe_simple_vocab_16e6.txt.gz``). From that file we build ``vocab.json`` and ``merges.txt``
exactly as CLIP defines its vocabulary: 256 byte symbols, the same with an end-of-word marker,
one symbol per merge, then the two special tokens -> 49408 entries.
"""
from __future__ import annotations

import gzip
import importlib.util
import json
import shutil
from pathlib import Path

from zoodip.errors import ZoodipError
from zoodip.tokenizer import bytes_to_unicode

VOCAB_SIZE = 49408
NUM_MERGES = VOCAB_SIZE - 2 * 256 - 2  # 48894
BPE_FILENAME = "bpe_simple_vocab_16e6.txt.gz"
# The package that carries it, as the Makefile installs it (tests/unit/test_packaging.py holds the two, and README, equal).
OPEN_CLIP_REQUIREMENT = "open-clip-torch==3.3.0"


def find_bpe_file() -> Path:
    """Locate the BPE merges file inside an installed ``open_clip`` package (without importing it)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location) / BPE_FILENAME
            if candidate.is_file():
                return candidate
    # Not in the export extra: open-clip-torch's own dependencies (torchvision, timm) would come along unused.
    raise ZoodipError(
        f"CLIP's vocabulary ({BPE_FILENAME}), which --tiny and single-file exports write, was not found: install "
        f"it with 'pip install --no-deps {OPEN_CLIP_REQUIREMENT}' (only the vocabulary file is used; 'make setup' does)"
    )


def read_merges(bpe_path: Path | None = None) -> list[str]:
    path = bpe_path or find_bpe_file()
    lines = gzip.open(path, "rt", encoding="utf-8").read().split("\n")
    # First line is a version header; CLIP uses the next NUM_MERGES merges.
    return lines[1 : NUM_MERGES + 1]


def build_vocab(merges: list[str]) -> dict[str, int]:
    # The byte symbols in the tokenizer's own order: printable bytes first, as CLIP lists them.
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols]
    tokens += ["".join(merge.split()) for merge in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    if len(tokens) != VOCAB_SIZE or len(set(tokens)) != VOCAB_SIZE:
        raise ValueError(f"unexpected CLIP vocabulary size {len(tokens)} (expected {VOCAB_SIZE})")
    return {token: index for index, token in enumerate(tokens)}


def write_clip_tokenizer_files(dest: Path, bpe_path: Path | None = None, pad_token: str = "<|endoftext|>") -> Path:
    """Write vocab.json, merges.txt, tokenizer_config.json and special_tokens_map.json into ``dest``."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    merges = read_merges(bpe_path)
    vocab = build_vocab(merges)
    (dest / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (dest / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    special = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": pad_token,
    }
    config = dict(special, do_lower_case=True, model_max_length=77, tokenizer_class="CLIPTokenizer",
                  errors="replace", add_prefix_space=False)
    (dest / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    (dest / "special_tokens_map.json").write_text(json.dumps(special, indent=2), encoding="utf-8")
    return dest


def copy_tokenizer_folder(src: Path, dest: Path) -> Path:
    """Copy a diffusers ``tokenizer/`` folder (vocab.json, merges.txt, configs)."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"):
        if (Path(src) / name).is_file():
            shutil.copyfile(Path(src) / name, dest / name)
    return dest

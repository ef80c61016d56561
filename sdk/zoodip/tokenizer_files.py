"""Reading a transformers/diffusers ``tokenizer/`` folder: vocab.json, merges.txt and the token configs.

Every malformed file is refused with one line naming it; what transformers tolerates (a missing config,
special tokens saved as strings or as AddedToken dicts, a huge float for "no length limit") is read as
transformers reads it. zoodip.tokenizer.CLIPTokenizer.from_folder builds the tokenizer from these.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from .errors import ZoodipError
from .json_text import parse_json

DEFAULT_MAX_LENGTH = 77
VOCABULARY_FILES = ("vocab.json", "merges.txt")  # needed
SETTINGS_FILES = ("tokenizer_config.json", "special_tokens_map.json")  # optional; the second one wins, as in transformers
ADDED_TOKENS_FILE = "added_tokens.json"  # optional: tokens a textual-inversion run added and saved
TOKENIZER_FILES = (*VOCABULARY_FILES, *SETTINGS_FILES, ADDED_TOKENS_FILE)  # every file of the folder that is read
# transformers reads only this many merges (after the "#version" header line) from merges.txt.
MAX_MERGES = 49152 - 256 - 2


@dataclass(frozen=True)
class TokenizerSettings:
    """What the configs say: the special tokens, the context length and tokens added by earlier runs."""

    special_tokens: Dict[str, str]  # bos_token, eos_token, pad_token, unk_token -> token
    max_length: int
    added_tokens: Dict[str, int]


def read_json(path: Path) -> Any:
    try:
        return parse_json(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # (UnicodeDecodeError is one)
        raise ZoodipError(
            f"{path} is not readable JSON ({str(exc)[:100] or type(exc).__name__}): re-export the model or copy the "
            "tokenizer folder again"
        ) from None


def token_content(value: Any) -> Optional[str]:
    """A special token from a config: either a string or a serialized AddedToken dict."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def read_vocab(folder: Path) -> Dict[str, int]:
    """vocab.json: token -> id, the ids exactly 0..n-1."""
    vocab = read_json(folder / VOCABULARY_FILES[0])
    if (
        not isinstance(vocab, dict)
        or not vocab
        or not all(isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) for k, v in vocab.items())
    ):
        raise ZoodipError(f"{folder / 'vocab.json'} is not a token -> id mapping: copy the model's tokenizer folder again")
    if sorted(vocab.values()) != list(range(len(vocab))):
        raise ZoodipError(f"{folder / 'vocab.json'} ids are not 0..{len(vocab) - 1}: copy the model's tokenizer folder again")
    return vocab


def read_merges(folder: Path) -> List[Tuple[str, str]]:
    """merges.txt: the BPE merges in rank order (at most transformers' MAX_MERGES)."""
    try:
        lines = (folder / VOCABULARY_FILES[1]).read_text(encoding="utf-8").strip().split("\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise ZoodipError(f"{folder / 'merges.txt'} is unreadable ({exc.__class__.__name__}): copy the tokenizer folder again") from None
    merges: List[Tuple[str, str]] = []
    # Like transformers: the first line is the "#version" header and is always skipped.
    for number, line in enumerate(lines[1 : MAX_MERGES + 1], start=2):
        parts = line.split()
        if len(parts) != 2:
            raise ZoodipError(
                f"{folder / 'merges.txt'} line {number} is not a pair of symbols: copy the tokenizer folder again"
            )
        merges.append((parts[0], parts[1]))
    return merges


def read_settings(folder: Path) -> TokenizerSettings:
    """tokenizer_config.json, special_tokens_map.json and added_tokens.json, each optional."""
    settings: Dict[str, Any] = {}
    for name in SETTINGS_FILES:
        path = folder / name
        if path.is_file():
            data = read_json(path)
            if not isinstance(data, dict):
                raise ZoodipError(f"{path} is not a JSON object: copy the model's tokenizer folder again")
            settings[name] = data
    config = settings.get(SETTINGS_FILES[0], {})
    tokens: Dict[str, str] = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
    }
    for source in (config, settings.get(SETTINGS_FILES[1], {})):
        for key in tokens:
            content = token_content(source.get(key))
            if content:
                tokens[key] = content

    max_length = config.get("model_max_length", DEFAULT_MAX_LENGTH)
    # A missing limit is saved as a huge float (VERY_LARGE_INTEGER); CLIP's context is 77.
    if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length > 10_000:
        max_length = DEFAULT_MAX_LENGTH
    return TokenizerSettings(tokens, max_length, read_added_tokens(folder, config))


def read_added_tokens(folder: Path, config: Dict[str, Any]) -> Dict[str, int]:
    """Tokens added by a previous textual-inversion run (saved by transformers in either format)."""
    added: Dict[str, int] = {}
    decoder_entries = config.get("added_tokens_decoder", {})
    if isinstance(decoder_entries, dict):
        for index, entry in decoder_entries.items():
            content = token_content(entry)
            if content is not None and str(index).isdigit():
                added[content] = int(index)
    if (folder / ADDED_TOKENS_FILE).is_file():
        extra = read_json(folder / ADDED_TOKENS_FILE)
        if isinstance(extra, dict):
            added.update({k: v for k, v in extra.items() if isinstance(k, str) and isinstance(v, int)})
    return added


def check_merges_fit_vocab(folder: Path, vocab: Dict[str, int], merges: List[Tuple[str, str]],
                           settings: TokenizerSettings) -> None:
    """merges.txt and vocab.json are one whole tokenizer's: BPE builds every vocabulary token longer than one symbol
    (but the special ones and those added by a run, which a saved vocab.json may hold too) by a merge, and every merge makes a vocabulary token. transformers reads a merges.txt cut
    short (a download that stopped) as it stands: every prompt then splits into other tokens than the model's."""
    made = set()
    for number, (first, second) in enumerate(merges, start=2):
        if first + second not in vocab:
            raise ZoodipError(f"{folder / 'merges.txt'} line {number} makes {first + second!r:.40}, which vocab.json "
                              "lacks: the two files are not one tokenizer's; copy the tokenizer folder again")
        made.add(first + second)
    unmerged = {*settings.special_tokens.values(), *settings.added_tokens}
    unmade = sum(1 for token in vocab if token not in made and token not in unmerged
                 and len(token[:-4] if token.endswith("</w>") else token) > 1)
    if unmade:
        raise ZoodipError(f"{folder / 'merges.txt'} holds {len(merges)} merges, too few for vocab.json: {unmade} of its "
                          "tokens are made by no merge (the file is cut short?): copy the tokenizer folder again")

"""CLIP's byte-level BPE tokenizer in pure Python (+ NumPy for batches).

It reproduces transformers' *slow* ``CLIPTokenizer`` as it behaves without ``ftfy`` (the setup
diffusers pipelines get by default), id for id:

1. Added tokens are cut out of the *raw* text first, case-sensitively, taking the leftmost and
   then the longest match (transformers' ``Trie``). The split set holds the special tokens
   (bos/eos/unk/pad, which is why SD2's pad token "!" always becomes the bare ``"!"`` id) and any
   added placeholder. transformers' CLIPTokenizer has no ``do_lower_case`` attribute, so added
   tokens are *not* lowercased: "<Cat-Toy>" does not match a placeholder "<cat-toy>".
2. Every other piece is cleaned like ``BasicTokenizer(strip_accents=False,
   do_split_on_punc=False)``: control characters dropped, whitespace collapsed, spaces put
   around CJK ideographs, NFC, lowercased.
3. It is split into words with CLIP's pattern
   ``<|startoftext|>|<|endoftext|>|'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+``
   (case-insensitive). The ``regex`` package is not allowed here, so ``pre_tokenize`` walks the
   text with ``unicodedata`` categories instead.
4. Each word is mapped to byte-level symbols, merged by BPE rank with ``</w>`` marking the end
   of the word, and looked up in the vocabulary.

Placeholders follow diffusers' textual-inversion convention: a placeholder with several vectors
is stored as "<tok>", "<tok>_1", ... with consecutive ids, and "<tok>" in a prompt encodes to all
of them (what ``TextualInversionLoaderMixin.maybe_convert_prompt`` does to the prompt text).
"""
from __future__ import annotations

import unicodedata
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .errors import ZoodipError
from .paths import why_missing
from .tokenizer_files import (DEFAULT_MAX_LENGTH, VOCABULARY_FILES, check_merges_fit_vocab, read_merges, read_settings,
                              read_vocab)

__all__ = ["CLIPTokenizer"]

END_OF_WORD = "</w>"
# The BPE cache is a plain dict; clear it past this size so a long-running app can't grow it forever.
_CACHE_LIMIT = 100_000

# The two literal alternatives at the front of CLIP's split pattern, and its contractions.
_PATTERN_SPECIALS = ("<|startoftext|>", "<|endoftext|>")
_CONTRACTIONS = ("s", "t", "re", "ve", "m", "ll", "d")

# Character classes of the split pattern.
_SPACE, _LETTER, _NUMBER, _OTHER = 0, 1, 2, 3
# The pattern is compiled with IGNORECASE, which makes `regex` compare a character's case
# variants against a class. U+0345 (a combining mark) folds to Greek iota, a letter, so it falls
# in neither [\p{L}] nor [^\s\p{L}\p{N}] and the pattern skips it like whitespace.
_SKIPPED_BY_PATTERN = "\u0345"

# ASCII control characters other than \t \n \r: BasicTokenizer deletes them (they don't split words).
_ASCII_CONTROL_DELETE = {c: None for c in list(range(32)) + [127] if chr(c) not in "\t\n\r"}


def bytes_to_unicode() -> Dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character map (vocabulary entries use it).

    Printable Latin-1 bytes map to themselves; the rest (space, controls, ...) are moved to
    code points 256+ so that no vocabulary symbol is whitespace or a control character.
    """
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    table = {b: chr(b) for b in printable}
    shifted = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + shifted)
            shifted += 1
    return table


_BYTE_ENCODER = bytes_to_unicode()
_BYTE_DECODER = {ch: b for b, ch in _BYTE_ENCODER.items()}


def _is_cjk_ideograph(cp: int) -> bool:
    """BERT's notion of a "Chinese character" (CJK ideograph blocks only, not kana or hangul)."""
    return (
        0x4E00 <= cp <= 0x9FFF
        or 0x3400 <= cp <= 0x4DBF
        or 0x20000 <= cp <= 0x2A6DF
        or 0x2A700 <= cp <= 0x2B73F
        or 0x2B740 <= cp <= 0x2B81F
        or 0x2B820 <= cp <= 0x2CEAF
        or 0xF900 <= cp <= 0xFAFF
        or 0x2F800 <= cp <= 0x2FA1F
    )


def normalize(text: str) -> str:
    """BasicTokenizer's cleanup as CLIP uses it: words lowercased and joined by single spaces."""
    if text.isascii():
        # Fast path, same result: no CJK, NFC is a no-op and lowercasing is per character.
        return " ".join(text.translate(_ASCII_CONTROL_DELETE).lower().split())
    out: List[str] = []
    for ch in text:
        if ch in " \t\n\r":
            out.append(" ")
            continue
        cat = unicodedata.category(ch)
        if cat == "Zs":
            out.append(" ")
        elif cat[0] == "C" or ch == "\ufffd":
            continue  # controls, format characters, unassigned code points, replacement char
        elif _is_cjk_ideograph(ord(ch)):
            out.append(f" {ch} ")
        else:
            out.append(ch)
    cleaned = unicodedata.normalize("NFC", "".join(out))
    # Lowercase word by word as BasicTokenizer does (str.lower is context-sensitive for final sigma).
    return " ".join(word.lower() for word in cleaned.split())


_CLASS_CACHE: Dict[str, int] = {}


def _char_class(ch: str) -> int:
    cls = _CLASS_CACHE.get(ch)
    if cls is None:
        if ch.isspace() or ch in _SKIPPED_BY_PATTERN:
            cls = _SPACE
        else:
            major = unicodedata.category(ch)[0]
            cls = _LETTER if major == "L" else _NUMBER if major == "N" else _OTHER
        _CLASS_CACHE[ch] = cls
    return cls


def _fold(text: str) -> str:
    """Case folding as `regex` applies it to the pattern's literals: the only non-ASCII character
    that folds onto one of their letters is the long s (U+017F)."""
    return text.lower().replace("\u017f", "s")


def pre_tokenize(text: str) -> List[str]:
    """Split normalized text into words like CLIP's regex (alternatives tried in order, leftmost)."""
    words: List[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        cls = _char_class(ch)
        if cls == _SPACE:
            i += 1
            continue
        end = 0
        if ch == "<":
            for literal in _PATTERN_SPECIALS:
                if _fold(text[i : i + len(literal)]) == literal:
                    end = i + len(literal)
                    break
        elif ch == "'":
            for suffix in _CONTRACTIONS:
                if _fold(text[i + 1 : i + 1 + len(suffix)]) == suffix:
                    end = i + 1 + len(suffix)
                    break
        if not end:
            end = i + 1
            if cls == _LETTER:
                while end < n and _char_class(text[end]) == _LETTER:
                    end += 1
            elif cls == _OTHER:  # one number is one word; other symbols run together
                while end < n and _char_class(text[end]) == _OTHER:
                    end += 1
        words.append(text[i:end])
        i = end
    return words


class CLIPTokenizer:
    """CLIP tokenizer with id-for-id parity to transformers' slow ``CLIPTokenizer`` (no ftfy)."""

    def __init__(
        self,
        vocab: Dict[str, int],
        merges: Sequence[Tuple[str, str]],
        bos_token: str = "<|startoftext|>",
        eos_token: str = "<|endoftext|>",
        pad_token: str = "<|endoftext|>",
        unk_token: str = "<|endoftext|>",
        max_length: int = DEFAULT_MAX_LENGTH,
        added_tokens: Optional[Dict[str, int]] = None,
    ) -> None:
        for role, token in (("bos", bos_token), ("eos", eos_token), ("pad", pad_token), ("unk", unk_token)):
            if token not in vocab:
                raise ZoodipError(
                    f"the {role} token {token!r} is not in the tokenizer vocabulary: use the tokenizer folder of the same model"
                )
        if max_length < 2:
            raise ZoodipError(f"tokenizer max length {max_length} is too small: CLIP models use 77")
        self._encoder: Dict[str, int] = dict(vocab)
        self._decoder: Dict[int, str] = {i: tok for tok, i in self._encoder.items()}
        self._ranks: Dict[Tuple[str, str], int] = {pair: r for r, pair in enumerate(merges)}
        self._bos, self._eos, self._pad, self._unk = bos_token, eos_token, pad_token, unk_token
        self._max_length = int(max_length)
        self._base_size = len(self._encoder)
        # Base-vocabulary tokens that are still cut out of raw text whole (the special tokens).
        self._special: Dict[str, int] = {t: self._encoder[t] for t in (bos_token, eos_token, unk_token, pad_token)}
        self._added: Dict[str, int] = {}  # placeholders: token -> id (ids from base_vocab_size on)
        self._added_decoder: Dict[int, str] = {}
        # word -> ids. transformers seeds its cache so that the pattern's two special words are not
        # given an end-of-word marker (they stay bos/eos even when written in upper case).
        self._cache: Dict[str, Tuple[int, ...]] = {}
        for token, index in sorted((added_tokens or {}).items(), key=lambda item: item[1]):
            self._register(token, index, refresh=False)
        self._refresh_added()

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_folder(cls, folder: Union[str, Path]) -> "CLIPTokenizer":
        """Load a transformers/diffusers ``tokenizer/`` folder (vocab.json, merges.txt, configs)."""
        folder = Path(folder)
        if not folder.is_dir():
            raise ZoodipError(f"tokenizer folder {folder} {why_missing(folder)}: point to the model's 'tokenizer' folder")
        for name in VOCABULARY_FILES:
            if not (folder / name).is_file():
                raise ZoodipError(f"{folder / name} is missing: copy the full 'tokenizer' folder of the model")
        vocab, merges = read_vocab(folder), read_merges(folder)
        settings = read_settings(folder)
        check_merges_fit_vocab(folder, vocab, merges, settings)
        return cls(vocab, merges, max_length=settings.max_length, added_tokens=settings.added_tokens,
                   **settings.special_tokens)

    # ------------------------------------------------------------------ properties

    @property
    def bos_id(self) -> int:
        return self._encoder[self._bos]

    @property
    def eos_id(self) -> int:
        return self._encoder[self._eos]

    @property
    def pad_id(self) -> int:
        return self._encoder[self._pad]

    @property
    def unk_id(self) -> int:
        return self._encoder[self._unk]

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def base_vocab_size(self) -> int:
        """Rows of the text encoder's token-embedding table."""
        return self._base_size

    @property
    def vocab_size(self) -> int:
        """Base vocabulary plus added placeholder tokens (the next new id)."""
        return self._base_size + len(self._added)

    @property
    def added_tokens(self) -> Dict[str, int]:
        return dict(self._added)

    # ------------------------------------------------------------------ encoding

    def encode(self, text: str) -> List[int]:
        """Token ids of ``text`` without bos/eos; placeholders expand to all of their vectors."""
        return [i for unit in self.encode_units(text) for i in unit]

    def encode_units(self, text: str) -> List[List[int]]:
        """``encode(text)`` cut into the units a prompt keeps whole: a placeholder's vectors together, any
        other token alone (A1111's long prompts never split an embedding between chunks)."""
        if not isinstance(text, str):
            raise ZoodipError(f"a prompt must be a string, got {type(text).__name__}")
        units: List[List[int]] = []
        for piece, matched in self._split_added(text):
            if matched:
                units.append(list(self._expansions[piece]))
            else:
                units.extend([i] for i in self._encode_plain(piece))
        return units

    def __call__(self, texts: Union[str, Sequence[str]]) -> np.ndarray:
        """int64 ``[batch, max_length]``: bos, ids (truncated), eos, then padding."""
        if isinstance(texts, str):
            texts = [texts]
        keep = self._max_length - 2
        out = np.full((len(texts), self._max_length), self.pad_id, dtype=np.int64)
        for row, text in enumerate(texts):
            ids = [self.bos_id] + self.encode(text)[:keep] + [self.eos_id]
            out[row, : len(ids)] = ids
        return out

    def token_ids_for_word(self, word: str) -> List[int]:
        """Base-vocabulary ids of ``word`` (an initializer word should give exactly one)."""
        return self._encode_plain(word)

    def _encode_plain(self, text: str) -> List[int]:
        """Ids of text that holds no added token: normalize, split into words, BPE each word."""
        ids: List[int] = []
        for word in pre_tokenize(normalize(text)):
            cached = self._cache.get(word)
            if cached is None:
                cached = self._encode_word(word)
                if len(self._cache) >= _CACHE_LIMIT:
                    self._refresh_cache()
                self._cache[word] = cached
            ids.extend(cached)
        return ids

    def _encode_word(self, word: str) -> Tuple[int, ...]:
        symbols = [_BYTE_ENCODER[b] for b in word.encode("utf-8")]
        symbols[-1] += END_OF_WORD
        unk = self.unk_id
        return tuple(self._encoder.get(piece, unk) for piece in self._bpe(symbols))

    def _bpe(self, symbols: List[str]) -> List[str]:
        """Repeatedly merge the adjacent pair with the lowest rank (all its occurrences, left to right)."""
        ranks = self._ranks
        while len(symbols) > 1:
            best: Optional[Tuple[str, str]] = None
            best_rank = len(ranks)
            for pair in zip(symbols, symbols[1:]):
                rank = ranks.get(pair)
                if rank is not None and rank < best_rank:
                    best, best_rank = pair, rank
            if best is None:
                break
            first, second = best
            merged: List[str] = []
            i, n = 0, len(symbols)
            while i < n:
                if i + 1 < n and symbols[i] == first and symbols[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        return symbols

    def _split_added(self, text: str) -> List[Tuple[str, bool]]:
        """Cut special and placeholder tokens out of raw text: leftmost match first, then longest."""
        pieces: List[Tuple[str, bool]] = []
        candidates = [t for t in self._split_tokens if t in text]  # usually empty or tiny
        pos = 0
        while candidates:
            start, token = len(text), ""
            for candidate in candidates:  # sorted longest first: a tie keeps the longest
                found = text.find(candidate, pos)
                if found != -1 and found < start:
                    start, token = found, candidate
            if not token:
                break
            if start > pos:
                pieces.append((text[pos:start], False))
            pieces.append((token, True))
            pos = start + len(token)
        if pos < len(text):
            pieces.append((text[pos:], False))
        return pieces

    # ------------------------------------------------------------------ placeholders

    def add_placeholder(self, token: str, num_vectors: int = 1) -> List[int]:
        """Add a textual-inversion placeholder; returns its new ids (one per vector).

        With ``num_vectors > 1`` the extra vectors are the tokens "<tok>_1", "<tok>_2", ... and
        "<tok>" in a prompt encodes to all of them, like diffusers' textual inversion.
        """
        hint = 'pick another placeholder such as "<my-dog>"'
        if not isinstance(token, str) or not token:
            raise ZoodipError(f"the placeholder token is empty: {hint}")
        if any(ch.isspace() for ch in token):
            raise ZoodipError(f"the placeholder token {token!r} contains whitespace: {hint}")
        if not isinstance(num_vectors, int) or isinstance(num_vectors, bool) or num_vectors < 1:
            raise ZoodipError(f"num_vectors must be a positive integer, got {num_vectors!r}")
        names = [token] + [f"{token}_{i}" for i in range(1, num_vectors)]
        for name in names:
            if name in self._added:
                raise ZoodipError(f"the placeholder {name!r} was already added: {hint}")
            if self.is_known_word(name):
                raise ZoodipError(f"the placeholder {name!r} is already a word of the vocabulary: {hint}")
        ids = []
        for name in names:
            ids.append(self.vocab_size)
            self._register(name, self.vocab_size, refresh=False)
        self._refresh_added()  # once for all the names: a table rebuilt per name made many vectors quadratic
        return ids

    def is_known_word(self, name: str) -> bool:
        """Whether ``name`` (as written or lowercased) already is a base-vocabulary token."""
        for form in {name, name.lower()}:
            if form in self._encoder or form + END_OF_WORD in self._encoder:
                return True
        # e.g. "Dog" or "été": text that already encodes to one existing token.
        return len(self._encode_plain(name)) == 1

    def _register(self, token: str, index: int, refresh: bool = True) -> None:
        if index < self._base_size:
            # A special token saved with the folder (e.g. SD2's "!" pad): it is cut out whole.
            if self._encoder.get(token) != index:
                raise ZoodipError(
                    f"added token {token!r} has id {index} but the vocabulary disagrees: copy the tokenizer folder again"
                )
            self._special[token] = index
        elif token in self._added:
            if self._added[token] != index:
                raise ZoodipError(f"added token {token!r} is listed with two ids: copy the tokenizer folder again")
            return
        elif index != self.vocab_size:
            raise ZoodipError(
                f"added token {token!r} has id {index}, expected {self.vocab_size} (ids must follow the vocabulary): "
                "copy the tokenizer folder again"
            )
        else:
            self._added[token] = index
            self._added_decoder[index] = token
        if refresh:
            self._refresh_added()

    def _refresh_added(self) -> None:
        """Rebuild the lookup tables that depend on the set of added tokens."""
        expansions: Dict[str, List[int]] = {t: [i] for t, i in self._special.items()}
        for token, index in self._added.items():
            ids = [index]
            while f"{token}_{len(ids)}" in self._added:  # diffusers' multi-vector naming
                ids.append(self._added[f"{token}_{len(ids)}"])
            expansions[token] = ids
        self._expansions = expansions
        self._split_tokens = sorted(expansions, key=len, reverse=True)
        self._refresh_cache()

    def _refresh_cache(self) -> None:
        self._cache = {word: (self._encoder.get(word, self.unk_id),) for word in _PATTERN_SPECIALS}

    # ------------------------------------------------------------------ decoding

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """Text of ``ids`` as transformers' ``decode`` writes it (placeholders set apart by spaces)."""
        special_ids = set(self._special.values())
        parts: List[str] = []
        pieces: List[str] = []

        def flush() -> None:
            if pieces:
                raw = bytes(_BYTE_DECODER[ch] for ch in "".join(pieces))
                text = raw.decode("utf-8", errors="replace").replace(END_OF_WORD, " ").strip()
                if text:
                    parts.append(text)
                pieces.clear()

        for index in (int(i) for i in ids):
            if skip_special_tokens and index in special_ids:
                continue
            if index in self._added_decoder:
                flush()
                parts.append(self._added_decoder[index])
            elif index in self._decoder:
                pieces.append(self._decoder[index])
            else:
                raise ZoodipError(f"token id {index} is outside the vocabulary (size {self.vocab_size})")
        flush()
        return " ".join(parts)

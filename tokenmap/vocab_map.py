"""Vocabulary maps: every source token id -> the target token ids that decode to the same bytes.

`VocabMap.build(src, dst)` reads both vocabularies once and matches tokens by the raw bytes they decode to:

1. Bytes of every token, from its piece string and the decoder in tokenizer.json (no per-token encode calls):
   byte-level BPE (Qwen3, Llama-3, DeepSeek) maps each character through the GPT-2 byte alphabet (`Ġ` = space), so a
   piece may be a partial UTF-8 sequence and stays bytes; sentencepiece-style decoders (Gemma-2, Llama-2, Mistral)
   replace `▁` with a space and turn `<0xNN>` byte-fallback pieces into that one byte.
2. Control tokens are the tokenizer's added tokens (`<|im_end|>`, `<|eot_id|>`, `<start_of_turn>`, `<s>`, Gemma's
   `<table>`...), except added tokens that are only whitespace (Gemma's runs of newlines, spaces and tabs), which
   are ordinary text. A control token is never text: it maps to the target's control token with the same content,
   or to nothing (the special table), and text never maps to a target control token.
3. Each source text token is then:
   - `exact`: one target token has the same bytes (a byte-fallback piece counts: Qwen3 `Ã` -> Gemma `<0xC3>`);
   - `normalised`: no exact match, but one target token is the same text under Unicode NFKC (composed vs
     decomposed accents, full-width forms, ligatures: `ế` (e + 2 marks) vs `ế`, `Ｐ` vs `P`). That target token is
     the token's `partner` (a shared token for the adaptor bridge); its target ids stay the byte-exact
     decomposition below, so conversion never changes the text;
   - `decomposed`: several target tokens whose bytes concatenate to the token's bytes: the target model's own BPE
     of those bytes as one word (what it produces for that text inside a word) when it spells them exactly, else
     the fewest tokens (shortest segmentation over the target's bytes -> id dict, ties: the longest first piece),
     byte-fallback pieces included;
   - `unmappable`: the target cannot spell those bytes.

`convert(ids)` concatenates the per-token lists, so the target ids decode to the same bytes as the source ids. Two
decoder quirks only touch the start of a sequence: Llama-2/Mistral decoders drop one leading space of the decoded
text (`Strip`), and a target that does so needs an extra space in front; the `first` table holds the ids a token
maps to when it starts a sequence. Decode equality holds for `tokenizer.decode(ids)` with its defaults (control
tokens kept) whenever the bytes are valid UTF-8; byte equality holds always.
"""

from __future__ import annotations

import json
import os
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tokenmap.assets import tokenizer_fingerprint
from tokenmap.io import atomic_write_bytes

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

FORMAT = "tokenmap.vocab_map/1"
NORMALISATION = "NFKC"
# Match kinds, stored as uint8 codes (their index here).
KINDS = ("exact", "normalised", "decomposed", "unmappable", "special", "special_unmapped")
TEXT_KINDS = KINDS[:4]
_CODE = {kind: code for code, kind in enumerate(KINDS)}
_DTYPES = {"kinds": np.uint8, "offsets": np.int64, "targets": np.int32, "partner": np.int32}  # saved arrays
_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


class VocabMapMismatchError(ValueError):
    """A saved map was applied to tokenizers other than the ones it was built for."""


def _gpt2_byte_alphabet() -> dict[int, int]:
    """GPT-2's byte-level alphabet, inverted: code point of the printable stand-in -> byte value."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    alphabet = {b: b for b in printable} | {b: 256 + n for n, b in enumerate(others)}
    return {char: byte for byte, char in alphabet.items()}


_CHAR_TO_BYTE = _gpt2_byte_alphabet()
_BYTE_TO_CHAR = {byte: char for char, byte in _CHAR_TO_BYTE.items()}


@dataclass
class _Vocab:
    """One tokenizer reduced to what matching needs: the bytes of each text token and the control tokens."""

    name: str
    size: int
    pieces: list[bytes | None]  # id -> bytes it decodes to; None for control tokens and unused ids
    byte_ids: set[int]  # sentencepiece byte-fallback pieces (`<0xNN>`)
    controls: dict[int, str]  # id -> content
    strips: bool  # the decoder drops one leading space of the decoded text
    replacement: str | None  # sentencepiece space marker (`▁`); None for byte-level
    model: Any  # the tokenizers model (BPE), whose `tokenize` spells one piece string

    def piece_string(self, data: bytes) -> str | None:
        """`data` written as this vocabulary writes its pieces; None when it cannot be (not UTF-8 for sentencepiece)."""
        if self.replacement is None:
            return data.decode("latin-1").translate(_BYTE_TO_CHAR)
        try:
            return data.decode().replace(" ", self.replacement)
        except UnicodeDecodeError:
            return None


def _decoder_rules(tokenizer: PreTrainedTokenizerBase, name: str) -> tuple[str | None, bool, bool]:
    """(space replacement or None for byte-level, byte_fallback, strips_leading_space) from the decoder."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or backend.decoder is None:
        raise ValueError(f"tokenizer {name}: a fast tokenizer with a decoder (tokenizer.json) is needed")
    spec = json.loads(backend.decoder.__getstate__())
    steps = spec["decoders"] if spec["type"] == "Sequence" else [spec]
    byte_level, replacement, byte_fallback, strips = False, None, False, False
    for step in steps:
        kind = step["type"]
        if kind == "ByteLevel":
            byte_level = True
        elif kind == "Replace" and step["content"] == " " and "String" in step["pattern"]:
            replacement = step["pattern"]["String"]
        elif kind == "ByteFallback":
            byte_fallback = True
        elif kind == "Strip" and step == {"type": "Strip", "content": " ", "start": 1, "stop": 0}:
            strips = True
        elif kind != "Fuse":
            raise ValueError(
                f"tokenizer {name}: unsupported decoder step {json.dumps(step)}; supported: ByteLevel, or "
                "Replace(<marker> -> ' '), ByteFallback, Fuse and Strip(' ', 1, 0) as sentencepiece conversions write"
            )
    if byte_level == (replacement is not None):
        raise ValueError(f"tokenizer {name}: decoder {json.dumps(spec)} is neither byte-level nor sentencepiece-style")
    return replacement, byte_fallback, strips


def _read_vocab(tokenizer: PreTrainedTokenizerBase) -> _Vocab:
    name = str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)
    replacement, byte_fallback, strips = _decoder_rules(tokenizer, name)
    backend = tokenizer.backend_tokenizer
    added = tokenizer.added_tokens_decoder
    size = max(len(tokenizer), max(added, default=-1) + 1)
    pieces: list[bytes | None] = []
    byte_ids: set[int] = set()
    for i in range(size):
        piece = backend.id_to_token(i)
        if piece is None:
            pieces.append(None)
        elif replacement is None:
            try:
                pieces.append(piece.translate(_CHAR_TO_BYTE).encode("latin-1"))
            except UnicodeEncodeError:  # outside the byte alphabet (an added token): ByteLevel keeps it as UTF-8
                pieces.append(piece.encode())
        elif byte_fallback and len(piece) == 6 and (match := _BYTE_PIECE.fullmatch(piece)):
            pieces.append(bytes([int(match.group(1), 16)]))
            byte_ids.add(i)
        else:
            pieces.append(piece.replace(replacement, " ").encode())
    controls = {}
    for i, token in added.items():
        if pieces[i] is not None and pieces[i].strip():  # whitespace-only added tokens (Gemma) are text
            controls[i] = token.content
            pieces[i] = None
    return _Vocab(name, size, pieces, byte_ids, controls, strips, replacement, backend.model)


def _segment(data: bytes, index: dict[bytes, int], max_len: int) -> list[int] | None:
    """Fewest target ids whose bytes concatenate to `data` (ties: longest first piece); None if impossible."""
    n = len(data)
    count = [n + 1] * (n + 1)  # count[i]: fewest tokens spelling data[i:]; n + 1 = impossible
    count[n] = 0
    step = [0] * (n + 1)
    for i in range(n - 1, -1, -1):
        for j in range(min(n, i + max_len), i, -1):
            if count[j] + 1 < count[i] and data[i:j] in index:
                count[i], step[i] = count[j] + 1, j
    if count[0] > n:
        return None
    out, i = [], 0
    while i < n:
        out.append(index[data[i : step[i]]])
        i = step[i]
    return out


class _Speller:
    """Spells any bytes with the target's text tokens."""

    def __init__(self, dst: _Vocab):
        self.dst = dst
        # Prefer normal pieces over byte-fallback ones (sentencepiece only falls back to bytes when no piece fits),
        # then the lowest id.
        normal = ((i, b) for i, b in enumerate(dst.pieces) if b is not None and i not in dst.byte_ids)
        self.index = {b: i for i, b in reversed(list(normal))}
        for i in sorted(dst.byte_ids):
            self.index.setdefault(dst.pieces[i], i)
        self.max_len = max(map(len, self.index), default=0)

    def spell(self, data: bytes) -> list[int] | None:
        """One token with these bytes; else the target's own BPE of them (what it would produce for the text within
        one word), kept when it spells them back exactly; else the fewest tokens; None when impossible."""
        single = self.index.get(data)
        if single is not None:
            return [single]
        piece = self.dst.piece_string(data)
        if piece is not None:
            ids = [token.id for token in self.dst.model.tokenize(piece)]
            spelled = [self.dst.pieces[j] for j in ids]
            if None not in spelled and b"".join(spelled) == data:
                return ids
        return _segment(data, self.index, self.max_len)


def _read_map_file(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """The header and arrays of a `.safetensors` or `.json` map file; ValueError naming the file when it is not a
    whole one (truncated, or another kind of file)."""
    from safetensors import SafetensorError, safe_open

    try:
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="numpy") as f:
                metadata = f.metadata() or {}
                if "vocab_map" not in metadata:
                    raise ValueError(f"{path}: no 'vocab_map' metadata; not a file written by VocabMap.save")
                header = json.loads(metadata["vocab_map"])
                arrays = {k: f.get_tensor(k) for k in _DTYPES}
        else:
            header = json.loads(path.read_text(encoding="utf-8"))
            arrays = {}
    except (SafetensorError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not a whole vocabulary map ({error}); rebuild it with `tokenmap build`") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: expected a vocabulary map (a JSON object), got a {type(header).__name__}")
    arrays = arrays or {k: np.asarray(header.get(k, []), dtype=dtype) for k, dtype in _DTYPES.items()}
    return header, arrays


@dataclass(frozen=True)
class TokenMatch:
    """How one source token maps: its kind (see `KINDS`), the target ids, and its one-to-one partner if any."""

    kind: str
    target_ids: tuple[int, ...]
    partner: int | None  # the single target token it equals (exact, normalised, special), else None


@dataclass(eq=False)
class VocabMap:
    """Source token id -> target token ids with the same decoded bytes; see the module docstring.

    Arrays (one row per source id): `kinds` (uint8 codes into `KINDS`), `offsets`/`targets` (the target ids of
    source id i are `targets[offsets[i]:offsets[i + 1]]`, empty when unmappable), `partner` (-1 when none).
    `first` holds the ids of the source tokens that map differently when they start a sequence.
    `specials` lists every source control token: {"id", "content", "target_id" (None when unmapped)}.
    Fingerprints are `tokenmap.assets.tokenizer_fingerprint` of each tokenizer, computed when first needed.
    """

    src_name: str
    dst_name: str
    src_strips: bool
    dst_strips: bool
    dst_size: int
    kinds: np.ndarray  # (n_src,) uint8
    offsets: np.ndarray  # (n_src + 1,) int64
    targets: np.ndarray  # (offsets[-1],) int32
    partner: np.ndarray  # (n_src,) int32
    first: dict[int, list[int] | None]
    specials: list[dict[str, Any]]
    _fingerprints: list[str | None] = field(default_factory=lambda: [None, None], repr=False)
    _tokenizers: tuple[PreTrainedTokenizerBase, PreTrainedTokenizerBase] | None = field(default=None, repr=False)
    _vocabs: tuple[_Vocab, _Vocab] | None = field(default=None, repr=False)
    _table: list[list[int] | None] | None = field(default=None, repr=False)

    # ---- building

    @classmethod
    def build(cls, src: PreTrainedTokenizerBase, dst: PreTrainedTokenizerBase) -> VocabMap:
        """Map every id of `src` to ids of `dst` (loaded Hugging Face fast tokenizers)."""
        sv, dv = _read_vocab(src), _read_vocab(dst)
        speller = _Speller(dv)
        n = sv.size
        kinds = np.full(n, _CODE["unmappable"], dtype=np.uint8)  # stays so for ids no token uses
        partner = np.full(n, -1, dtype=np.int32)
        many: dict[int, list[int]] = {}  # ids that map to other than exactly one target token

        dst_controls = {content: i for i, content in dv.controls.items()}
        specials = []
        for i, content in sorted(sv.controls.items()):
            j = dst_controls.get(content)
            specials.append({"id": i, "content": content, "target_id": j})
            kinds[i] = _CODE["special_unmapped" if j is None else "special"]
            if j is not None:
                partner[i] = j

        exact = speller.index.get
        for i, data in enumerate(sv.pieces):
            if data is None:
                continue
            j = exact(data)
            if j is not None:
                kinds[i], partner[i] = _CODE["exact"], j
                continue
            spelled = speller.spell(data)
            if spelled is None:
                continue
            many[i] = spelled
            kinds[i] = _CODE["decomposed"]
            try:
                text = data.decode()
            except UnicodeDecodeError:
                continue
            j = exact(unicodedata.normalize(NORMALISATION, text).encode())
            if j is not None:
                kinds[i], partner[i] = _CODE["normalised"], j

        first = {}
        if sv.strips != dv.strips:
            for i, data in enumerate(sv.pieces):
                if data is not None and data[:1] == b" ":
                    visible = data[1:] if sv.strips else data
                    first[i] = speller.spell(b" " + visible if dv.strips else visible)

        # CSR layout: one target for exact and mapped special tokens, `many[i]` for the rest.
        single = np.isin(kinds, [_CODE["exact"], _CODE["special"]])
        lengths = single.astype(np.int64)
        lengths[list(many)] = [len(ids) for ids in many.values()]
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        targets = np.empty(offsets[-1], dtype=np.int32)
        targets[offsets[:-1][single]] = partner[single]
        for i, ids in many.items():
            targets[offsets[i] : offsets[i + 1]] = ids
        vm = cls(sv.name, dv.name, sv.strips, dv.strips, dv.size, kinds, offsets, targets, partner, first, specials)
        vm._tokenizers, vm._vocabs = (src, dst), (sv, dv)
        return vm

    # ---- reading

    def __len__(self) -> int:
        return len(self.kinds)

    @property
    def src_fingerprint(self) -> str:
        return self._fingerprint(0)

    @property
    def dst_fingerprint(self) -> str:
        return self._fingerprint(1)

    def _fingerprint(self, side: int) -> str:
        if self._fingerprints[side] is None:
            self._fingerprints[side] = tokenizer_fingerprint(self._tokenizers[side])
        return self._fingerprints[side]

    def lookup(self, src_id: int) -> TokenMatch:
        """How source token `src_id` maps."""
        self._check_id(src_id)
        start, end = self.offsets[src_id], self.offsets[src_id + 1]
        p = int(self.partner[src_id])
        return TokenMatch(KINDS[self.kinds[src_id]], tuple(self.targets[start:end].tolist()), p if p >= 0 else None)

    def pairs(self, kinds: Iterable[str] = ("exact", "normalised")) -> tuple[np.ndarray, np.ndarray]:
        """(source ids, target ids) of the one-to-one matches of the given kinds: the shared tokens."""
        kinds = list(kinds)
        unknown = set(kinds) - set(KINDS)
        if unknown:
            raise ValueError(f"kinds: unknown {sorted(unknown)}; known: {list(KINDS)}")
        src_ids = np.flatnonzero(np.isin(self.kinds, [_CODE[k] for k in kinds]) & (self.partner >= 0))
        return src_ids, self.partner[src_ids].astype(np.int64)

    def stats(self) -> dict[str, Any]:
        """Counts per match kind, the special table and both tokenizers' identities, as a plain dict."""
        counts = np.bincount(self.kinds, minlength=len(KINDS))
        lengths = np.diff(self.offsets)[self.kinds == _CODE["decomposed"]]
        return {
            "source": {"name": self.src_name, "fingerprint": self.src_fingerprint, "size": len(self)},
            "target": {"name": self.dst_name, "fingerprint": self.dst_fingerprint, "size": self.dst_size},
            "normalisation": NORMALISATION,
            "text_tokens": int(sum(counts[_CODE[k]] for k in TEXT_KINDS)),
            **{kind: int(counts[_CODE[kind]]) for kind in TEXT_KINDS},
            "mean_decomposed_length": round(float(lengths.mean()), 3) if lengths.size else 0.0,
            "special_mapped": int(counts[_CODE["special"]]),
            "special_unmapped": int(counts[_CODE["special_unmapped"]]),
            "specials": [dict(s) for s in self.specials],
        }

    # ---- converting

    def convert(self, ids: Sequence[int], *, canonical: bool = False) -> list[int]:
        """Source ids -> target ids that decode to the same text.

        Default: each source token becomes its mapped target ids (byte-exact; the `first` table at the start).
        `canonical=True`: each text run (the ids between control tokens) is re-encoded by the target tokenizer
        (`add_special_tokens=False`) from the text the source ids decode to, as the target would tokenise it; a run
        whose re-encoding would not decode to the same text (the target normalises it, e.g. Qwen3's NFC; a
        sentencepiece target adds a space after a control token; the text spells a target control token; the run
        splits a character) falls back to the byte-exact ids. Needs the tokenizers (`build`, or `load`/`check`).

        Control tokens map through the special table; an unmapped one, an unmappable token or an id outside the
        source vocabulary raises ValueError naming it.
        """
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
        if not canonical:
            return self._exact(ids, at_start=True)
        sv, _ = self._bound_vocabs("canonical conversion")
        out: list[int] = []
        start = 0
        while start < len(ids):
            end = start
            while end < len(ids) and ids[end] not in sv.controls:
                end += 1
            if end == start:  # a control token
                out += self._exact(ids[start : start + 1], at_start=False)
                start += 1
            else:
                out += self._canonical_run(ids[start:end], at_start=start == 0)
                start = end
        return out

    def _exact(self, ids: list[int], at_start: bool) -> list[int]:
        table = self._lookup_table()
        try:
            if ids and min(ids) < 0:
                raise IndexError
            parts = [table[i] for i in ids]
        except IndexError:
            bad = next(i for i in ids if not 0 <= i < len(table))
            raise ValueError(
                f"ids: {bad} is outside the source vocabulary of {self.src_name} (size {len(table)})"
            ) from None
        if at_start and ids and ids[0] in self.first:
            parts[0] = self.first[ids[0]]
        try:
            return list(chain.from_iterable(parts))
        except TypeError:  # a None part: a token without a mapping
            raise ValueError(self._unmapped_message(ids[parts.index(None)])) from None

    def _canonical_run(self, run: list[int], at_start: bool) -> list[int]:
        sv, dv = self._bound_vocabs("canonical conversion")
        exact = self._exact(run, at_start)  # also validates the ids
        raw = b"".join(sv.pieces[i] for i in run)
        wanted = raw[1:] if at_start and sv.strips and raw[:1] == b" " else raw
        try:
            text = wanted.decode()
        except UnicodeDecodeError:  # the run splits a character: only bytes can carry it
            return exact
        candidate = self._tokenizers[1].encode(text, add_special_tokens=False)
        spelled = [dv.pieces[j] for j in candidate]
        if None in spelled:  # the text spells a target control token
            return exact
        shown = b"".join(spelled)
        if at_start and dv.strips and shown[:1] == b" ":
            shown = shown[1:]
        return candidate if shown == wanted else exact

    def _lookup_table(self) -> list[list[int] | None]:
        if self._table is None:
            flat, offsets = self.targets.tolist(), self.offsets.tolist()
            bad = {_CODE["unmappable"], _CODE["special_unmapped"]}
            self._table = [
                None if kind in bad else flat[offsets[i] : offsets[i + 1]] for i, kind in enumerate(self.kinds.tolist())
            ]
        return self._table

    def _unmapped_message(self, src_id: int) -> str:
        special = next((s for s in self.specials if s["id"] == src_id), None)
        if special:
            return (
                f"control token {special['content']!r} (id {src_id}) of {self.src_name} has no mapping: "
                f"{self.dst_name} has no control token with that content; remove it from the ids first"
            )
        return f"token {src_id} of {self.src_name} has no mapping: {self.dst_name} cannot spell its bytes"

    def _check_id(self, src_id: int) -> None:
        if not 0 <= src_id < len(self):
            raise ValueError(f"src_id: {src_id} is outside the source vocabulary of {self.src_name} (size {len(self)})")

    def _bound_vocabs(self, what: str) -> tuple[_Vocab, _Vocab]:
        if self._tokenizers is None:
            raise ValueError(
                f"{what} needs the tokenizers: use VocabMap.load(path, src=..., dst=...) or .check(src, dst)"
            )
        if self._vocabs is None:
            self._vocabs = (_read_vocab(self._tokenizers[0]), _read_vocab(self._tokenizers[1]))
        return self._vocabs

    # ---- saving and loading

    def check(self, src: PreTrainedTokenizerBase, dst: PreTrainedTokenizerBase) -> None:
        """Raise VocabMapMismatchError unless `src` and `dst` are the tokenizers this map was built for (same
        fingerprints); then keep them for canonical conversion."""
        for side, role, tok, name in ((0, "source", src, self.src_name), (1, "target", dst, self.dst_name)):
            expected, actual = self._fingerprint(side), tokenizer_fingerprint(tok)
            if actual != expected:
                raise VocabMapMismatchError(
                    f"vocab map was built for {role} tokenizer {name} (fingerprint {expected}), but the given "
                    f"{role} tokenizer {getattr(tok, 'name_or_path', '')} has fingerprint {actual}; rebuild the map "
                    "with VocabMap.build(src, dst)"
                )
        self._tokenizers, self._vocabs = (src, dst), None

    def save(self, path: str | os.PathLike) -> Path:
        """Write the map to `path` (`.safetensors`, or `.json` for a readable copy) atomically; returns the path."""
        path = Path(path)
        stats = self.stats()
        header = {
            "format": FORMAT,
            "kind_names": list(KINDS),
            "normalisation": NORMALISATION,
            "src": {"name": self.src_name, "fingerprint": self.src_fingerprint, "strips": self.src_strips},
            "dst": {
                "name": self.dst_name,
                "fingerprint": self.dst_fingerprint,
                "strips": self.dst_strips,
                "size": self.dst_size,
            },
            "specials": self.specials,
            "first": {str(i): ids for i, ids in sorted(self.first.items())},
            "stats": {k: v for k, v in stats.items() if k not in ("source", "target", "specials")},
        }
        arrays = {"kinds": self.kinds, "offsets": self.offsets, "targets": self.targets, "partner": self.partner}
        if path.suffix == ".safetensors":
            from safetensors.numpy import save

            data = save(arrays, metadata={"vocab_map": json.dumps(header, ensure_ascii=False)})
        elif path.suffix == ".json":
            data = json.dumps(header | {k: v.tolist() for k, v in arrays.items()}, ensure_ascii=False).encode()
        else:
            raise ValueError(f"path: {path} must end in .safetensors or .json")
        return atomic_write_bytes(path, data)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        src: PreTrainedTokenizerBase | None = None,
        dst: PreTrainedTokenizerBase | None = None,
    ) -> VocabMap:
        """Read a map written by `save`. With `src` and `dst`, `check` them (a mismatch raises
        VocabMapMismatchError naming both fingerprints). A file that is not a whole map (empty, truncated, another
        format) raises ValueError naming it."""
        path = Path(path)
        if (src is None) != (dst is None):
            raise ValueError("src, dst: give both tokenizers or neither")
        if path.suffix not in (".safetensors", ".json"):
            raise ValueError(f"path: {path} must end in .safetensors or .json")
        if path.stat().st_size == 0:
            raise ValueError(f"{path}: empty file, not a vocabulary map; rebuild it with `tokenmap build`")
        header, arrays = _read_map_file(path)
        if header.get("format") != FORMAT or header.get("kind_names") != list(KINDS):
            raise ValueError(f"{path}: format {header.get('format')!r}, expected {FORMAT!r}")
        try:
            s, d = header["src"], header["dst"]
            vm = cls(
                s["name"],
                d["name"],
                s["strips"],
                d["strips"],
                d["size"],
                first={int(i): ids for i, ids in header["first"].items()},
                specials=header["specials"],
                **arrays,
            )
            vm._fingerprints = [s["fingerprint"], d["fingerprint"]]
        except KeyError as error:
            raise ValueError(f"{path}: damaged vocabulary map, no key {error} in its header") from None
        if src is not None:
            vm.check(src, dst)
        return vm

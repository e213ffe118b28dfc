"""VocabMap on the real tokenizers: byte tables, match kinds, special table, conversion fidelity, save/load."""

from __future__ import annotations

import functools
import itertools
import random
import unicodedata

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import real_tokenizer
from tokenmap.assets import tokenizer_fingerprint
from tokenmap.vocab_map import KINDS, TEXT_KINDS, VocabMap, VocabMapMismatchError, _read_vocab

FAMILIES = ["qwen3", "llama3", "gemma2", "deepseek-v2", "deepseek-v3", "mistral"]
# Every family as source and as target, and each leading-space case: byte-level <-> sentencepiece, a target whose
# decoder strips a leading space (mistral), a source whose decoder does, and neither.
PAIRS = [("qwen3", d) for d in FAMILIES if d != "qwen3"] + [
    ("gemma2", "qwen3"),
    ("mistral", "qwen3"),
    ("deepseek-v3", "qwen3"),
    ("mistral", "gemma2"),
    ("llama3", "mistral"),
]
ALL_PAIRS = [p for p in itertools.permutations(FAMILIES, 2) if p not in PAIRS]

CORPUS = [
    "Hello world",
    " leading space",
    "  two leading spaces",
    "\n\nnewlines first\n",
    "\ttabbed\tcode",
    "今天天气很好，我们去公园散步吧。",
    "语音转写：这是一个测试 with English mixed in 123 and 4567.",
    "def f(x):\n    return x ** 2  # 平方\n",
    'if (a != b) { printf("%d\\n", a); }',
    "emoji 🙂🎉👍🏽 👨‍👩‍👧‍👦 🇨🇳 ✅",
    "全角标点！？（括号）「引号」……——",
    "Tiếng Việt có dấu: Nguyễn, được, người",
    "Vietnamese decomposed: Nguye\u0302\u0303n",
    "日本語のテキストとカタカナ、한국어 문장도 있습니다.",
    "مرحبا بالعالم",
    "Ünïcödé naïve café façade — ½ ℃ ﬁ",
    "   ",
    "a",
    "x" * 300,
    "URL https://example.com/path?q=1&r=2#frag",
    "混合mixed文本text交替alternating",
    "trailing spaces   ",
    "\u3000全角空格\u3000和\xa0不换行空格",
]
TEXT = st.one_of(
    st.sampled_from(CORPUS),
    st.text(max_size=40),
    st.lists(st.sampled_from(CORPUS + ["你好", " ", "\n", "🙂", "ab", "é", "e\u0301", "\t"]), max_size=6).map("".join),
)


@functools.cache
def vocab_map(src: str, dst: str) -> VocabMap:
    return VocabMap.build(real_tokenizer(src), real_tokenizer(dst))


@functools.cache
def vocab(name: str):
    return _read_vocab(real_tokenizer(name))


def encode(name: str, text: str) -> list[int]:
    """Text as the source tokenizer encodes it; text that spells a control token stays text."""
    return real_tokenizer(name).encode(text, add_special_tokens=False, split_special_tokens=True)


def assert_same_text(src: str, dst: str, src_ids: list[int], canonical: bool = False) -> list[int]:
    dst_ids = vocab_map(src, dst).convert(src_ids, canonical=canonical)
    assert real_tokenizer(dst).decode(dst_ids) == real_tokenizer(src).decode(src_ids), (src, dst, src_ids)
    return dst_ids


# ---- byte tables


@pytest.mark.parametrize("name", FAMILIES)
def test_token_bytes_equal_the_tokenizers_own_decoding(name):
    """A text token's bytes (from its piece string) are what the tokenizer decodes that token to (a sample of
    20,000 tokens and every added token)."""
    tok = real_tokenizer(name)
    table = vocab(name)
    text_ids = [i for i, b in enumerate(table.pieces) if b is not None]
    ids = sorted(set(random.Random(0).sample(text_ids, 20_000)) | (set(tok.added_tokens_decoder) & set(text_ids)))
    decoded = tok.backend_tokenizer.decode_batch([[i] for i in ids], skip_special_tokens=False)
    for i, text in zip(ids, decoded):
        expected = table.pieces[i].decode(errors="replace")
        assert text == (expected[1:] if table.strips and expected[:1] == " " else expected), (name, i)
    assert table.strips == (name == "mistral")
    assert all(table.pieces[i] is None for i in table.controls)


def test_control_tokens_are_added_tokens_except_whitespace_runs():
    gemma = vocab("gemma2")
    assert {106: "<start_of_turn>", 107: "<end_of_turn>", 2: "<bos>"}.items() <= gemma.controls.items()
    assert gemma.pieces[108] == b"\n" and gemma.pieces[139] == b"  "  # added, but text
    qwen = vocab("qwen3")
    assert set(qwen.controls) == set(range(151643, 151669))


# ---- match kinds and statistics


def test_identity_map_is_all_exact():
    stats = vocab_map("qwen3", "qwen3").stats()
    assert stats["exact"] == stats["text_tokens"] == 151643
    assert stats["normalised"] == stats["decomposed"] == stats["unmappable"] == 0
    assert stats["special_mapped"] == 26 and stats["special_unmapped"] == 0
    src, dst = vocab_map("qwen3", "qwen3").pairs()
    assert np.array_equal(src, dst) and len(src) == 151643


@pytest.mark.parametrize("src,dst", PAIRS)
def test_stats_are_consistent(src, dst):
    stats = vocab_map(src, dst).stats()
    assert sum(stats[k] for k in TEXT_KINDS) == stats["text_tokens"]
    assert stats["text_tokens"] + stats["special_mapped"] + stats["special_unmapped"] == stats["source"]["size"]
    if dst != "deepseek-v2":  # every other target spells any byte (byte-level or byte fallback)
        assert stats["unmappable"] == 0
    assert stats["exact"] > stats["text_tokens"] * 0.15
    assert stats["source"]["fingerprint"] != stats["target"]["fingerprint"]


def test_bytes_the_target_lacks_are_unmappable():
    """DeepSeek-V2 has no tokens for the bytes that never occur in UTF-8 (C0, C1, F5-FF): Qwen3's tokens for
    those bytes cannot be spelled, and converting one is an error naming it."""
    vm = vocab_map("qwen3", "deepseek-v2")
    qwen = vocab("qwen3")
    unmappable = np.flatnonzero(vm.kinds == KINDS.index("unmappable")).tolist()
    assert sorted(qwen.pieces[i][0] for i in unmappable) == [0xC0, 0xC1, *range(0xF5, 0x100)]
    assert vm.lookup(unmappable[0]).target_ids == ()
    with pytest.raises(ValueError, match=f"token {unmappable[0]} of .* cannot spell its bytes"):
        vm.convert([unmappable[0]])


def test_qwen3_to_llama3_shares_most_tokens():
    stats = vocab_map("qwen3", "llama3").stats()
    assert stats["exact"] > 100_000  # both byte-level BPE with a large common English/code core
    assert stats["decomposed"] > 30_000  # Qwen3's Chinese words
    assert 1 < stats["mean_decomposed_length"] < 4


def test_exact_and_decomposed_tokens_spell_the_same_bytes():
    vm = vocab_map("qwen3", "gemma2")
    qwen, gemma = vocab("qwen3"), vocab("gemma2")
    rng = random.Random(0)
    for i in rng.sample(range(151643), 2000):
        match = vm.lookup(i)
        assert b"".join(gemma.pieces[j] for j in match.target_ids) == qwen.pieces[i]
        assert (len(match.target_ids) == 1) == (match.kind == "exact")


def test_partial_utf8_pieces_map_at_byte_level():
    """Byte-level pieces that are not UTF-8 alone map to sentencepiece byte-fallback pieces, and a sequence of
    them still decodes to the character."""
    qwen = vocab("qwen3")
    gemma = real_tokenizer("gemma2")
    vm = vocab_map("qwen3", "gemma2")
    partial = [i for i, b in enumerate(qwen.pieces) if b and len(b) == 1 and b[0] >= 0x80]
    assert len(partial) == 128
    for i in partial:
        (j,) = vm.lookup(i).target_ids
        assert gemma.convert_ids_to_tokens(j) == f"<0x{qwen.pieces[i][0]:02X}>"
    ids = encode("qwen3", "𝄞 and 🙂")  # 4-byte characters split across pieces
    assert any(qwen.pieces[i] and not _is_utf8(qwen.pieces[i]) for i in ids)
    assert_same_text("qwen3", "gemma2", ids)


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True


def test_normalised_tokens_have_an_nfkc_partner_and_still_convert_exactly():
    vm = vocab_map("qwen3", "llama3")
    qwen, llama = vocab("qwen3"), vocab("llama3")
    normalised = np.flatnonzero(vm.kinds == KINDS.index("normalised"))
    assert len(normalised) > 500
    for i in normalised[:200].tolist():
        match = vm.lookup(i)
        text = qwen.pieces[i].decode()
        assert unicodedata.normalize("NFKC", text).encode() == llama.pieces[match.partner] != qwen.pieces[i]
        assert b"".join(llama.pieces[j] for j in match.target_ids) == qwen.pieces[i]
    src, dst = vm.pairs(["normalised"])
    assert len(src) == len(normalised)


# ---- special tokens


def test_special_table():
    table = {s["content"]: s["target_id"] for s in vocab_map("qwen3", "llama3").specials}
    assert table["<|im_end|>"] is None and table["<|endoftext|>"] is None
    table = {s["content"]: s["target_id"] for s in vocab_map("qwen3", "deepseek-v3").specials}
    assert table["<think>"] == 128798 and table["</think>"] == 128799 and table["<|im_end|>"] is None
    table = {s["content"]: s["target_id"] for s in vocab_map("llama3", "qwen3").specials}
    assert len(table) == 256 and set(table.values()) == {None}
    table = {s["content"]: (s["id"], s["target_id"]) for s in vocab_map("qwen3", "qwen3").specials}
    assert table["<|im_end|>"] == (151645, 151645)


def test_specials_convert_through_the_table_and_unmapped_ones_are_named():
    vm = vocab_map("qwen3", "deepseek-v3")
    think = real_tokenizer("qwen3").convert_tokens_to_ids("<think>")
    ids = [think, *encode("qwen3", "\n推理\n"), think + 1]
    assert vm.convert(ids)[0] == 128798 and vm.convert(ids)[-1] == 128799
    assert_same_text("qwen3", "deepseek-v3", ids)
    with pytest.raises(ValueError, match=r"control token '<\|im_end\|>' \(id 151645\).*remove it"):
        vocab_map("qwen3", "llama3").convert([*encode("qwen3", "hi"), 151645])


def test_text_never_becomes_a_target_control_token():
    """Text that spells a control token of the target is converted as text, not as that token."""
    ids = encode("qwen3", "<start_of_turn>user <｜User｜>")
    for dst in ("gemma2", "deepseek-v3"):
        out = assert_same_text("qwen3", dst, ids)
        assert not set(out) & set(vocab(dst).controls)


def test_out_of_range_and_negative_ids_are_rejected():
    vm = vocab_map("qwen3", "llama3")
    for bad in (151669, -1):
        with pytest.raises(ValueError, match=f"ids: {bad} is outside the source vocabulary"):
            vm.convert([9707, bad])


# ---- conversion fidelity


@pytest.mark.parametrize("src,dst", PAIRS)
def test_convert_round_trips_the_corpus(src, dst):
    for text in CORPUS:
        assert_same_text(src, dst, encode(src, text))


@pytest.mark.parametrize("src,dst", PAIRS)
@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(text=TEXT)
def test_convert_round_trips_generated_text(src, dst, text):
    assert_same_text(src, dst, encode(src, text))


@pytest.mark.parametrize("src,dst", PAIRS)
def test_convert_round_trips_windows_that_start_anywhere(src, dst):
    """Windows of a long tokenised text: they start mid-word, mid-space run and split multi-piece characters."""
    ids = encode(src, "".join(CORPUS))
    rng = random.Random(1)
    checked = 0
    for _ in range(300):
        start = rng.randrange(len(ids))
        window = ids[start : start + rng.randint(1, 12)]
        if "\ufffd" not in real_tokenizer(src).decode(window):  # windows that cut a character have no text form
            assert_same_text(src, dst, window)
            checked += 1
    assert checked > 200


@pytest.mark.parametrize("text", [" Hello", "  Hello", "Hello", " ", "\n x"])
@pytest.mark.parametrize("src,dst", [("mistral", "qwen3"), ("qwen3", "mistral"), ("mistral", "gemma2")])
def test_leading_space_conventions(src, dst, text):
    """Mistral's decoder drops one leading space: a source that does so, or a target, must not gain or lose one."""
    assert_same_text(src, dst, encode(src, text))


@pytest.mark.parametrize("src,dst", [("qwen3", "llama3"), ("qwen3", "gemma2"), ("llama3", "mistral")])
def test_canonical_mode_is_the_targets_own_tokenisation(src, dst):
    """Canonical ids are the target's own encoding of the text wherever that encoding decodes back to the text."""
    same = 0
    for text in CORPUS:
        ids = encode(src, text)
        canonical = assert_same_text(src, dst, ids, canonical=True)
        decoded = real_tokenizer(src).decode(ids)
        own = encode(dst, decoded)
        if real_tokenizer(dst).decode(own) == decoded:
            assert canonical == own, text
            same += 1
    assert same >= len(CORPUS) - 3


def test_canonical_mode_falls_back_to_exact_ids_where_re_encoding_changes_the_text():
    # Qwen3 NFC-normalises its input: re-encoding decomposed text would compose it.
    ids = encode("llama3", "Nguye\u0302\u0303n")
    vm = vocab_map("llama3", "qwen3")
    assert vm.convert(ids, canonical=True) == vm.convert(ids)
    assert_same_text("llama3", "qwen3", ids, canonical=True)
    # Mistral prepends a space to the text it encodes; after a control token that would add one.
    ids = [1, *encode("mistral", "Hello")]
    assert VocabMap.build(real_tokenizer("mistral"), real_tokenizer("mistral")).convert(ids, canonical=True) == ids


@pytest.mark.slow
@pytest.mark.parametrize("src,dst", ALL_PAIRS)
def test_convert_round_trips_the_corpus_all_pairs(src, dst):
    for text in CORPUS:
        ids = encode(src, text)
        assert_same_text(src, dst, ids)
        assert_same_text(src, dst, ids, canonical=True)


# ---- save and load


@pytest.mark.parametrize("suffix", [".safetensors", ".json"])
def test_save_load_round_trip(tmp_path, suffix):
    vm = vocab_map("mistral", "qwen3")  # has a `first` table
    path = vm.save(tmp_path / f"map{suffix}")
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # atomic: no temporary file left
    loaded = VocabMap.load(path)
    for name in ("kinds", "offsets", "targets", "partner"):
        assert np.array_equal(getattr(loaded, name), getattr(vm, name)), name
        assert getattr(loaded, name).dtype == getattr(vm, name).dtype
    assert loaded.first == vm.first and loaded.specials == vm.specials and len(vm.first) > 10_000
    assert loaded.stats() == vm.stats()
    ids = encode("mistral", " 你好 world 🙂")
    assert loaded.convert(ids) == vm.convert(ids)
    with pytest.raises(ValueError, match="needs the tokenizers"):
        loaded.convert(ids, canonical=True)
    loaded.check(real_tokenizer("mistral"), real_tokenizer("qwen3"))
    assert loaded.convert(ids, canonical=True) == vm.convert(ids, canonical=True)


def test_loading_for_other_tokenizers_names_both_fingerprints(tmp_path):
    vm = vocab_map("qwen3", "llama3")
    path = vm.save(tmp_path / "map.safetensors")
    VocabMap.load(path, src=real_tokenizer("qwen3"), dst=real_tokenizer("llama3"))
    other = real_tokenizer("gemma2")
    with pytest.raises(VocabMapMismatchError) as err:
        VocabMap.load(path, src=real_tokenizer("qwen3"), dst=other)
    message = str(err.value)
    assert "target tokenizer" in message
    assert vm.dst_fingerprint in message and tokenizer_fingerprint(other) in message
    with pytest.raises(VocabMapMismatchError, match="source tokenizer"):
        VocabMap.load(path).check(real_tokenizer("llama3"), real_tokenizer("llama3"))


def test_save_rejects_an_unknown_suffix_and_load_a_foreign_file(tmp_path):
    vm = vocab_map("qwen3", "llama3")
    with pytest.raises(ValueError, match=r"must end in \.safetensors or \.json"):
        vm.save(tmp_path / "map.bin")
    foreign = tmp_path / "foreign.json"
    foreign.write_text('{"format": "something-else"}')
    with pytest.raises(ValueError, match="expected 'tokenmap.vocab_map/1'"):
        VocabMap.load(foreign)


def test_an_unsupported_decoder_is_named():
    from tokenizers import decoders
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_object=real_tokenizer("mistral").backend_tokenizer)
    tok.backend_tokenizer.decoder = decoders.Metaspace()
    with pytest.raises(ValueError, match=r"unsupported decoder step \{\"type\": \"Metaspace\""):
        VocabMap.build(tok, real_tokenizer("qwen3"))

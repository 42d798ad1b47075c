"""Pair assembly reproduces the tokenizers library exactly: its longest_first truncation rule and
the special tokens of every common post-processor, on both truncation sides."""

from __future__ import annotations

import functools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Encoding, Tokenizer, models, normalizers, pre_tokenizers, processors

from rerankd_server.scoring import pairs
from rerankd_server.scoring.pairs import (
    PairEncoder,
    PairTemplate,
    TokenizerUnsupported,
    as_ascii,
    ascii_variant,
    clip,
    clone,
    plain_ascii,
    truncated_lengths,
)
from rerankd_server.tiny_models import build_tokenizer

VOCAB = {"[UNK]": 0, "[CLS]": 1, "[SEP]": 2, "<s>": 3, "</s>": 4, "a": 5, "b": 6, "list": 7}
VOCAB |= {"files": 8, "use": 9, "ls": 10}


def tokenizer(processor: processors.PostProcessor | None) -> Tokenizer:
    tok = Tokenizer(models.WordLevel(VOCAB, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if processor is not None:
        tok.post_processor = processor
    return tok


BERT = processors.TemplateProcessing(
    single="[CLS] $A [SEP]",
    pair="[CLS] $A [SEP] $B:1 [SEP]:1",
    special_tokens=[("[CLS]", 1), ("[SEP]", 2)],
)
PROCESSORS = {
    "bert template": BERT,
    "BertProcessing": processors.BertProcessing(("[SEP]", 2), ("[CLS]", 1)),
    "RobertaProcessing": processors.RobertaProcessing(("</s>", 4), ("<s>", 3)),
    "no special tokens": None,
    "ByteLevel": processors.ByteLevel(trim_offsets=True),
    "a sequence": processors.Sequence([processors.ByteLevel(trim_offsets=False), BERT]),
    "suffix only": processors.TemplateProcessing(
        single="$A </s>", pair="$A $B </s>", special_tokens=[("</s>", 4)]
    ),
}


@settings(max_examples=300, deadline=None)
@given(
    st.integers(0, 30),
    st.integers(0, 30),
    st.integers(4, 25),
    st.sampled_from(["right", "left"]),
)
def test_truncated_lengths_are_the_tokenizers_own(
    first: int, second: int, max_len: int, side: str
) -> None:
    tok = tokenizer(BERT)
    tok.enable_truncation(max_len, strategy="longest_first", direction=side)
    encoding = tok.encode(" ".join(["a"] * first), " ".join(["b"] * second))
    kept = (encoding.ids.count(5), encoding.ids.count(6))
    assert truncated_lengths(first, second, max_len - 3) == kept


@pytest.mark.parametrize("name", sorted(PROCESSORS))
@pytest.mark.parametrize("max_len", [5, 9, 16])
def test_assembled_pairs_equal_the_tokenizer_for_every_post_processor(
    name: str, max_len: int
) -> None:
    backend = tokenizer(PROCESSORS[name])
    plain = clone(backend, None, "right", False)
    encoder = PairEncoder(plain, max_len, uses_types=True)  # checks itself too
    texts = ["", "a", "list files", "use ls " * 3, "a b " * 9]
    pairs = [(q, d) for q in texts for d in texts]
    for side in ("right", "left"):
        reference = Tokenizer.from_str(backend.to_str())
        reference.enable_truncation(max_len, strategy="longest_first", direction=side)
        expected = reference.encode_batch(pairs)
        ids, types, truncated = encoder.encode(pairs, side)
        assert ids == [e.ids for e in expected]
        assert types == [e.type_ids for e in expected]
        assert truncated == [bool(e.overflowing) for e in expected]


def test_derived_templates() -> None:
    bert = PairTemplate.derive(tokenizer(BERT))
    assert bert == PairTemplate((1,), (2,), (2,), (0, 0, 0, 1, 1))
    roberta = PairTemplate.derive(tokenizer(PROCESSORS["RobertaProcessing"]))
    assert roberta == PairTemplate((3,), (4, 4), (4,), (0, 0, 0, 0, 0))
    # Without a post-processor the tokenizer still marks the second text with type id 1.
    assert PairTemplate.derive(tokenizer(None)) == PairTemplate((), (), (), (0, 0, 0, 1, 0))


def test_a_post_processor_that_splits_a_pair_otherwise_is_refused() -> None:
    reversed_pair = processors.TemplateProcessing(
        single="$A", pair="$B:1 [SEP] $A", special_tokens=[("[SEP]", 2)]
    )
    with pytest.raises(TokenizerUnsupported):
        PairEncoder(clone(tokenizer(reversed_pair), None, "right", False), 16, uses_types=False)


@pytest.mark.parametrize(
    ("text", "side", "expected"),
    [
        ("short", "right", "short"),
        ("aaaa bbbb cccc dddd", "right", "aaaa bbbb"),  # at the last space before the limit
        ("aaaa bbbb cccc dddd", "left", "cccc dddd"),
        ("文字検索文字検索文字", "right", "文字検索文字"),  # no space: at the limit itself
        ("文字検索文字検索文字", "left", "文字検索文字"),
        ("aaaa\u00a0bbbb\u3000cccc\rdddd", "right", "aaaa\u00a0bbbb"),  # any whitespace
    ],
)
def test_clip(text: str, side: str, expected: str) -> None:
    limit = 12 if " " in text or "\u00a0" in text else 6
    if text == "short":
        assert clip(text, limit, side) is text
    else:
        assert clip(text, limit, side) == expected


@functools.cache
def _tiny_bert() -> str:
    """The tiny models' WordPiece tokenizer, trained once (it takes a while) and kept as JSON."""
    return str(build_tokenizer("bert").backend_tokenizer.to_str())


def bert_tokenizer(lowercase: bool, lower_first: bool = False) -> Tokenizer:
    """The tiny models' WordPiece tokenizer with BERT's normalizer (cased or not), optionally
    behind the lower-casing ``clone`` adds when a model's config asks for it."""
    backend = Tokenizer.from_str(_tiny_bert())
    backend.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase
    )
    return clone(backend, None, "right", lower_first)


#: Every ASCII character, the printable ones (words, punctuation, specials' text) most often.
ASCII_TEXT = st.lists(
    st.one_of(
        st.sampled_from(["list", "Files", "LS", "[SEP]", "[CLS]", "##s", " ", "  "]),
        st.characters(min_codepoint=32, max_codepoint=126),
        st.characters(max_codepoint=127),
    ),
    max_size=40,
).map("".join)


@settings(max_examples=400, deadline=None)
@given(ASCII_TEXT, st.sampled_from([(True, False), (False, False), (False, True)]))
def test_the_ascii_copy_gives_the_tokenizers_ids_and_offsets(
    text: str, normalization: tuple[bool, bool]
) -> None:
    full = bert_tokenizer(*normalization)
    fast = ascii_variant(full)
    assert fast is not None
    if not plain_ascii(text):  # controls BERT's normalizer removes: the full tokenizer's
        assert any((ord(c) < 32 and c not in "\t\n\r") or ord(c) == 127 for c in text)
        return
    expected = full.encode(text, add_special_tokens=False)
    got = fast.encode(as_ascii(text), add_special_tokens=False)
    assert (got.ids, got.offsets) == (expected.ids, expected.offsets)


@functools.cache
def _ascii_encoder() -> tuple[PairEncoder, Tokenizer]:
    """A lower-casing BERT tokenizer's pair encoder (max length 12), and the tokenizer itself
    truncating as CrossEncoder does: built once, as neither changes."""
    backend = bert_tokenizer(True)
    reference = Tokenizer.from_str(backend.to_str())
    reference.enable_truncation(12, strategy="longest_first", direction="right")
    return PairEncoder(backend, 12, uses_types=True), reference


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(ASCII_TEXT, ASCII_TEXT), min_size=1, max_size=6))
def test_pairs_through_the_ascii_copy_equal_the_tokenizer(pairs: list[tuple[str, str]]) -> None:
    encoder, reference = _ascii_encoder()
    expected = reference.encode_batch(pairs)
    ids, types, truncated = encoder.encode(pairs, "right")
    assert ids == [e.ids for e in expected] and types == [e.type_ids for e in expected]
    assert truncated == [bool(e.overflowing) for e in expected]


def test_only_berts_cleaning_normalizer_gets_an_ascii_copy() -> None:
    assert ascii_variant(bert_tokenizer(True)) is not None
    others = [
        None,
        normalizers.NFC(),
        normalizers.Lowercase(),
        normalizers.BertNormalizer(clean_text=False),
        normalizers.Sequence([normalizers.NFD(), normalizers.BertNormalizer()]),
    ]
    for normalizer in others:
        tok = bert_tokenizer(True)
        tok.normalizer = normalizer
        assert ascii_variant(tok) is None, normalizer


def test_an_ascii_copy_that_encodes_otherwise_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """The copy is checked against the tokenizer at load; one that differs (here, one that
    forgets to lower-case) is dropped and every text takes the tokenizer itself."""
    backend = bert_tokenizer(True)

    def unlowered(tokenizer: Tokenizer) -> Tokenizer:
        copy = Tokenizer.from_str(tokenizer.to_str())
        copy.normalizer = None
        return copy

    monkeypatch.setattr(pairs, "ascii_variant", unlowered)
    encoder = PairEncoder(backend, 12, uses_types=True)
    reference = Tokenizer.from_str(backend.to_str())
    reference.enable_truncation(12, strategy="longest_first", direction="right")
    pair = ("List FILES", "Use LS")
    assert encoder.encode([pair], "right")[0] == [reference.encode(*pair).ids]


@pytest.mark.parametrize("template", ["{{ messages[0].content }}", "{{ m.content[0].text }}"])
def test_the_message_format_is_inferred_as_sentence_transformers_infers_it(template: str) -> None:
    from sentence_transformers.base import modality

    for model_type, expected in modality.KNOWN_MODEL_TYPES_MESSAGE_FORMATS.items():
        assert pairs.infer_message_format(template, model_type) == expected, model_type
    assert pairs.infer_message_format("{{ m.content[0].text }}", "qwen3") == "structured"
    assert pairs.infer_message_format("{{ messages[0].content }}", "qwen3") == "flat"


@pytest.mark.parametrize("side", ["right", "left"])
def test_a_long_query_of_few_tokens_is_tokenized_whole_once_a_call(
    monkeypatch: pytest.MonkeyPatch, side: str
) -> None:
    """Clipping cannot settle such a query (its clipped part has fewer tokens than the model
    reads), so it is tokenized whole; once, not once for each of its documents."""
    plain = clone(bert_tokenizer(lowercase=True), None, "right", False)
    encoder = PairEncoder(plain, 16, uses_types=True)
    query = "list" + " " * (16 * pairs.CLIP_CHARS_PER_TOKEN * 4) + "files"
    documents = [f"use ls {i}" for i in range(50)]
    tokenized: list[str] = []
    encode = encoder._encode

    def counting(texts: list[str], offsets: list[bool]) -> list[Encoding]:
        tokenized.extend(texts)
        return encode(texts, offsets)

    monkeypatch.setattr(encoder, "_encode", counting)
    ids, _, _ = encoder.encode([(query, d) for d in documents], side)
    reference = clone(bert_tokenizer(lowercase=True), 16, side, False)
    assert ids == [e.ids for e in reference.encode_batch([(query, d) for d in documents])]
    assert tokenized.count(query) == 1


@pytest.mark.parametrize(
    ("tail", "cut"),
    [
        ("=", False),  # one word: the kept tokens lie in the word the cut split
        ("==.", True),  # short words: the one the cut split ends at once
    ],
)
def test_start_truncation_keeps_no_token_of_a_word_the_cut_split(
    monkeypatch: pytest.MonkeyPatch, tail: str, cut: bool
) -> None:
    """BPE merges a run of one character in pairs from its start, so a word cut at its start
    can end in other tokens: the kept tokens must lie past the word the cut split."""
    letters = {c: i for i, c in enumerate("abcdefghijklmnopqrstuvwxyz.", start=2)}
    bpe = Tokenizer(models.BPE({"=": 0, "==": 1, **letters}, merges=[("=", "=")]))
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(".", "isolated")]
    )
    encoder = PairEncoder(clone(bpe, None, "right", False), 64, uses_types=False)
    limit = 64 * pairs.CLIP_CHARS_PER_TOKEN
    run = "x " * 3 + tail * (2 * limit // len(tail)) + "="
    tokenized: list[str] = []
    encode = encoder._encode
    monkeypatch.setattr(
        encoder, "_encode", lambda texts, offsets: tokenized.extend(texts) or encode(texts, offsets)
    )
    reference = clone(bpe, 64, "left", False)
    for pair in (("x", run), (run, "x")):
        expected = reference.encode(*pair).ids
        assert encoder.encode([pair], "left")[0] == [expected]
    assert (run in tokenized) is not cut

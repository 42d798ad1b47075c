"""Tokenize (query, document) pairs exactly as a cross-encoder's tokenizer does, with work bounded
by what the model can read.

``CrossEncoder.predict`` calls the tokenizer on every pair with ``longest_first`` truncation at
the model's max length. Done literally, a request that pairs one 64 KiB query with 1,000
documents tokenizes the query 1,000 times, and a 500 KB document is tokenized whole although the
model reads a few hundred of its tokens. ``PairEncoder`` gives the same ids with less work:

* every distinct query of a call is tokenized once, without special tokens, and each document
  once; each pair is assembled from the two id lists by the tokenizer's own rules:
  ``truncated_lengths`` (longest_first) and ``PairTemplate`` (the post-processor's special
  tokens and type ids), which is derived from the tokenizer and checked against it at load;
* a text far longer than the model can read is cut (``clip``) before tokenizing, and the cut is
  checked: it changed nothing when truncation kept only tokens that end well before it (the
  tokenizers' pre-tokenization and models are local to words). Otherwise the whole text is
  tokenized, as before;
* with BERT's normalizer (MiniLM and the other BERT-style cross-encoders), a text of printable
  ASCII is tokenized by a copy that only lower-cases (``ascii_variant``): on such text BERT's
  normalizer does nothing else, and it was a third of the tokenizer's time.

``ChatEncoder`` does the same for causal-LM rerankers that read a pair through a chat template:
each pair is rendered (``tokenizer.apply_chat_template``, as Sentence Transformers does), the
rendered text tokenized without special tokens and truncated, and the template's suffix written
back over the end of a truncated row, so the model always reads its answer prompt last.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tokenizers import Encoding, Tokenizer
from tokenizers.normalizers import Lowercase
from tokenizers.normalizers import Sequence as NormalizerSequence

#: A text is cut to this many characters per model input token before tokenizing (real text has
#: 3-6 characters per token); the cut is checked, and undone when it could matter.
CLIP_CHARS_PER_TOKEN = 32
CLIP_MARGIN = 256  # characters between the last kept token and the cut
_SPACE = re.compile(r"\s")

Encoded = tuple[list[list[int]], list[list[int]] | None, list[bool]]  # ids, type ids, truncated


def clone(backend: Tokenizer, max_len: int | None, side: str, lower: bool) -> Tokenizer:
    """An independent copy of the tokenizer that truncates as CrossEncoder does (``max_len``
    None: no truncation), lower-casing first when the model's config asks for it."""
    copy = Tokenizer.from_str(backend.to_str())
    copy.no_padding()
    if max_len is None:
        copy.no_truncation()
    else:
        copy.enable_truncation(max_len, stride=0, strategy="longest_first", direction=side)
    if lower:
        current = copy.normalizer
        copy.normalizer = (
            NormalizerSequence([Lowercase(), current]) if current is not None else Lowercase()
        )
    return copy


#: Characters BERT's normalizer removes from ASCII text (control characters but tab, newline
#: and carriage return, which it reads as spaces).
_ASCII_REMOVED = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_AS_SPACE = str.maketrans("\t\n\r", "   ")


def ascii_variant(tokenizer: Tokenizer) -> Tokenizer | None:
    """A copy of ``tokenizer`` for texts ``plain_ascii`` accepts, after ``as_ascii``: the same
    ids and offsets a third faster, when its normalizer is BERT's (cleaning text), alone or
    after lower-casing. On printable ASCII, BERT's normalizer only turns tab, newline and
    carriage return into spaces (``as_ascii`` does) and lower-cases if told; accents, Chinese
    characters and other controls do not occur. None for any other normalizer."""
    config = json.loads(tokenizer.to_str()).get("normalizer")
    steps = config.get("normalizers", []) if config and config["type"] == "Sequence" else [config]
    lower, bert = False, False
    for step in steps:
        if step and step["type"] == "Lowercase":
            lower = True
        elif step and step["type"] == "BertNormalizer" and step["clean_text"]:
            lower, bert = lower or step["lowercase"], True
        else:
            return None
    if not bert:
        return None
    copy = Tokenizer.from_str(tokenizer.to_str())
    copy.normalizer = Lowercase() if lower else None
    return copy


#: Texts the ASCII copy must encode as the tokenizer does before it is used.
_ASCII_PROBES = [
    "List Files\tin a\nDirectory\r\n",
    "ls -la /usr/bin; echo $HOME && exit 0",
    "[CLS] a [SEP] b [MASK] ##ing [UNK]",
    "  UPPER lower MiXeD 123 4.5 a-b_c  ",
    "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~",
]


def _same_encodings(fast: Tokenizer, full: Tokenizer, texts: list[str]) -> bool:
    got = fast.encode_batch([as_ascii(text) for text in texts], add_special_tokens=False)
    expected = full.encode_batch(texts, add_special_tokens=False)
    return all((a.ids, a.offsets) == (b.ids, b.offsets) for a, b in zip(got, expected, strict=True))


def plain_ascii(text: str) -> bool:
    """Whether ``text`` is ASCII without the control characters BERT's normalizer removes."""
    return text.isascii() and _ASCII_REMOVED.search(text) is None


def as_ascii(text: str) -> str:
    """``text`` with tab, newline and carriage return as spaces, as BERT's normalizer reads
    them (each one character for one: offsets stay the same)."""
    return text.translate(_AS_SPACE)


def clip(text: str, limit: int, side: str) -> str:
    """``text`` cut to about ``limit`` characters on the kept ``side`` (``right`` keeps the
    start), at a whitespace near the limit when there is one, else at the limit itself (see
    ``split_word``); or ``text`` itself (the same object) when it is short."""
    if len(text) <= limit:
        return text
    if side == "right":
        window = text[limit // 2 : limit]
        spaces = [m.start() for m in _SPACE.finditer(window)]
        return text[: limit // 2 + spaces[-1]] if spaces else text[:limit]
    start = len(text) - limit
    found = _SPACE.search(text, start, start + limit // 2)
    return text[found.start() + 1 :] if found else text[start:]


#: How far into a kept end ``split_word`` looks for the end of the word a cut split.
_WORD_WINDOW = 4 * CLIP_MARGIN


def split_word(tokenizer: Tokenizer, text: str, end: str) -> int:
    """Characters at the start of ``end`` (``text`` cut to its end by ``clip``) that belong
    to a word the cut split, whose tokens may then differ all through it (BPE pairs a run
    such as ``=====`` from its first character): the rest of that word as the tokenizer's
    normalizer and pre-tokenizer split words; none when the cut fell after a whitespace, all
    of ``end`` when that word runs past ``_WORD_WINDOW``."""
    if end is text or text[len(text) - len(end) - 1].isspace():
        return 0
    head = tokenizer.encode(end[:_WORD_WINDOW], add_special_tokens=False)
    words = head.word_ids
    for (start, _), word in zip(head.offsets, words, strict=True):
        if word != words[0]:
            return int(start)
    return len(end)


def truncated_lengths(first: int, second: int, budget: int) -> tuple[int, int]:
    """Tokens kept of each text by ``longest_first`` truncation to ``budget`` tokens (the max
    length less the special tokens), as the tokenizers library computes them: the shorter text
    is kept whole when the longer can give up enough, else each keeps half, the longer (or, on
    a tie, the second) getting the odd token."""
    if first + second <= budget:
        return first, second
    if min(first, second) > budget // 2:
        small, large = budget // 2, budget - budget // 2
        return (small, large) if first <= second else (large, small)
    return (first, budget - first) if first <= second else (budget - second, second)


@dataclass(frozen=True)
class PairTemplate:
    """The special tokens a post-processor puts around a pair, ``prefix A middle B suffix``,
    and the type id of each of the five parts."""

    prefix: tuple[int, ...]
    middle: tuple[int, ...]
    suffix: tuple[int, ...]
    types: tuple[int, int, int, int, int]

    @property
    def size(self) -> int:
        return len(self.prefix) + len(self.middle) + len(self.suffix)

    def ids(self, first: list[int], second: list[int]) -> list[int]:
        return [*self.prefix, *first, *self.middle, *second, *self.suffix]

    def type_ids(self, first: int, second: int) -> list[int]:
        p, a, m, b, s = self.types
        return (
            [p] * len(self.prefix)
            + [a] * first
            + [m] * len(self.middle)
            + [b] * second
            + [s] * len(self.suffix)
        )

    @staticmethod
    def derive(tokenizer: Tokenizer) -> PairTemplate | None:
        """The template ``tokenizer``'s post-processor applies to a pair, or None when its
        output is not of that shape."""
        out = tokenizer.encode("list files", "use ls", add_special_tokens=True)
        parts: list[tuple[int | None, list[int], list[int]]] = []  # (sequence, ids, type ids)
        for sequence, token, kind in zip(out.sequence_ids, out.ids, out.type_ids, strict=True):
            if not parts or parts[-1][0] != sequence:
                parts.append((sequence, [], []))
            parts[-1][1].append(token)
            parts[-1][2].append(kind)
        for at in (0, 2, 4):  # an absent part of the shape is empty
            if len(parts) < 5 and (at >= len(parts) or parts[at][0] is not None):
                parts.insert(at, (None, [], []))
        if [part[0] for part in parts] != [None, 0, None, 1, None]:
            return None
        if any(len(set(kinds)) > 1 for _, _, kinds in parts):
            return None
        p, a, m, b, s = (kinds[0] if kinds else 0 for _, _, kinds in parts)
        return PairTemplate(
            tuple(parts[0][1]), tuple(parts[2][1]), tuple(parts[4][1]), (p, a, m, b, s)
        )


@dataclass(frozen=True)
class _Text:
    """One text of a call, tokenized once: the ids that can matter and how many there were."""

    ids: list[int]  # the kept side's first (or last) ``budget`` ids
    count: int  # all its tokens (of the clipped text, when it was cut)
    offsets: list[tuple[int, int]] | None  # when it was cut: where its tokens lie
    length: int  # characters tokenized
    split: int = 0  # leading characters of a word the cut split (``split_word``)

    def settled(self, keep: int, other: int, side: str) -> bool:
        """Whether keeping ``keep`` tokens of this text (beside ``other`` tokens of the other)
        is what the whole text gives. An uncut text always is; a cut one when it is still the
        longer of the two (so truncation treats it alike) and its kept tokens lie well inside
        the cut."""
        if self.offsets is None or keep == 0:
            return True
        if self.count <= other or keep >= self.count:
            return False
        if side == "right":
            return self.offsets[keep - 1][1] < self.length - CLIP_MARGIN
        return self.offsets[self.count - keep][0] > self.split + CLIP_MARGIN


class TokenizerUnsupported(Exception):
    """The tokenizer's pair layout cannot be reproduced; the message says how it differs."""


class PairEncoder:
    """Tokenizes (query, document) pairs for one model; thread-safe.

    The tokenizer's own pair truncation is never used: it also builds every overflowing window
    of both texts, whose number grows with the product of their lengths (a long query and long
    documents took gigabytes).
    """

    def __init__(self, plain: Tokenizer, max_len: int, uses_types: bool, prompt: str = "") -> None:
        """``plain``: the model's tokenizer without truncation (``clone(..., None, ...)``),
        shared with the scorer's other uses. ``prompt``: the model's prompt, which Sentence
        Transformers prepends to each query.

        Raises:
            TokenizerUnsupported: the post-processor's pairs are not ``prefix A middle B
                suffix`` with one type id per part, or assembling them differs from the
                tokenizer.
        """
        self._max_len = max_len
        self._prompt = prompt
        self._plain = plain
        self._ascii = ascii_variant(plain)
        if self._ascii is not None and not _same_encodings(self._ascii, plain, _ASCII_PROBES):
            self._ascii = None  # the exact path, for a tokenizer built otherwise than assumed
        self._uses_types = uses_types
        self._clip_chars = max_len * CLIP_CHARS_PER_TOKEN
        template = PairTemplate.derive(self._plain)
        if template is None:
            raise TokenizerUnsupported(
                "its post-processor does not put a pair between special tokens"
            )
        self.template = template
        self._check(clone(plain, max_len, "right", False), clone(plain, max_len, "left", False))
        prompt_tokens = len(self._plain.encode(prompt, add_special_tokens=False).ids)
        #: Tokens each pair adds to its texts (chunk budgets count them): specials, the prompt.
        self.special_tokens = template.size + prompt_tokens

    def _check(self, right: Tokenizer, left: Tokenizer) -> None:
        """Assembled pairs must equal the tokenizer's own, truncation included, on both sides."""
        budget = self._max_len - self.template.size
        sizes = {0, 1, 2, budget // 2, budget // 2 + 1, budget - 1, budget, budget + 1, 2 * budget}
        texts = [" ".join(["list files"] * n) for n in sorted(sizes)]
        pairs = [(q, d) for q in texts for d in texts]
        for side, reference in (("right", right), ("left", left)):
            expected = reference.encode_batch(pairs, add_special_tokens=True)
            ids, types, _ = self._assemble(pairs, side)
            wanted = [e.ids for e in expected]
            if ids != wanted or (types is not None and types != [e.type_ids for e in expected]):
                raise TokenizerUnsupported(f"assembled pairs differ from the tokenizer's ({side})")

    def encode(self, pairs: Sequence[tuple[str, str]], side: str) -> Encoded:
        """Ids, type ids (None without them) and whether each pair was truncated."""
        if self._prompt:
            pairs = [(self._prompt + query, text) for query, text in pairs]
        return self._assemble(pairs, side)

    def _assemble(self, pairs: Sequence[tuple[str, str]], side: str) -> Encoded:
        template = self.template
        budget = self._max_len - template.size
        distinct = list(dict.fromkeys(query for query, _ in pairs))
        queries = dict(zip(distinct, self._texts(distinct, side, budget), strict=True))
        documents = self._texts([text for _, text in pairs], side, budget)
        uncut: dict[str, _Text] = {}  # texts tokenized whole, each once a call

        def whole(text: str) -> _Text:
            if text not in uncut:
                uncut[text] = self._texts([text], side, budget, cut=False)[0]
            return uncut[text]

        ids: list[list[int]] = []
        types: list[list[int]] | None = [] if self._uses_types else None
        truncated: list[bool] = []
        for i, (query, text) in enumerate(pairs):
            q, d = queries[query], documents[i]
            keep_q, keep_d = truncated_lengths(q.count, d.count, budget)
            if not (q.settled(keep_q, d.count, side) and d.settled(keep_d, q.count, side)):
                # A cut that could matter (rare: a long text of few tokens): the texts whole.
                q, d = whole(query), whole(text)
                keep_q, keep_d = truncated_lengths(q.count, d.count, budget)
            ids.append(template.ids(_kept(q.ids, keep_q, side), _kept(d.ids, keep_d, side)))
            if types is not None:
                types.append(template.type_ids(keep_q, keep_d))
            truncated.append(keep_q < q.count or keep_d < d.count)
        return ids, types, truncated

    def _texts(self, texts: list[str], side: str, budget: int, cut: bool = True) -> list[_Text]:
        """Each text tokenized once without special tokens, in order; with ``cut``, a text far
        longer than the model reads is clipped first and tokenized with offsets to check it."""
        clipped = [clip(text, self._clip_chars, side) if cut else text for text in texts]
        was_cut = [c is not t for c, t in zip(clipped, texts, strict=True)]
        encodings = self._encode(clipped, was_cut)
        return [
            _Text(
                _kept(encodings[i].ids, budget, side),
                len(encodings[i].ids),
                list(encodings[i].offsets) if was_cut[i] else None,
                len(clipped[i]),
                split_word(self._plain, texts[i], clipped[i]) if side == "left" else 0,
            )
            for i in range(len(texts))
        ]

    def _encode(self, texts: list[str], offsets: list[bool]) -> list[Encoding]:
        """Each text encoded without special tokens, with offsets where ``offsets`` says (else
        without: a third faster), by the ASCII copy where it applies."""
        groups: dict[tuple[bool, bool], list[int]] = {}
        for i, text in enumerate(texts):
            fast = self._ascii is not None and plain_ascii(text)
            groups.setdefault((fast, offsets[i]), []).append(i)
        encodings: dict[int, Encoding] = {}
        for (fast, with_offsets), positions in groups.items():
            tokenizer = (self._ascii or self._plain) if fast else self._plain
            encode = tokenizer.encode_batch if with_offsets else tokenizer.encode_batch_fast
            batch = [as_ascii(texts[i]) if fast else texts[i] for i in positions]
            encodings.update(zip(positions, encode(batch, add_special_tokens=False), strict=True))
        return [encodings[i] for i in range(len(texts))]


def _kept(ids: list[int], keep: int, side: str) -> list[int]:
    """The ``keep`` ids truncation leaves on the kept ``side``."""
    if side == "right":
        return ids[:keep]
    return ids[max(0, len(ids) - keep) :] if keep else []


#: Model types whose templates want flat messages though they look otherwise (Sentence
#: Transformers' list).
_FLAT_MODEL_TYPES = {"apertus", "deepseek_v3", "gpt_oss", "minicpm3", "seed_oss"}
#: A pair, then the same with only its query changed, then with only its document changed
#: (in the first character and the length, so even a render that cuts its texts moves).
_ROLE_PROBES = (("alpha", "bravo"), ("charlie", "bravo"), ("alpha", "foxtrot"))
_STRUCTURED_PATTERNS = ("content[0]", ".type", "'type'", '"type"', "item.type", "message.content[")


def infer_message_format(template: str, model_type: str) -> str:
    """``flat`` (a message's content is a string) or ``structured`` (a list of typed parts),
    as Sentence Transformers infers it when a model's config does not say."""
    if model_type in _FLAT_MODEL_TYPES:
        return "flat"
    return "structured" if any(p in template for p in _STRUCTURED_PATTERNS) else "flat"


class ChatEncoder:
    """Tokenizes (query, document) pairs through the model's chat template, as Sentence
    Transformers does for a causal-LM reranker; thread-safe.

    Each pair becomes a ``query`` and a ``document`` message (after a ``system`` message holding
    the model's prompt, when it has one), is rendered by the tokenizer's own
    ``apply_chat_template`` and tokenized without special tokens. A row cut to the max length
    gets the template's suffix (its tokens after the document, e.g. the assistant prefill)
    written back over its last tokens, as Sentence Transformers restores it, so the model
    always reads its answer prompt last. Texts far longer than the model reads are clipped
    before rendering and the cut checked, as for ``PairEncoder``.
    """

    def __init__(
        self,
        tokenizer: Any,
        plain: Tokenizer,
        max_len: int,
        message_format: str,
        chat_kwargs: dict[str, Any],
        prompt: str,
    ) -> None:
        """``tokenizer``: the transformers tokenizer, whose chat template renders a pair;
        ``plain``: its backend without truncation (``clone(..., None, ...)``)."""
        self._tokenizer = tokenizer
        self._plain = plain
        self._max_len = max_len
        self._structured = message_format == "structured"
        kwargs = dict(chat_kwargs)
        self._restore = bool(kwargs.pop("restore_suffix", True))
        self._kwargs = kwargs
        self._prompt = prompt
        self._clip_chars = max_len * CLIP_CHARS_PER_TOKEN
        self._check_roles()
        self._suffix = self._suffix_ids()
        #: Tokens each pair adds to its texts (chunk budgets count them): the whole template.
        self.special_tokens = len(self._encode([self.render("", "")])[0].ids)

    def _message(self, role: str, text: str) -> dict[str, Any]:
        content: Any = [{"type": "text", "text": text}] if self._structured else text
        return {"role": role, "content": content}

    def render(self, query: str, document: str) -> str:
        """The text the model reads for one pair, before tokenizing."""
        messages = [self._message("query", query), self._message("document", document)]
        if self._prompt:
            messages.insert(0, self._message("system", self._prompt))
        text: str = self._tokenizer.apply_chat_template(messages, tokenize=False, **self._kwargs)
        return text

    def _check_roles(self) -> None:
        """Refuse a template that does not carry both texts (a plain chat template reads only
        ``system``, ``user`` and ``assistant`` messages): it renders every pair alike, and
        the model would score neither text. Changing one text must change the render.

        Raises:
            TokenizerUnsupported: naming the text that goes nowhere.
        """
        base, *changed = (self.render(query, document) for query, document in _ROLE_PROBES)
        lost = [
            role for role, text in zip(("query", "document"), changed, strict=True) if text == base
        ]
        if lost:
            raise TokenizerUnsupported(
                f"the {' and '.join(lost)} text does not reach the rendered prompt (the "
                "template must render the 'query' and 'document' messages)"
            )

    def _encode(self, texts: list[str], offsets: bool = False) -> list[Encoding]:
        encode = self._plain.encode_batch if offsets else self._plain.encode_batch_fast
        encodings: list[Encoding] = encode(texts, add_special_tokens=False)
        return encodings

    def _suffix_ids(self) -> list[int]:
        """The template's tokens after the pair: the common token tail of two renders with
        different contents (none when the renders never differ)."""
        first, second = (e.ids for e in self._encode([self.render(f, f) for f in ("0", "1 2 3 4")]))
        count = 0
        for left, right in zip(reversed(first), reversed(second), strict=False):
            if left != right:
                break
            count += 1
        return first[len(first) - count :] if 0 < count < min(len(first), len(second)) else []

    def encode(self, pairs: Sequence[tuple[str, str]], side: str) -> Encoded:
        """Ids, no type ids, and whether each pair was truncated."""
        limit = self._clip_chars
        cut = [(clip(q, limit, side), clip(d, limit, side)) for q, d in pairs]
        clipped = [
            i for i, (q, d) in enumerate(cut) if q is not pairs[i][0] or d is not pairs[i][1]
        ]
        texts = [self.render(q, d) for q, d in cut]
        was_clipped = set(clipped)
        whole = [i for i in range(len(pairs)) if i not in was_clipped]
        encodings = dict(zip(whole, self._encode([texts[i] for i in whole]), strict=True))
        # Clipped renders are tokenized with offsets, to check the cut.
        checked = self._encode([texts[i] for i in clipped], offsets=True)
        for i, enc in zip(clipped, checked, strict=True):
            if self._cut_is_exact(enc, texts[i], cut[i], pairs[i], side):
                encodings[i] = enc
            else:  # a cut that could matter: the whole texts, as the tokenizer takes them
                encodings[i] = self._encode([self.render(*pairs[i])])[0]
        ids, truncated = [], []
        for i in range(len(pairs)):
            row = encodings[i].ids
            over = len(row) > self._max_len
            if over:
                row = row[: self._max_len] if side == "right" else row[len(row) - self._max_len :]
            if self._restore and len(row) >= self._max_len and self._suffix:
                keep = min(len(self._suffix), len(row))
                row[len(row) - keep :] = self._suffix[len(self._suffix) - keep :]
            ids.append(row)
            truncated.append(over)
        return ids, None, truncated

    def _cut_is_exact(
        self,
        enc: Encoding,
        text: str,
        cut: tuple[str, str],
        whole: tuple[str, str],
        side: str,
    ) -> bool:
        """Whether the clipped texts' render keeps the tokens the whole texts' render would:
        truncation stops (or, keeping the end, starts) well inside every cut."""
        if len(enc.ids) <= self._max_len:
            return False
        edges = []
        for piece, original in zip(cut, whole, strict=True):
            if piece is original:
                continue
            at = text.find(piece)
            if at < 0:
                return False
            edges.append(
                at + len(piece)
                if side == "right"
                else at + split_word(self._plain, original, piece)
            )
        if side == "right":
            return enc.offsets[self._max_len - 1][1] < min(edges) - CLIP_MARGIN
        return enc.offsets[len(enc.ids) - self._max_len][0] > max(edges) + CLIP_MARGIN

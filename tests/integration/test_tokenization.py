"""rerankd's tokenization equals the model tokenizer's own call, as CrossEncoder makes it,
including for documents far longer than the model reads (which are cut before tokenizing)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from rerankd_server.scoring.base import Truncation
from rerankd_server.scoring.hf import HFCrossEncoder, resolve_placement
from rerankd_server.scoring.pairs import CLIP_CHARS_PER_TOKEN

WORDS = "list files in the directory copy move ünïcödé 文字 grep -r --all a b c".split()


def limit_chars(max_len: int) -> int:
    return max_len * CLIP_CHARS_PER_TOKEN


def documents(max_len: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    limit = max_len * CLIP_CHARS_PER_TOKEN
    words = lambda n: " ".join(rng.choice(WORDS) for _ in range(n))  # noqa: E731
    return [
        words(20),
        words(limit // 3),  # far over-long: cut before tokenizing
        "x" * (limit * 2),  # one huge "word": no whitespace to cut at
        words(30) + " " + "y" * (limit + 10) + " " + words(4000),  # a huge word near the cut
        "z" * (limit - 50) + " " + words(3000),  # whitespace only far from the start
        words(limit // 10).replace(" ", "   \n\t "),  # runs of mixed whitespace
        words(limit // 5) + " " + "q" * 500,
        "文字検索" * limit,  # CJK without any space: cut at a character bound
        words(limit // 3).replace(" ", "\u00a0"),  # only no-break spaces
        words(limit // 3).replace(" ", "\r"),
        words(limit // 3).replace(" ", "\u3000"),  # ideographic spaces
        "",
    ]


@pytest.mark.parametrize("name", ["modernbert", "bert", "manpages"])
@pytest.mark.parametrize("side", ["right", "left"])
def test_tokenize_equals_the_tokenizer_call(
    name: str, side: str, tiny_models: dict[str, Path], request: pytest.FixtureRequest
) -> None:
    if name == "manpages":
        path = request.getfixturevalue("shared_dir") / "models" / "manpages-minilm-l6-ce"
    else:
        path = tiny_models[name]
    scorer = HFCrossEncoder(str(path), resolve_placement("cpu", "float32", "sdpa"))
    reference = AutoTokenizer.from_pretrained(str(path))
    reference.truncation_side = side
    max_len = scorer.info.max_input_tokens
    queries = ["list files", " ".join(["long query"] * max_len), ""]  # the second over-long
    docs = documents(max_len, seed=len(name))
    pairs = [(q, d) for q in queries for d in docs]
    # A far over-long query without spaces, beside short documents (the reference tokenizer
    # builds every overflowing window, so two huge texts together would take minutes).
    pairs += [("長い質問" * limit_chars(max_len), d) for d in (docs[0], "", "ls")]
    mode = Truncation.END if side == "right" else Truncation.START
    ours = scorer.tokenize(pairs, mode)
    theirs = reference(
        [q for q, _ in pairs],
        [d for _, d in pairs],
        truncation="longest_first",
        max_length=max_len,
        return_overflowing_tokens=False,
    )
    assert ours.ids == theirs["input_ids"]
    if ours.type_ids is not None:
        assert ours.type_ids == theirs["token_type_ids"]
    full_lengths = [len(reference(q, d)["input_ids"]) for q, d in pairs]
    assert ours.truncated == [n > max_len for n in full_lengths]

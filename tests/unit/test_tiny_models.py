"""The tiny test models load and score through Sentence Transformers exactly like a real reranker.

Scoring tests compare the server with ``CrossEncoder.predict`` on these models, so they must take
the same code path as a published cross-encoder: same files (the Ettin rerankers' module chain,
or one sequence classifier), same activation rule, same max length.
"""

from __future__ import annotations

import itertools
import json
import math
import socket
from pathlib import Path
from typing import Any

import pytest
import torch
from sentence_transformers import CrossEncoder

from rerankd_server import tiny_models
from rerankd_server.tiny_models import (
    CAUSAL_MAX_LENGTH,
    MODEL_MAX_LENGTH,
    build_tiny_model,
    main,
)

PAIRS = [
    ("how do i list files in a directory", "Use ls to list the files in a directory."),
    ("how do i list files in a directory", "Bake the bread in a hot oven."),
    ("how do i list files in a directory", ""),
    ("weather", "Tomorrow it will rain in the morning. " * 40),  # over-long: truncated
    ("q", "d"),
]

EXPECTED_ACTIVATION = {
    "modernbert": torch.nn.Sigmoid,
    "ettin": torch.nn.Identity,
    "modernbert_classifier": torch.nn.Sigmoid,
    "modernbert_identity": torch.nn.Identity,
    "bert": torch.nn.Sigmoid,
    "bert_identity": torch.nn.Identity,
    "bert_pooler_mean": torch.nn.Sigmoid,
    "causal": torch.nn.Sigmoid,
}
ST = "sentence_transformers."
CHAINS = {
    "ettin": [
        ST + "base.modules.transformer.Transformer",
        ST + "sentence_transformer.modules.pooling.Pooling",
        ST + "base.modules.dense.Dense",
        ST + "sentence_transformer.modules.layer_norm.LayerNorm",
        ST + "base.modules.dense.Dense",
    ],
    "bert_pooler_mean": [
        ST + "base.modules.transformer.Transformer",
        ST + "sentence_transformer.modules.pooling.Pooling",
        ST + "base.modules.dense.Dense",
        ST + "base.modules.dense.Dense",
    ],
    "modernbert_identity": [ST + "base.modules.transformer.Transformer"],
    "causal": [
        ST + "base.modules.transformer.Transformer",
        ST + "cross_encoder.modules.logit_score.LogitScore",
    ],
}


def _json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.mark.parametrize("name", sorted(EXPECTED_ACTIVATION))
def test_cross_encoder_loads_and_scores(tiny_models: dict[str, Path], name: str) -> None:
    model = CrossEncoder(str(tiny_models[name]), device="cpu")
    assert type(model.activation_fn) is EXPECTED_ACTIVATION[name]
    assert model.max_seq_length == (CAUSAL_MAX_LENGTH if name == "causal" else MODEL_MAX_LENGTH)
    assert model.num_labels == 1
    scores = [float(s) for s in model.predict(PAIRS)]
    assert all(math.isfinite(s) for s in scores)
    # Rankings in tests must be unambiguous: distinct scores, well apart.
    ordered = sorted(scores)
    assert min(b - a for a, b in itertools.pairwise(ordered)) > 1e-3, scores
    if EXPECTED_ACTIVATION[name] is torch.nn.Sigmoid:
        assert all(0.0 < s < 1.0 for s in scores)


def test_activation_only_changes_the_output_mapping(tiny_models: dict[str, Path]) -> None:
    sigmoid = CrossEncoder(str(tiny_models["bert"]), device="cpu").predict(PAIRS)
    raw = CrossEncoder(str(tiny_models["bert_identity"]), device="cpu").predict(PAIRS)
    assert torch.allclose(
        torch.sigmoid(torch.from_numpy(raw)), torch.from_numpy(sigmoid), atol=1e-6
    )


def test_tokenizer_formats_pairs_like_bert(tiny_models: dict[str, Path]) -> None:
    for name, with_types in (("modernbert", False), ("bert", True)):
        tokenizer = CrossEncoder(str(tiny_models[name]), device="cpu").tokenizer
        assert 1000 <= len(tokenizer) <= 2000
        assert tokenizer.model_max_length == MODEL_MAX_LENGTH
        encoded = tokenizer("List files", "use ls")
        tokens = tokenizer.convert_ids_to_tokens(encoded["input_ids"])
        assert tokens == ["[CLS]", "list", "files", "[SEP]", "use", "ls", "[SEP]"]
        assert ("token_type_ids" in encoded) is with_types
        if with_types:
            assert encoded["token_type_ids"] == [0, 0, 0, 0, 1, 1, 1]
        config = _json(tiny_models[name] / "config.json")
        assert config["pad_token_id"] == tokenizer.pad_token_id
        assert config["vocab_size"] == len(tokenizer)
        assert config["max_position_embeddings"] >= tokenizer.model_max_length


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.mark.parametrize("name", sorted(CHAINS))
def test_layout_is_what_sentence_transformers_saves(
    tiny_models: dict[str, Path], tmp_path: Path, name: str
) -> None:
    """Loaded and saved again by CrossEncoder itself: the same files, configs and weights."""
    from safetensors.torch import load_file

    ours = tiny_models[name]
    assert [m["type"] for m in _json(ours / "modules.json")] == CHAINS[name]
    theirs = tmp_path / "resaved"
    CrossEncoder(str(ours), device="cpu").save_pretrained(str(theirs))
    assert _files(ours) == _files(theirs)
    for file in _files(ours):
        if file.endswith(".json"):
            assert _json(ours / file) == _json(theirs / file), file
        elif file.endswith(".safetensors"):
            mine, saved = load_file(ours / file), load_file(theirs / file)
            assert mine.keys() == saved.keys(), file
            assert all(torch.equal(mine[key], saved[key]) for key in mine), file


def test_the_ettin_layout_matches_the_release(tiny_models: dict[str, Path]) -> None:
    root = tiny_models["ettin"]
    assert _json(root / "sentence_bert_config.json")["transformer_task"] == "feature-extraction"
    assert _json(root / "config.json")["architectures"] == ["ModernBertModel"]
    assert _json(root / "1_Pooling" / "config.json")["pooling_mode"] == "cls"
    inner, last = _json(root / "2_Dense" / "config.json"), _json(root / "4_Dense" / "config.json")
    assert (inner["bias"], inner["activation_function"]) == (
        False,
        "torch.nn.modules.activation.GELU",
    )
    assert (last["out_features"], last["module_output_name"]) == (1, "scores")
    st_config = _json(root / "config_sentence_transformers.json")
    assert st_config["activation_fn"] == "torch.nn.modules.linear.Identity"


def test_the_causal_layout_is_an_llm_reranker(tiny_models: dict[str, Path]) -> None:
    root = tiny_models["causal"]
    config = _json(root / "sentence_bert_config.json")
    assert config["transformer_task"] == "text-generation"
    assert config["modality_config"]["message"]["format"] == "flat"
    assert config["processing_kwargs"] == {"chat_template": {"add_generation_prompt": True}}
    assert _json(root / "config.json")["architectures"] == ["Qwen3ForCausalLM"]
    model = CrossEncoder(str(root), device="cpu")
    score = _json(root / "1_LogitScore" / "config.json")
    assert model.tokenizer.convert_ids_to_tokens([score["true_token_id"]]) == ["yes"]
    assert model.tokenizer.convert_ids_to_tokens([score["false_token_id"]]) == ["no"]
    assert model.tokenizer.padding_side == "left"
    rendered = model.tokenizer.decode(model.preprocess([("list files", "ls")])["input_ids"][0])
    assert "<Query>: list files\n<Document>: ls<|im_end|>" in rendered
    assert rendered.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")


def test_default_activation_is_not_written(tiny_models: dict[str, Path]) -> None:
    st_config = _json(tiny_models["modernbert"] / "config_sentence_transformers.json")
    assert st_config["model_type"] == "CrossEncoder"
    assert "activation_fn" not in st_config
    assert "max_seq_length" not in _json(tiny_models["modernbert"] / "sentence_bert_config.json")


@pytest.mark.parametrize("max_seq_length", [16, 200])
def test_max_seq_length_is_recorded_and_used(tmp_path: Path, max_seq_length: int) -> None:
    path = build_tiny_model(tmp_path / "m", "bert", max_seq_length=max_seq_length)
    assert _json(path / "tokenizer_config.json")["model_max_length"] == max_seq_length
    model = CrossEncoder(str(path), device="cpu")
    assert model.max_seq_length == max_seq_length
    features = model.preprocess([("query " * 300, "document " * 300)])
    assert features["input_ids"].shape[-1] == max_seq_length
    assert all(math.isfinite(float(s)) for s in model.predict(PAIRS))


def test_same_seed_same_files_other_seed_other_weights(tmp_path: Path) -> None:
    first = build_tiny_model(tmp_path / "a", "modernbert", seed=7)
    second = build_tiny_model(tmp_path / "b", "modernbert", seed=7)
    third = build_tiny_model(tmp_path / "c", "modernbert", seed=8)
    assert _files(first) == _files(second)
    for file in _files(first):
        assert (first / file).read_bytes() == (second / file).read_bytes(), file
    assert (first / "tokenizer.json").read_bytes() == (third / "tokenizer.json").read_bytes()
    for weights in ("model.safetensors", "4_Dense/model.safetensors"):
        assert (first / weights).read_bytes() != (third / weights).read_bytes(), weights


def test_weights_are_float32_safetensors(tiny_models: dict[str, Path]) -> None:
    from safetensors.torch import load_file

    for name in ("modernbert", "bert"):
        root = tiny_models[name]
        assert not list(root.rglob("pytorch_model.bin"))
        for weights in root.rglob("model.safetensors"):
            tensors = load_file(weights)
            assert {t.dtype for t in tensors.values()} == {torch.float32}


def test_build_never_touches_the_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    build_tiny_model(tmp_path / "m", "bert", seed=3)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "roberta"}, "kind must be one of"),
        ({"layout": "colbert"}, "layout must be one of"),
        ({"pooling": "median"}, "pooling must be one of"),
        ({"max_seq_length": 0}, "max_seq_length must be in"),
        ({"max_seq_length": tiny_models.MAX_POSITION_EMBEDDINGS + 1}, "max_seq_length must be in"),
    ],
)
def test_rejects_bad_arguments(tmp_path: Path, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_tiny_model(tmp_path / "m", **kwargs)
    assert not (tmp_path / "m").exists()


def test_cli_builds_and_warns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "cli-model"
    argv = [
        str(path),
        "--layout",
        "pooler",
        "--pooling",
        "mean",
        "--kind",
        "bert",
        "--activation",
        "torch.nn.Identity",
        "--max-seq-length",
        "64",
    ]
    assert main([*argv, "--seed", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == str(path)
    assert "RANDOM" in out[1]
    model = CrossEncoder(str(path), device="cpu")
    assert type(model.activation_fn) is torch.nn.Identity
    assert model.max_seq_length == 64
    assert "token_type_ids" in model.tokenizer.model_input_names
    assert _json(path / "1_Pooling" / "config.json")["pooling_mode"] == "mean"


def test_cli_rejects_bad_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path / "m"), "--max-seq-length", "100000"])
    assert exc.value.code == 2
    assert "max_seq_length must be in" in capsys.readouterr().err

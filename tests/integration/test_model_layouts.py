"""A model is served only when every module of its chain is one rerankd builds and every
weight loaded: otherwise start-up ends with one line naming what is wrong, never a model with a
randomly initialised layer.

Each broken folder below is a tiny model saved by Sentence Transformers, then damaged the way a
partial download, a hand edit or a different kind of model would damage it.
"""

from __future__ import annotations

import json
import shutil
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from sentence_transformers import CrossEncoder

from rerankd_server.errors import ModelLoadError
from rerankd_server.process import ServerStartError, start_server
from rerankd_server.scoring.base import Truncation
from rerankd_server.scoring.hf import HFCrossEncoder, Placement
from rerankd_server.scoring.st_config import KNOWN_MODULES

Damage = Callable[[Path], None]


def _edit_json(path: Path, edit: Callable[[object], object]) -> None:
    path.write_text(json.dumps(edit(json.loads(path.read_text()))), encoding="utf-8")


def _set_activation(root: Path, path: str) -> None:
    _edit_json(
        root / "config_sentence_transformers.json",
        lambda c: {**c, "activation_fn": path},  # type: ignore[dict-item]
    )


def _add_weight(path: Path) -> None:
    weights = load_file(path)
    weights["extra.weight"] = torch.zeros(2)
    save_file(weights, path)


def _reshape_weight(path: Path) -> None:
    weights = load_file(path)
    weights["norm.bias"] = torch.zeros(7)
    save_file(weights, path)


def _two_labels(root: Path) -> None:
    _dense_config(out_features=2)(root)
    weights = {"linear.weight": torch.zeros(2, 32), "linear.bias": torch.zeros(2)}
    save_file(weights, root / "4_Dense" / "model.safetensors")


def _set_module(index: int, **values: str) -> Damage:
    def damage(root: Path) -> None:
        _edit_json(
            root / "modules.json", lambda m: [*m[:index], {**m[index], **values}, *m[index + 1 :]]
        )  # type: ignore[index]

    return damage


def _dense_config(**values: object) -> Damage:
    return lambda root: _edit_json(root / "4_Dense" / "config.json", lambda c: {**c, **values})  # type: ignore[dict-item]


# name -> (damage done to a copy of the Ettin-layout model, words the refusal must contain)
BROKEN: dict[str, tuple[Damage, tuple[str, ...]]] = {
    "a module's weights missing": (
        lambda root: (root / "4_Dense" / "model.safetensors").unlink(),
        ("module 4 Dense (4_Dense/)", "no model.safetensors", "incomplete"),
    ),
    "an unexpected weight": (
        lambda root: _add_weight(root / "3_LayerNorm" / "model.safetensors"),
        ("module 3 LayerNorm", "unexpected: extra.weight", "not a cross-encoder"),
    ),
    "a misshapen weight": (
        lambda root: _reshape_weight(root / "3_LayerNorm" / "model.safetensors"),
        ("module 3 LayerNorm", "misshapen: norm.bias (7,) (expected (32,))"),
    ),
    "an unknown module type": (
        _set_module(3, type="sentence_transformers.models.CNN"),
        ("module 3", "'sentence_transformers.models.CNN'", "does not serve"),
    ),
    "a module from outside Sentence Transformers": (
        _set_module(2, type="my_reranker.heads.SecretHead"),
        ("module 2", "my_reranker.heads.SecretHead", "runs no code from a model folder"),
    ),
    "a module path out of the folder": (
        _set_module(4, path="../elsewhere"),
        ("module 4", "unsafe path", "../elsewhere"),
    ),
    "an activation that is not torch's": (
        _dense_config(activation_function="my_reranker.Swish"),
        ("module 4 Dense", "my_reranker.Swish", "not a torch.* class"),
    ),
    "a Dense key this version does not know": (
        _dense_config(use_lora=True),
        ("module 4 Dense", "unknown keys ['use_lora']"),
    ),
    "two scores per pair": (
        lambda root: _two_labels(root),
        ("2 labels", "one-score cross-encoders"),
    ),
    "a chain that writes no scores": (
        lambda root: _edit_json(root / "modules.json", lambda m: m[:-1]),  # type: ignore[index]
        ("no module of its chain writes scores", "not a cross-encoder"),
    ),
    "a headless backbone declared a classifier": (
        lambda root: _edit_json(
            root / "sentence_bert_config.json",
            lambda c: {  # type: ignore[dict-item]
                **c,
                "transformer_task": "sequence-classification",
                "modality_config": {"text": {"method": "forward", "method_output_name": "logits"}},
                "module_output_name": "scores",
            },
        ),
        ("does not match ModernBertForSequenceClassification", "missing: classifier.bias"),
    ),
    "a Transformer that is not first": (
        lambda root: _edit_json(root / "modules.json", lambda m: [m[1], m[0], *m[2:]]),  # type: ignore[index]
        ("exactly one Transformer, first", "Pooling > Transformer"),
    ),
    "a model activation torch does not have": (
        lambda root: _set_activation(root, "torch.nn.NoSuchActivation"),
        ("torch.nn.NoSuchActivation", "not a torch.nn.Module class"),
    ),
    "a model activation in no module": (
        lambda root: _set_activation(root, "torch.nosuch.Thing"),
        ("torch.nosuch.Thing", "not a torch.nn.Module class"),
    ),
    "a model activation that needs arguments": (
        lambda root: _set_activation(root, "torch.nn.Threshold"),
        ("torch.nn.Threshold", "cannot be built without arguments"),
    ),
    "a Dense activation in no module": (
        _dense_config(activation_function="torch.nosuch.Thing"),
        ("module 4 Dense", "torch.nosuch.Thing"),
    ),
    "tokenizer arguments it would not apply": (
        lambda root: _edit_json(
            root / "sentence_bert_config.json",
            lambda c: {**c, "tokenizer_args": {"model_max_length": 32}},  # type: ignore[dict-item]
        ),
        ("tokenizer_args", "does not apply"),
    ),
    "config arguments it would not apply": (
        lambda root: _edit_json(
            root / "sentence_bert_config.json",
            lambda c: {**c, "config_kwargs": {"hidden_act": "relu"}},  # type: ignore[dict-item]
        ),
        ("config_kwargs", "does not apply"),
    ),
    "a Git LFS pointer for its tokenizer": (
        lambda root: (root / "tokenizer.json").write_text(
            "version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 1\n"
        ),
        ("cannot load the model folder",),
    ),
    "a corrupt weight file": (
        lambda root: (root / "2_Dense" / "model.safetensors").write_bytes(b"\x00" * 16),
        ("module 2 Dense", "cannot read"),
    ),
}


@pytest.fixture
def broken(tiny_models: dict[str, Path], tmp_path: Path) -> Callable[[str], Path]:
    def make(name: str) -> Path:
        root = tmp_path / "broken"
        shutil.copytree(tiny_models["ettin"], root)
        BROKEN[name][0](root)
        return root

    return make


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_a_broken_chain_is_refused_with_a_message_naming_it(
    broken: Callable[[str], Path], name: str
) -> None:
    path = broken(name)
    with pytest.raises(ModelLoadError) as err:
        HFCrossEncoder(str(path), Placement("cpu", "float32", "sdpa"))
    message = str(err.value)
    assert "\n" not in message
    for words in BROKEN[name][1]:
        assert words in message, message


def test_a_classifier_without_its_classifier_is_refused(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    """A single-module folder whose checkpoint is a bare encoder (a base model, not a
    cross-encoder): transformers would initialise the classifier at random."""
    root = tmp_path / "base-model"
    shutil.copytree(tiny_models["modernbert_classifier"], root)
    weights = load_file(root / "model.safetensors")
    save_file(
        {k: v for k, v in weights.items() if not k.startswith(("classifier.", "head."))},
        root / "model.safetensors",
    )
    (root / "modules.json").unlink()  # as a plain transformers checkpoint
    with pytest.raises(ModelLoadError, match=r"missing: classifier\.bias, classifier\.weight"):
        HFCrossEncoder(str(root), Placement("cpu", "float32", "sdpa"))


def test_a_headless_backbone_without_its_pooler_serves(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    """The chain reads BertModel's token embeddings, never its pooler's output, so a
    checkpoint saved without the pooler loses nothing: it is served, and scores the same."""
    root = tmp_path / "no-pooler"
    shutil.copytree(tiny_models["bert_pooler_mean"], root)
    weights = load_file(root / "model.safetensors")
    assert any(k.startswith("pooler.") for k in weights)
    save_file(
        {k: v for k, v in weights.items() if not k.startswith("pooler.")},
        root / "model.safetensors",
    )
    placement = Placement("cpu", "float32", "sdpa")
    pairs = [("list files", "ls lists files"), ("weather", "rain tomorrow")]
    scores = []
    for path in (tiny_models["bert_pooler_mean"], root):
        scorer = HFCrossEncoder(str(path), placement)
        tokens = scorer.tokenize(pairs, Truncation.DEFAULT)
        scores.append(scorer.forward(scorer.collate(tokens.ids, tokens.type_ids)))
    assert scores[0].tolist() == scores[1].tolist()


def test_a_max_length_beyond_the_position_table_is_refused(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    """A pair longer than a learned position table fails in the model (CrossEncoder's too):
    the length must be one the model can read."""
    root = tmp_path / "too-long"
    shutil.copytree(tiny_models["bert"], root)
    positions = json.loads((root / "config.json").read_text())["max_position_embeddings"]
    _edit_json(
        root / "sentence_bert_config.json",
        lambda c: {**c, "max_seq_length": positions + 1},  # type: ignore[dict-item]
    )
    with pytest.raises(ModelLoadError) as err:
        HFCrossEncoder(str(root), Placement("cpu", "float32", "sdpa"))
    assert f"more than the {positions} positions" in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "name",
    [
        "a module's weights missing",  # found as the chain is built
        "an unknown module type",  # found as the layout is read
    ],
)
def test_the_server_exits_2_with_one_line_and_never_serves(
    broken: Callable[[str], Path], name: str
) -> None:
    path = broken(name)
    started = time.monotonic()
    with pytest.raises(ServerStartError) as err:
        start_server(path, ready_timeout=120).stop()  # (stopped, should it ever serve)
    output = str(err.value)
    assert "exited with code 2" in output
    assert time.monotonic() - started < 100  # it exited, far from the ready timeout
    assert "Traceback" not in output
    errors = [line for line in output.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and all(words in errors[0] for words in BROKEN[name][1]), output
    assert "serving" not in output


def test_known_modules_are_the_documented_ones() -> None:
    readme = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text()
    for kind in KNOWN_MODULES:
        assert f"`{kind}`" in readme, kind


def _scores(scorer: HFCrossEncoder, pairs: list[tuple[str, str]]) -> list[float]:
    """Activated scores of ``pairs`` in one batch, as the scheduler computes them."""
    tokens = scorer.tokenize(pairs, Truncation.DEFAULT)
    logits = scorer.forward(scorer.collate(tokens.ids, tokens.type_ids))
    return [float(v) for v in scorer.activate(logits)]


PAIRS = [
    ("list files", "ls lists directory contents"),
    ("list files", " ".join(["copy files and directories"] * 12)),
    ("weather", "rain tomorrow"),
]


@pytest.mark.parametrize("activation", ["torch.nn.Softmax", "torch.nn.LogSoftmax"])
def test_an_activation_across_its_input_never_mixes_pairs(
    tiny_models: dict[str, Path], tmp_path: Path, activation: str
) -> None:
    # CrossEncoder.predict applies it to each pair's (1,) logits: Softmax gives 1.0.
    root = tmp_path / "softmax"
    shutil.copytree(tiny_models["bert"], root)
    _set_activation(root, activation)
    scorer = HFCrossEncoder(str(root), Placement("cpu", "float32", "sdpa"))
    with warnings.catch_warnings():  # torch's, for the implicit dimension
        warnings.simplefilter("ignore", UserWarning)
        expected = CrossEncoder(str(root), device="cpu").predict(PAIRS, batch_size=8).tolist()
    assert _scores(scorer, PAIRS) == pytest.approx(expected, abs=1e-6)
    assert _scores(scorer, PAIRS[:1]) == pytest.approx(expected[:1], abs=1e-6)


def test_a_left_padding_tokenizer_scores_each_pair_as_alone(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    # An encoder reads positions from its first token: padded left, a pair's score moved
    # with its batch mates (CrossEncoder's too); padded right, it is the score of the pair
    # alone, which is CrossEncoder's with a batch of one.
    root = tmp_path / "left-padded"
    shutil.copytree(tiny_models["bert"], root)
    _edit_json(root / "tokenizer_config.json", lambda c: {**c, "padding_side": "left"})  # type: ignore[dict-item]
    scorer = HFCrossEncoder(str(root), Placement("cpu", "float32", "sdpa"))
    alone = CrossEncoder(str(root), device="cpu").predict(PAIRS, batch_size=1).tolist()
    assert _scores(scorer, PAIRS) == pytest.approx(alone, abs=1e-5)


def test_an_activation_path_that_is_not_torchs_is_passed_over_as_cross_encoder_does(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    # CrossEncoder then reads config.json's activation (here Identity), not its default.
    root = tmp_path / "untrusted-activation"
    shutil.copytree(tiny_models["bert"], root)
    _set_activation(root, "my_reranker.Swish")
    _edit_json(
        root / "config.json",
        lambda c: {**c, "sentence_transformers": {"activation_fn": "torch.nn.Identity"}},  # type: ignore[dict-item]
    )
    scorer = HFCrossEncoder(str(root), Placement("cpu", "float32", "sdpa"))
    assert scorer.info.activation == "torch.nn.Identity"
    expected = CrossEncoder(str(root), device="cpu").predict(PAIRS, batch_size=8).tolist()
    assert _scores(scorer, PAIRS) == pytest.approx(expected, abs=1e-5)

"""Tiny random-weight cross-encoders, built offline in seconds, for tests and demos.

Real rerankers are hundreds of megabytes and need the network; the sidecar's tests and the README's
demo need a model that loads through exactly the same code path without either. Each is built
through Sentence Transformers' own modules and saved by its ``CrossEncoder.save_pretrained``, so the
files are exactly what a published model holds, in one of three layouts:

* ``ettin`` (the default): the layout the Ettin rerankers ship in, a headless Transformer, then
  Pooling, Dense (GELU, no bias), LayerNorm and Dense, with raw-logit scores (Identity);
* ``pooler``: a headless Transformer, Pooling, Dense (Tanh, with bias), Dense: BERT's pooler and
  classifier as modules;
* ``classifier``: one sequence-classification Transformer (``AutoModelForSequenceClassification``),
  the layout of most earlier cross-encoders;
* ``causal-lm``: an LLM reranker shaped like Qwen3-Reranker: a Qwen3 causal LM
  (``text-generation``) with a byte-level BPE tokenizer and a chat template that carries the
  query and document roles, then LogitScore (``logit["yes"] - logit["no"]``).

The weights are RANDOM: the scores mean nothing, but they are finite, differ between inputs and are
reproducible for a given seed, which tests rely on.

Usage: ``python -m rerankd_server.tiny_models PATH [--layout ettin] [--kind bert] ...``
(needs the ``tiny`` extra: ``pip install 'rerankd[tiny]'``, which is Sentence Transformers).
"""

from __future__ import annotations

import argparse
import json
import string
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, Literal, get_args

ModelKind = Literal["modernbert", "bert"]
Layout = Literal["ettin", "pooler", "classifier", "causal-lm"]
LogitScoreTokens = Literal["yes-no", "yes"]
PoolingMode = Literal["cls", "mean", "max", "lasttoken", "weightedmean", "mean_sqrt_len_tokens"]

#: Longest (query, document) pair in tokens, special tokens included. Kept small so tests can build
#: over-long documents cheaply; the position tables below are larger so a ``max_seq_length``
#: above it still fits the model.
MODEL_MAX_LENGTH = 128
#: Position table size; a ``max_seq_length`` above it could not run, so it is rejected.
MAX_POSITION_EMBEDDINGS = 512
#: Largest vocabulary; CORPUS yields a little less.
VOCAB_SIZE = 1500
#: The causal model's longest input: its chat template alone takes about 60 tokens.
CAUSAL_MAX_LENGTH = 256
CAUSAL_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
#: Qwen3-Reranker's chat template in short, as Sentence Transformers reads one: the pair arrives
#: as a "query" and a "document" message, a prompt as a "system" one (the instruction).
CHAT_TEMPLATE = (
    "{%- set query = messages | selectattr('role', 'eq', 'query') | map(attribute='content')"
    " | first -%}"
    "{%- set document = messages | selectattr('role', 'eq', 'document')"
    " | map(attribute='content') | first -%}"
    "{%- set instruction = messages | selectattr('role', 'eq', 'system')"
    " | map(attribute='content') | first | default('Find the passage that answers the query') -%}"
    "<|im_start|>system\nJudge whether the document meets the instruction for the query. "
    'Answer only "yes" or "no".<|im_end|>\n'
    "<|im_start|>user\n<Instruct>: {{ instruction }}\n<Query>: {{ query }}\n"
    "<Document>: {{ document }}<|im_end|>\n<|im_start|>assistant\n"
    "{% if add_generation_prompt %}<think>\n\n</think>\n\n{% endif %}"
)
HIDDEN_SIZE = 32

#: Weight scale. Hugging Face's default (0.02) gives near-equal scores on a model this small; this
#: spreads the logits over a few units, so rankings are clear and sigmoid stays out of saturation.
INITIALIZER_RANGE = 0.5

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

_README = """\
# Tiny random-weight cross-encoder

Built by `python -m rerankd_server.tiny_models` ({layout} layout, {kind}, seed {seed}) and saved by
Sentence Transformers' `CrossEncoder.save_pretrained`. The weights are RANDOM: its
scores mean nothing. It exists so tests and demos run offline; use a trained reranker for real work.
"""

# A fixed English corpus, so the vocabulary is deterministic and needs no download. Its topics
# follow the demo queries (files, search, cooking, weather) so demo text tokenizes into whole words.
CORPUS = """\
How do I list files in a directory?
Use ls to list the files in a directory; ls -la also shows hidden files and permissions.
The find command searches a directory tree for files that match a name, a size or a date.
To copy a file, use cp; to move or rename it, use mv; to remove it, use rm.
A directory is a folder that holds files and other directories.
Python can list a directory with os.listdir, os.scandir or pathlib.Path.iterdir.
The glob module finds path names that match a pattern such as *.txt.
Search engines rank documents by how relevant they are to a query.
A cross-encoder reads the query and the document together and returns a relevance score.
Reranking takes the first hundred hits of a keyword search and orders them with a better model.
BM25 scores documents by term frequency, inverse document frequency and document length.
Dense retrieval embeds queries and documents as vectors and compares them with a dot product.
The server batches requests by tokens so the accelerator stays busy without running out of memory.
Each request carries a deadline; work for a caller who has gone away is skipped.
Health checks tell the load balancer when the model has finished loading.
Bake the bread in a hot oven for forty minutes until the crust is brown.
Mix the flour, water, salt and yeast, then let the dough rise for two hours.
Boil the pasta in salted water and drain it when it is soft but still firm.
A good soup starts with onions, carrots and celery cooked slowly in butter.
The weather today is sunny with a light wind from the west.
Tomorrow it will rain in the morning, and the afternoon will be cold and grey.
Snow fell on the mountains during the night and the roads are closed.
The train to the city leaves every twenty minutes from the north station.
She walked along the river and watched the boats go under the old stone bridge.
The library opens at nine and closes at six, except on Sundays.
Children learn to read by hearing stories and sounding out the letters of each word.
The museum shows paintings, maps and tools from the history of the town.
Berlin is the capital of Germany and one of the largest cities in Europe.
Paris lies on the Seine, and its population is a little over two million people.
Water freezes at zero degrees Celsius and boils at one hundred degrees at sea level.
The heart pumps blood through the arteries to every part of the body.
Plants turn sunlight, water and carbon dioxide into sugar and oxygen.
The moon goes around the earth about once every twenty seven days.
A network packet carries a header with its source and destination addresses.
The database stores each record in a table with typed columns and an index on the key.
Errors should be reported once, where they are handled, with a clear message.
Tests run on every change, so a mistake is found before it reaches users.
Compile the program, run the unit tests, and then deploy the new version.
Open the settings, choose a language, and save your changes before you close the window.
The quick brown fox jumps over the lazy dog while the cat sleeps in the sun.
What is the best way to learn a new programming language?
Read the documentation, write small programs, and ask questions when you are stuck.
Which shell command shows the disk space used by each folder?
The du command reports disk usage, and df shows the free space on each file system.
Why is the sky blue? Air scatters blue light from the sun more than red light.
Keep the receipt in case you need to return the shoes or exchange them for another size.
The doctor said to drink plenty of fluids and rest for a few days.
Our team meets every Monday to review progress and plan the week ahead.
He forgot his umbrella at the office, so he got wet on the way home.
Farmers harvest wheat in late summer and store the grain in dry barns.
The orchestra played a symphony, and the audience clapped for several minutes.
Mountains form over millions of years as plates of the earth's crust collide.
Electric cars charge from a plug at home or at fast chargers along the highway.
The recipe needs three eggs, a cup of sugar, a spoon of vanilla and some milk.
Wash your hands with soap for twenty seconds before eating or cooking.
The company announced quarterly earnings that were higher than analysts expected.
A password manager creates and remembers long, unique passwords for every site.
Backups protect your photos and documents if a disk fails or a laptop is stolen.
The volcano erupted, sending ash high into the sky and closing nearby airports.
Birds migrate south in autumn, following coasts, rivers and mountain ranges.
The football match ended in a draw after extra time and a missed penalty.
Translate the sentence into French, Spanish and Japanese, then compare the grammar.
Vitamins and minerals help the immune system fight infections.
The hotel room had a balcony with a view of the harbour and the lighthouse.
Sort the list in ascending order, remove duplicates, and print the first ten items.
Regular expressions match patterns in text, such as email addresses or phone numbers.
The kernel schedules processes, manages memory and talks to hardware drivers.
Encryption scrambles data so that only someone with the key can read it.
Gardening in spring means planting seeds, pulling weeds and watering every evening.
The pilot announced that the plane would land fifteen minutes early because of tailwinds.
Astronomers discovered a planet orbiting a distant star in the habitable zone.
Jazz musicians often improvise melodies over a fixed sequence of chords.
The bakery on the corner sells croissants, baguettes and chocolate cake.
Voters elect members of parliament every four or five years.
Earthquakes are measured by magnitude, and strong ones can damage buildings far away.
"""


def build_tiny_model(
    path: str | Path,
    kind: ModelKind = "modernbert",
    *,
    layout: Layout = "ettin",
    pooling: PoolingMode = "cls",
    activation: str | None = None,
    max_seq_length: int | None = None,
    prompt: str | None = None,
    logit_score: LogitScoreTokens = "yes-no",
    seed: int = 0,
) -> Path:
    """Write a random-weight cross-encoder to ``path``, saved by Sentence Transformers.

    Args:
        path: Folder to write (created; existing files with the same names are overwritten).
        kind: ``"modernbert"`` (no token type ids, local + global attention layers) or ``"bert"``
            (token type ids, absolute positions): the two input conventions real rerankers use.
        layout: ``"ettin"``, ``"pooler"`` or ``"classifier"`` (see the module docstring).
        pooling: the Pooling mode of the ``ettin`` and ``pooler`` layouts.
        activation: None: the layout's own (Identity for ``ettin``, as the release; Sigmoid,
            Sentence Transformers' default for one label, otherwise). ``"default"``: no
            ``activation_fn`` recorded at all, as older saves, so loaders apply the default
            rule. A dotted path such as ``"torch.nn.Identity"``: recorded as ``activation_fn``.
        max_seq_length: When given, the tokenizer's ``model_max_length`` (MODEL_MAX_LENGTH
            otherwise, CAUSAL_MAX_LENGTH for ``causal-lm``), as Sentence Transformers saves a
            changed ``max_seq_length``.
        prompt: When given, recorded as the model's default prompt (prepended to the query;
            a system message, the instruction, for ``causal-lm``).
        logit_score: ``causal-lm`` only: the score is ``logit["yes"] - logit["no"]``
            (``"yes-no"``) or ``logit["yes"]`` alone (``"yes"``).
        seed: Seeds the random weights; the same seed gives the same files.

    Returns:
        The folder, as a Path.

    Raises:
        ValueError: an unknown ``kind``, ``layout`` or ``pooling``, or ``max_seq_length``
            outside 1..MAX_POSITION_EMBEDDINGS.
        ImportError: Sentence Transformers is not installed.
    """
    for value, allowed, what in (
        (kind, ModelKind, "kind"),
        (layout, Layout, "layout"),
        (pooling, PoolingMode, "pooling"),
        (logit_score, LogitScoreTokens, "logit_score"),
    ):
        if value not in get_args(allowed):
            raise ValueError(f"{what} must be one of {get_args(allowed)}, got {value!r}")
    if max_seq_length is not None and not 0 < max_seq_length <= MAX_POSITION_EMBEDDINGS:
        raise ValueError(
            f"max_seq_length must be in 1..{MAX_POSITION_EMBEDDINGS}, got {max_seq_length}"
        )

    import torch

    causal = layout == "causal-lm"
    tokenizer = build_causal_tokenizer() if causal else build_tokenizer(kind)
    with torch.random.fork_rng(devices=[]):  # seed the weights without disturbing the caller
        torch.manual_seed(seed)
        if causal:
            model = _build_causal_lm(tokenizer)
        else:
            model = _build_backbone(kind, tokenizer, headless=layout != "classifier")
        return save_cross_encoder(
            path,
            model,
            tokenizer,
            layout=layout,
            pooling=pooling,
            activation=activation,
            max_seq_length=max_seq_length,
            prompt=prompt,
            logit_score=logit_score,
            readme=_README.format(kind="qwen3" if causal else kind, layout=layout, seed=seed),
        )


def save_cross_encoder(
    path: str | Path,
    backbone: Any,
    tokenizer: Any,
    *,
    layout: Layout,
    pooling: PoolingMode = "cls",
    activation: str | None = None,
    max_seq_length: int | None = None,
    prompt: str | None = None,
    logit_score: LogitScoreTokens = "yes-no",
    readme: str,
) -> Path:
    """Save ``backbone`` (headless, or a sequence classifier for ``classifier``) with
    ``tokenizer`` as a CrossEncoder of ``layout``, through Sentence Transformers' own modules
    and ``save_pretrained``; the head modules get random weights from torch's current RNG.
    ``activation`` as for ``build_tiny_model``."""
    out = Path(path)
    with tempfile.TemporaryDirectory() as staging:
        backbone.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        width = int(backbone.config.hidden_size)
        cross_encoder = _cross_encoder(
            staging, layout, width, pooling, activation, max_seq_length, prompt, logit_score
        )
        out.mkdir(parents=True, exist_ok=True)
        cross_encoder.save_pretrained(str(out))
    if activation == "default":
        st_config_path = out / "config_sentence_transformers.json"
        st_config = json.loads(st_config_path.read_text(encoding="utf-8"))
        del st_config["activation_fn"]
        st_config_path.write_text(json.dumps(st_config, indent=2, sort_keys=True) + "\n")
    (out / "README.md").write_text(readme, encoding="utf-8")
    return out


def _cross_encoder(
    staging: str,
    layout: Layout,
    width: int,
    pooling: PoolingMode,
    activation: str | None,
    max_seq_length: int | None,
    prompt: str | None,
    logit_score: LogitScoreTokens,
) -> Any:
    """The CrossEncoder of ``layout`` around the backbone saved in ``staging``, built from
    Sentence Transformers' own modules (its head modules seeded by the caller)."""
    import torch
    from sentence_transformers import CrossEncoder
    from sentence_transformers.base.modules import Dense, Transformer
    from sentence_transformers.cross_encoder.modules import LogitScore
    from sentence_transformers.sentence_transformer.modules import LayerNorm, Pooling

    from rerankd_server.scoring.st_config import load_activation

    task = {"classifier": "sequence-classification", "causal-lm": "text-generation"}.get(
        layout, "feature-extraction"
    )
    # Keep the backbone's dtype (a large benchmark model is saved in bf16). The causal model's
    # template reads add_generation_prompt, as real LLM rerankers' configs set it.
    extra: dict[str, Any] = {"model_kwargs": {"dtype": "auto"}}
    if layout == "causal-lm":
        extra["processing_kwargs"] = {"chat_template": {"add_generation_prompt": True}}
    transformer = Transformer(
        staging, transformer_task=task, max_seq_length=max_seq_length, **extra
    )
    modules: list[torch.nn.Module] = [transformer]
    if layout == "causal-lm":
        ids = transformer.tokenizer.convert_tokens_to_ids
        false = ids("no") if logit_score == "yes-no" else None
        modules.append(LogitScore(true_token_id=ids("yes"), false_token_id=false))
    if layout == "ettin":
        modules += [
            Pooling(width, pooling_mode=pooling),
            Dense(width, width, bias=False, activation_function=torch.nn.GELU()),
            LayerNorm(width),
        ]
    elif layout == "pooler":
        modules += [
            Pooling(width, pooling_mode=pooling),
            Dense(width, width, bias=True, activation_function=torch.nn.Tanh()),
        ]
    if layout in ("ettin", "pooler"):
        modules.append(
            Dense(width, 1, activation_function=torch.nn.Identity(), module_output_name="scores")
        )
    for module in modules[1:]:  # spread the head's weights like the backbone's
        for name, parameter in module.named_parameters():
            if name.startswith("norm."):  # LayerNorm: near its identity, but not equal to it
                torch.nn.init.normal_(parameter, 1.0 if name.endswith("weight") else 0.0, 0.2)
            else:
                torch.nn.init.normal_(parameter, 0.0, INITIALIZER_RANGE / width**0.5 * 2)
    if activation is None:
        activation = "torch.nn.Identity" if layout == "ettin" else "torch.nn.Sigmoid"
    elif activation == "default":
        activation = "torch.nn.Sigmoid"  # what CrossEncoder chooses for one label
    prompts = {"query": prompt} if prompt is not None else None
    return CrossEncoder(
        modules=modules,
        activation_fn=load_activation(activation),
        device="cpu",
        prompts=prompts,
        default_prompt_name="query" if prompt is not None else None,
    )


def build_tokenizer(kind: ModelKind) -> Any:
    """A lowercase WordPiece tokenizer over CORPUS's vocabulary, wrapped for transformers."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    # BERT's own normalizer: lower-cased, accents stripped, each CJK character a word of its own.
    normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=True, lowercase=True
    )
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    words = Counter(
        word
        for line in CORPUS.splitlines()
        for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(line))
    )
    vocab = {token: i for i, token in enumerate(_vocabulary(words))}
    backend = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    backend.normalizer = normalizer
    backend.pre_tokenizer = pre_tokenizer
    backend.decoder = decoders.WordPiece(prefix="##")
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    input_names = ["input_ids", "attention_mask"]
    if kind == "bert":
        input_names.insert(1, "token_type_ids")
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        model_max_length=MODEL_MAX_LENGTH,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_input_names=input_names,
    )


def _vocabulary(words: Counter[str]) -> list[str]:
    """Special tokens, every printable ASCII character (alone and as a ``##`` continuation), the
    corpus's words, then its commonest word endings, up to VOCAB_SIZE tokens.

    Built directly rather than with tokenizers' WordPieceTrainer, whose tie-breaking follows hash
    order: it gives a slightly different vocabulary on every run, so the same seed would not give
    the same model.
    """
    endings: Counter[str] = Counter()
    for word, count in words.items():
        for start in range(max(1, len(word) - 4), len(word)):
            endings["##" + word[start:]] += count
    chars = [c for c in string.printable if not (c.isspace() or c.isupper())]

    def by_frequency(counts: Counter[str]) -> list[str]:
        return sorted(counts, key=lambda token: (-counts[token], token))

    tokens = [*SPECIAL_TOKENS, *chars, *("##" + c for c in chars)]
    tokens += by_frequency(words) + by_frequency(endings)
    return list(dict.fromkeys(tokens))[:VOCAB_SIZE]


def build_causal_tokenizer() -> Any:
    """A byte-level BPE tokenizer trained on CORPUS (deterministic: BPE training breaks its
    ties by the pair itself), with Qwen's chat tokens and a reranker chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1200,
        special_tokens=CAUSAL_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # "yes" and "no" must be single tokens: the answers LogitScore reads.
    backend.train_from_iterator([*CORPUS.splitlines(), *["yes", "no"] * 20], trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        model_max_length=CAUSAL_MAX_LENGTH,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=CHAT_TEMPLATE,
        padding_side="left",
    )


def qwen3_config(tokenizer: Any, **overrides: Any) -> Any:
    """The config of a two-layer, 32-wide Qwen3 with tied embeddings (as Qwen3-Reranker-0.6B)
    for ``tokenizer``'s ids; ``overrides`` replace its fields (``num_labels`` for a sequence
    classifier, another ``pad_token_id``)."""
    from transformers import Qwen3Config

    fields: dict[str, Any] = {
        "vocab_size": len(tokenizer),
        "hidden_size": HIDDEN_SIZE,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 16,
        "max_position_embeddings": MAX_POSITION_EMBEDDINGS,
        "tie_word_embeddings": True,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "initializer_range": INITIALIZER_RANGE,
    }
    return Qwen3Config(**(fields | overrides))


def _build_causal_lm(tokenizer: Any) -> Any:
    """The tiny Qwen3 (``qwen3_config``) as a causal LM."""
    from transformers import Qwen3ForCausalLM

    return Qwen3ForCausalLM(qwen3_config(tokenizer))


def _build_backbone(kind: ModelKind, tokenizer: Any, *, headless: bool) -> Any:
    """A two-layer, 32-wide model, its ids matching ``tokenizer``: headless (``AutoModel``) or
    a sequence classifier with one label."""
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        BertModel,
        ModernBertConfig,
        ModernBertForSequenceClassification,
        ModernBertModel,
    )

    common = {
        "vocab_size": len(tokenizer),
        "pad_token_id": tokenizer.pad_token_id,
        "num_labels": 1,
        "hidden_size": HIDDEN_SIZE,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "max_position_embeddings": MAX_POSITION_EMBEDDINGS,
        "initializer_range": INITIALIZER_RANGE,
    }
    if kind == "bert":
        config: Any = BertConfig(type_vocab_size=2, **common)
        return BertModel(config) if headless else BertForSequenceClassification(config)
    config = ModernBertConfig(
        cls_token_id=tokenizer.cls_token_id,
        sep_token_id=tokenizer.sep_token_id,
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
        # A global layer, then a local one whose window is shorter than typical test inputs.
        layer_types=["full_attention", "sliding_attention"],
        local_attention=16,
        **common,
    )
    return ModernBertModel(config) if headless else ModernBertForSequenceClassification(config)


def main(argv: list[str] | None = None) -> int:
    """CLI: build a tiny model into PATH and say loudly that its weights are random."""
    parser = argparse.ArgumentParser(
        prog="rerankd make-tiny-model",
        description="Build a tiny RANDOM-weight cross-encoder (for demos and tests only) offline.",
    )
    parser.add_argument("path", type=Path, help="folder to write the model into")
    parser.add_argument(
        "--layout",
        choices=get_args(Layout),
        default="ettin",
        help="module chain: ettin (headless > Pooling > Dense > LayerNorm > Dense, as the Ettin "
        "rerankers ship), pooler (headless > Pooling > Dense(Tanh) > Dense), classifier (one "
        "sequence-classification model) or causal-lm (a Qwen3-shaped LLM reranker: chat "
        "template, then LogitScore)",
    )
    parser.add_argument(
        "--kind", choices=get_args(ModelKind), default="modernbert", help="backbone architecture"
    )
    parser.add_argument(
        "--pooling", choices=get_args(PoolingMode), default="cls", help="Pooling mode"
    )
    parser.add_argument(
        "--activation",
        default=None,
        help="a dotted path such as torch.nn.Identity recorded as the activation_fn; "
        '"default" records none (Sigmoid, as Sentence Transformers decides for one label); '
        "unset: the layout's own (Identity for ettin, Sigmoid otherwise)",
    )
    parser.add_argument(
        "--max-seq-length",
        type=int,
        default=None,
        help=f"the longest pair in tokens (default: {MODEL_MAX_LENGTH})",
    )
    parser.add_argument(
        "--prompt", default=None, help="record a default prompt (causal-lm: the instruction)"
    )
    parser.add_argument(
        "--logit-score",
        choices=get_args(LogitScoreTokens),
        default="yes-no",
        help='causal-lm: score logit["yes"] - logit["no"], or logit["yes"] alone',
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for the random weights")
    args = parser.parse_args(argv)
    from transformers.utils import logging as transformers_logging

    # A "writing shards" progress bar for one small file is noise.
    transformers_logging.disable_progress_bar()
    try:
        out = build_tiny_model(
            args.path,
            args.kind,
            layout=args.layout,
            pooling=args.pooling,
            activation=args.activation,
            max_seq_length=args.max_seq_length,
            prompt=args.prompt,
            logit_score=args.logit_score,
            seed=args.seed,
        )
    except ValueError as exc:
        parser.error(str(exc))
    except ImportError as exc:
        print(
            f"error: building a tiny model needs Sentence Transformers ({exc}); "
            "install it with: pip install 'rerankd[tiny]'",
            file=sys.stderr,
        )
        return 2
    print(out)
    print("warning: the weights are RANDOM; the scores mean nothing (for demos and tests only)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

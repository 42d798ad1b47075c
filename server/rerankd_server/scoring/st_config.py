"""Read a cross-encoder's Sentence Transformers files the way CrossEncoder does.

This decides what the model is (its module chain), the activation, the maximum input length
and the prompt, so that rerankd's scores equal
``sentence_transformers.CrossEncoder(model).predict`` for the same folder. The rules mirror
Sentence Transformers 3.x-6.x:

* layout: ``modules.json`` lists the modules in order. The first is the Transformer, whose own
  ``sentence_bert_config.json`` names its task: ``sequence-classification`` (a model with its
  classifier, whose logits are the scores) or ``feature-extraction`` (a headless ``AutoModel``
  whose token embeddings feed the modules after it, as the Ettin rerankers ship). A folder
  without ``modules.json`` is one sequence-classification Transformer. Module types are matched
  by class name inside the ``sentence_transformers`` package; anything else would be code from
  the model folder and is refused.
* activation: ``activation_fn`` in ``config_sentence_transformers.json``; else the
  ``sentence_transformers.activation_fn`` block of ``config.json``; else the older
  ``sbert_ce_default_activation_function``; else Sigmoid for one label, Identity otherwise.
  Only ``torch.*`` paths are trusted (remote code stays off); others fall back to the default.
* max length: ``max_seq_length`` in the Transformer's ``sentence_bert_config.json``; else the
  tokenizer's ``model_max_length`` capped at the model's ``max_position_embeddings``.
* prompt: ``prompts[default_prompt_name]`` of ``config_sentence_transformers.json``, prepended
  to the query of every pair.
"""

from __future__ import annotations

import importlib
import inspect
import json
import logging
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from rerankd_server.errors import ModelLoadError

log = logging.getLogger(__name__)

_TOO_LARGE = int(1e20)  # transformers' VERY_LARGE_INTEGER marks "no limit"

#: Module classes rerankd builds itself (``scoring.modules``), by their Sentence Transformers name.
KNOWN_MODULES = (
    "Transformer",
    "Pooling",
    "Dense",
    "LayerNorm",
    "Normalize",
    "Dropout",
    "LogitScore",
)

#: Transformer tasks served, with the model output each reads and the feature it writes.
TASK_OUTPUTS = {
    "sequence-classification": ("logits", "scores"),
    "feature-extraction": ("last_hidden_state", "token_embeddings"),
    "text-generation": ("logits", "causal_logits"),
}
#: Size kwargs of the chat template, which rerankd sets itself from the model's max length.
_SIZE_KWARGS = {"padding", "truncation", "max_length", "return_tensors"}

#: Keys of a Transformer's config that Sentence Transformers hands to the model's, tokenizer's
#: or config's from_pretrained (hand-written: its own save writes none); not applied here.
_LOADER_KWARGS = (
    "model_args",
    "tokenizer_args",
    "config_args",
    "model_kwargs",
    "tokenizer_kwargs",
    "config_kwargs",
    "processor_kwargs",
)

# Sentence Transformers' names for the Transformer's config file, newest first.
_TRANSFORMER_CONFIGS = (
    "sentence_bert_config.json",
    "sentence_roberta_config.json",
    "sentence_distilbert_config.json",
    "sentence_camembert_config.json",
    "sentence_albert_config.json",
    "sentence_xlm-roberta_config.json",
    "sentence_xlnet_config.json",
)


@dataclass(frozen=True)
class ModuleSpec:
    """One entry of ``modules.json``."""

    index: int
    kind: str  # one of KNOWN_MODULES
    path: str  # its folder inside the model ("" for the root)

    @property
    def label(self) -> str:
        """How messages name the module, e.g. ``module 3 LayerNorm (3_LayerNorm/)``."""
        return f"module {self.index} {self.kind} ({self.path + '/' if self.path else 'root'})"


@dataclass(frozen=True)
class TransformerSpec:
    """The first module: which model class to load, from where, and what it feeds the chain."""

    path: str
    task: str  # a key of TASK_OUTPUTS
    method_output_name: str  # the model output read: "logits" or "last_hidden_state"
    module_output_name: str  # the feature it is stored as: "scores" or "token_embeddings"
    max_seq_length: int | None
    do_lower_case: bool
    #: How a pair becomes text: None as a text pair (the tokenizer's own pair encoding); else
    #: "flat" or "structured" chat messages through the tokenizer's chat template ("auto":
    #: as Sentence Transformers infers it from the template).
    message_format: str | None = None
    chat_kwargs: dict[str, Any] = field(default_factory=dict)  # to apply_chat_template


@dataclass(frozen=True)
class Layout:
    """A cross-encoder's module chain: the Transformer, then the modules after it."""

    transformer: TransformerSpec
    modules: tuple[ModuleSpec, ...]


@dataclass(frozen=True)
class CrossEncoderConfig:
    """The model-level settings that change scores."""

    activation: str
    prompt: str  # prepended to each query ("" for none)


def resolve_file(source: str, filename: str, subfolder: str = "") -> str | None:
    """Local path of a file of a hub repo or local folder, or None when it does not exist.

    Uses transformers' resolver, so the hub cache and ``HF_HUB_OFFLINE`` are honoured.
    """
    from transformers.utils.hub import cached_file

    path: str | None = cached_file(
        source,
        filename,
        subfolder=subfolder,
        _raise_exceptions_for_missing_entries=False,
        _raise_exceptions_for_connection_errors=False,
    )
    return path


def read_json(source: str, filename: str, subfolder: str = "") -> Any:
    """A JSON file of a hub repo or local folder, or None when it does not exist.

    Raises:
        ModelLoadError: the file exists but is not valid JSON.
    """
    path = resolve_file(source, filename, subfolder)
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(
            f"cannot read {_where(filename, subfolder)} of {source}: {exc}"
        ) from exc


def read_layout(source: str, architectures: list[str] | None) -> Layout:
    """The module chain of the model at ``source``, checked against what rerankd can build.

    Raises:
        ModelLoadError: a module type rerankd does not build, a Transformer that is not first,
            an unsafe module path, or a Transformer task or output it does not serve.
    """
    entries = read_json(source, "modules.json")
    if entries is None:
        if architectures and architectures[0].endswith("ForCausalLM"):
            raise ModelLoadError(
                f"{source} is a causal language model without Sentence Transformers' "
                "modules.json; rerankd serves cross-encoders (sequence classifiers, or a "
                "Transformer followed by Pooling, Dense, LayerNorm, ... modules)"
            )
        return Layout(_transformer(source, "", "sequence-classification"), ())
    if not isinstance(entries, list) or not entries:
        raise ModelLoadError(f"modules.json of {source} is not a list of modules")
    specs = [_module_spec(source, index, entry) for index, entry in enumerate(entries)]
    first, *rest = specs
    if first.kind != "Transformer" or any(spec.kind == "Transformer" for spec in rest):
        raise ModelLoadError(
            f"{source}: modules.json must list exactly one Transformer, first; it lists "
            + " > ".join(spec.kind for spec in specs)
        )
    return Layout(_transformer(source, first.path, None), tuple(rest))


def _module_spec(source: str, index: int, entry: Any) -> ModuleSpec:
    kind_path = entry.get("type") if isinstance(entry, dict) else None
    path = entry.get("path", "") if isinstance(entry, dict) else None
    if not isinstance(kind_path, str) or not isinstance(path, str):
        raise ModelLoadError(f"{source}: modules.json entry {index} has no type and path")
    parts = PurePosixPath(path).parts
    if PurePosixPath(path).is_absolute() or ".." in parts or "\\" in path:
        raise ModelLoadError(f"{source}: module {index} has an unsafe path {path!r}")
    package, _, name = kind_path.rpartition(".")
    if package.split(".")[0] != "sentence_transformers" or name not in KNOWN_MODULES:
        raise ModelLoadError(
            f"{source}: module {index} ({path or 'root'}) has type {kind_path!r}, which rerankd "
            f"does not serve: it builds {', '.join(KNOWN_MODULES)} itself and runs no code from "
            "a model folder"
        )
    return ModuleSpec(index, name, path.rstrip("/"))


def _transformer(source: str, path: str, task: str | None) -> TransformerSpec:
    """The Transformer module's settings; ``task`` None: as its config says (Sentence
    Transformers' default for a listed Transformer is feature-extraction)."""
    config: dict[str, Any] = {}
    for name in _TRANSFORMER_CONFIGS:
        found = read_json(source, name, path)
        if isinstance(found, dict):
            config = found
            break
    task = task or str(config.get("transformer_task", "feature-extraction"))
    if task not in TASK_OUTPUTS:
        raise ModelLoadError(
            f"{source}: its Transformer's task is {task!r}; rerankd serves "
            + " and ".join(TASK_OUTPUTS)
        )
    method_output, module_output = TASK_OUTPUTS[task]
    modality = config.get("modality_config") or {"text": {}}
    allowed = (
        [{"text"}, {"text", "message"}, {"message"}] if task == "text-generation" else [{"text"}]
    )
    entries = list(modality.values()) if isinstance(modality, dict) else []
    if (
        not isinstance(modality, dict)
        or set(modality) not in allowed
        or not all(isinstance(entry, dict) for entry in entries)
        or any(entry.get("method", "forward") != "forward" for entry in entries)
    ):
        raise ModelLoadError(
            f"{source}: its Transformer reads {sorted(modality)}; rerankd serves text pairs "
            "through the model's forward (and, for a causal LM, chat messages)"
        )
    read = {entry.get("method_output_name", method_output) for entry in entries}
    module_output = config.get("module_output_name", module_output)
    if read != {method_output}:
        raise ModelLoadError(
            f"{source}: its Transformer reads the model's {sorted(map(str, read))}; for {task} "
            f"rerankd reads {method_output!r}"
        )
    unapplied = {key: config[key] for key in _LOADER_KWARGS if config.get(key)}
    if unapplied:
        raise ModelLoadError(
            f"{source}: its Transformer sets {unapplied!r}, which Sentence Transformers passes "
            "to the model's loaders and rerankd does not apply; remove them (or set "
            "max_seq_length for a length)"
        )
    message = modality.get("message")
    message_format = str(message.get("format", "auto")) if isinstance(message, dict) else None
    chat_kwargs = _chat_kwargs(source, config.get("processing_kwargs") or {})
    max_seq = config.get("max_seq_length")
    return TransformerSpec(
        path=path,
        task=task,
        method_output_name=str(method_output),
        module_output_name=str(module_output),
        max_seq_length=int(max_seq) if max_seq else None,
        do_lower_case=bool(config.get("do_lower_case", False)),
        message_format=message_format,
        chat_kwargs=chat_kwargs,
    )


def _chat_kwargs(source: str, processing: Any) -> dict[str, Any]:
    """The Transformer's ``processing_kwargs``: only chat-template arguments change how a pair
    becomes tokens in a way rerankd reproduces; anything else is refused, never ignored."""
    served = isinstance(processing, dict) and set(processing) <= {"chat_template", "text"}
    chat = processing.get("chat_template", {}) if served else None
    text = processing.get("text", {}) if served else None
    if (
        not isinstance(chat, dict)
        or text not in ({}, {"logits_to_keep": 1})
        or _SIZE_KWARGS & set(chat)
    ):
        raise ModelLoadError(
            f"{source}: its Transformer's processing_kwargs {processing!r} are not served "
            "(rerankd takes chat_template arguments other than the size ones)"
        )
    if chat.get("sanitize_control_tokens"):
        raise ModelLoadError(
            f"{source}: its chat template arguments set sanitize_control_tokens, which rerankd "
            "does not serve (it tokenizes the rendered pair as text)"
        )
    return dict(chat)


def resolve_config(source: str, model_config: Any, num_labels: int) -> CrossEncoderConfig:
    """Activation path and prompt for the model at ``source`` with ``num_labels`` outputs.

    Raises:
        ModelLoadError: ``default_prompt_name`` names no prompt.
    """
    default = "torch.nn.Sigmoid" if num_labels == 1 else "torch.nn.Identity"
    st = read_json(source, "config_sentence_transformers.json")
    st = st if isinstance(st, dict) else {}
    # CrossEncoder passes over a path that is not torch's (it would be remote code) and then
    # reads config.json's, else the pre-v4 attribute, else takes the default.
    path = _torch_path(st.get("activation_fn"))
    if path is None:
        block = getattr(model_config, "sentence_transformers", None)
        if isinstance(block, dict) and "activation_fn" in block:
            path = _torch_path(block["activation_fn"])
        else:
            path = _torch_path(getattr(model_config, "sbert_ce_default_activation_function", None))
    prompts = st.get("prompts") or {}
    prompt_name = st.get("default_prompt_name")
    if prompt_name is not None and prompt_name not in prompts:
        raise ModelLoadError(
            f"{source}: default_prompt_name {prompt_name!r} is not one of its prompts "
            f"{sorted(prompts)}"
        )
    prompt = prompts.get(prompt_name) or "" if prompt_name is not None else ""
    return CrossEncoderConfig(
        activation=str(path) if path is not None else default, prompt=str(prompt)
    )


def _torch_path(path: Any) -> str | None:
    """``path`` when it names a ``torch.*`` class; None (with a warning for another) else."""
    if path is None:
        return None
    if str(path).startswith("torch."):
        return str(path)
    log.warning("activation %r is not a torch.* path; CrossEncoder passes it over", path)
    return None


def max_input_tokens(
    max_seq_length: int | None, tokenizer_max: int | None, max_positions: int | None
) -> int | None:
    """The longest pair the model reads, or None when nothing bounds it."""
    if max_seq_length is not None:
        return max_seq_length
    limit = tokenizer_max if tokenizer_max is not None and tokenizer_max < _TOO_LARGE else None
    if max_positions is not None and max_positions > 0:
        limit = max_positions if limit is None else min(limit, max_positions)
    return limit


def load_activation(path: Any) -> Any:
    """Instantiate an activation from its dotted path. Only ``torch.*`` ``nn.Module`` classes
    are built, as Sentence Transformers does without remote code.

    Raises:
        ValueError: another path, one that names no such class, or a class that needs
            arguments.
    """
    from torch import nn

    if not isinstance(path, str) or not path.startswith("torch."):
        raise ValueError(f"activation {path!r} is not a torch.* class")
    module_name, _, name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), name, None)
    except ImportError:
        cls = None
    if not (inspect.isclass(cls) and issubclass(cls, nn.Module)):
        raise ValueError(f"activation {path!r} is not a torch.nn.Module class")
    try:
        return cls()
    except TypeError as exc:  # e.g. torch.nn.Threshold, which needs arguments
        raise ValueError(f"activation {path!r} cannot be built without arguments: {exc}") from None


def _where(filename: str, subfolder: str) -> str:
    return f"{subfolder}/{filename}" if subfolder else filename

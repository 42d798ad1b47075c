"""The Hugging Face cross-encoder scorer: a Sentence Transformers CrossEncoder, loaded as its
module chain and scored exactly as ``CrossEncoder.predict`` scores it.

Tokenization uses the model's own fast tokenizer backend (``scoring.pairs``): the ids its
``__call__(pairs, truncation="longest_first")`` gives inside ``CrossEncoder.predict``, without
building padded tensors per request. Padding (or packing) happens once per batch in ``collate``.
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import torch
from tokenizers import Tokenizer

from rerankd_server.batching import fixed_batch_cost
from rerankd_server.errors import ModelLoadError
from rerankd_server.scoring.base import FloatArray, ScorerInfo, TokenizedPairs, Truncation
from rerankd_server.scoring.modules import (
    Chain,
    Dense,
    LogitScore,
    Pooling,
    build_chain,
    pack_padded,
    packed_features,
)
from rerankd_server.scoring.packed import (
    AttentionFn,
    ClassifierHead,
    PackedBatch,
    PackedModernBert,
    PackingUnsupported,
    flash_attn_varlen,
    flat,
    modernbert_encoder,
    pack,
    reference_attention,
    varlen_attention,
)
from rerankd_server.scoring.pairs import (
    ChatEncoder,
    PairEncoder,
    TokenizerUnsupported,
    clone,
    infer_message_format,
)
from rerankd_server.scoring.st_config import (
    TransformerSpec,
    load_activation,
    max_input_tokens,
    read_layout,
    resolve_config,
)

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class Placement:
    """Where and how the model runs, after resolving ``auto``."""

    device: str
    dtype: str
    attention: str


def resolve_placement(device: str, dtype: str, attention: str) -> Placement:
    """Resolve ``auto``: on CUDA bf16 with Flash Attention 2 when the package is installed, else
    packed execution on PyTorch's own varlen attention where it exists, else SDPA; on the CPU
    fp32 with SDPA (packing does not pay there). Both Flash Attentions take half precision
    only, so CUDA in float32 runs SDPA (on the H200 packing float32 failed its load check)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"--device {device} requested but CUDA is not available")
    on_cuda = device.startswith("cuda")
    if dtype == "auto":
        dtype = "bfloat16" if on_cuda else "float32"
    if attention == "auto":
        if not on_cuda or dtype == "float32":
            attention = "sdpa"
        elif importlib.util.find_spec("flash_attn") is not None:
            attention = "flash_attention_2"
        else:
            attention = "packed" if varlen_attention() is not None else "sdpa"
    return Placement(device, dtype, attention)


class HFCrossEncoder:
    """A loaded cross-encoder; see ``scoring.base.Scorer`` for the threading contract.

    The model is its Sentence Transformers module chain (``st_config.read_layout``): a
    Transformer, loaded as a sequence classifier (its logits are the scores), as a headless
    ``AutoModel`` whose token embeddings feed the modules after it (``scoring.modules``), as the
    Ettin rerankers ship, or as a causal LM whose last-position logits feed LogitScore (LLM
    rerankers). Every weight of the backbone and of each module must load: a model with a
    missing or unexpected weight is refused, never served with a random layer.
    """

    def __init__(self, source: str, placement: Placement, name: str = "") -> None:
        """Load tokenizer, backbone and module chain from a hub id or local folder.

        Raises:
            ModelLoadError: the model cannot be found, is incomplete, or is not a one-score
                cross-encoder rerankd can build.
        """
        from transformers import AutoConfig, AutoTokenizer

        check_source(source)
        try:
            config = AutoConfig.from_pretrained(source, trust_remote_code=False)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(_load_advice(source, exc)) from exc
        layout = read_layout(source, getattr(config, "architectures", None))
        spec = layout.transformer
        try:
            if spec.path:
                config = AutoConfig.from_pretrained(source, subfolder=spec.path)
            tokenizer = AutoTokenizer.from_pretrained(
                source, subfolder=spec.path, trust_remote_code=False
            )
        except (OSError, ValueError) as exc:
            raise ModelLoadError(_load_advice(source, exc)) from exc
        if not getattr(tokenizer, "is_fast", False):
            raise ModelLoadError(f"{source} has no fast (Rust) tokenizer, which rerankd needs")
        max_len = max_input_tokens(
            spec.max_seq_length,
            tokenizer.model_max_length,
            getattr(config, "max_position_embeddings", None),
        )
        if max_len is None:
            raise ModelLoadError(
                f"{source} states no max length; set max_seq_length in sentence_bert_config.json"
            )
        self._spec = spec
        self._model = self._load_model(source, spec, placement)
        positions = _position_table(self._model)
        if positions is not None and max_len > positions:
            raise ModelLoadError(
                f"{source}: its max length, {max_len} tokens, is more than the {positions} "
                "positions its embeddings have (longer pairs would fail); set max_seq_length "
                f"to at most {positions} in sentence_bert_config.json"
            )
        self._chain = build_chain(source, layout.modules)
        labels = self._num_labels(source)
        st_config = resolve_config(source, self._model.config, labels)
        self._device = torch.device(placement.device)
        self._chain.to(self._device)
        try:
            self._activation = load_activation(st_config.activation)
        except ValueError as exc:
            raise ModelLoadError(f"{source}: {exc}") from exc
        if getattr(self._activation, "dim", 0) is None:  # Softmax and its kin
            self._activation.dim = 1  # what torch picks for (pairs, 1), without its warning
        forward_params = inspect.signature(self._model.forward).parameters
        self._uses_type_ids = (
            "token_type_ids" in tokenizer.model_input_names and "token_type_ids" in forward_params
        )
        self._pad_id = _pad_id(self._model.config, tokenizer)
        # A causal LM reads its answer at the last position: Sentence Transformers pads left.
        # Any other model is padded right, whatever its tokenizer says: its positions count
        # from the first token, so a pair then scores as it does alone in any batch.
        self._causal = spec.task == "text-generation"
        self._pad_left = self._causal
        self._max_len = max_len
        default_side = "left" if tokenizer.truncation_side == "left" else "right"
        self._sides = {
            Truncation.DEFAULT: default_side,
            Truncation.END: "right",
            Truncation.START: "left",
            Truncation.NONE: default_side,
        }
        backend: Tokenizer = tokenizer.backend_tokenizer
        self._spans_tokenizer = clone(backend, None, default_side, spec.do_lower_case)
        self._pairs = self._pair_encoder(source, tokenizer, spec, max_len, st_config.prompt)
        if st_config.prompt:
            self._set_prompt_length(tokenizer, st_config.prompt)
        self._packed: PackedModernBert | None = None
        self._packed_chain = self._chain
        self._packed_kernel = ""
        if placement.attention == "packed" or (
            placement.attention == "flash_attention_2" and config.model_type == "modernbert"
        ):
            self._try_packing(placement)
        attention = str(getattr(self._model.config, "_attn_implementation", placement.attention))
        if self._packed is not None:
            attention = f"packed ({self._packed_kernel})"
        self._check_scoring(source, placement.dtype)
        self._info = ScorerInfo(
            name=name or source,
            max_input_tokens=max_len,
            activation=st_config.activation,
            dtype=placement.dtype,
            device=str(self._device),
            attention_implementation=attention,
            padded=self._packed is None,
            pair_special_tokens=self._pairs.special_tokens,
            modules=" > ".join(
                [f"Transformer({type(self._model).__name__})", *self._chain.describe()]
            ),
        )

    @staticmethod
    def _load_model(source: str, spec: TransformerSpec, placement: Placement) -> Any:
        """The backbone, every weight of it loaded from the checkpoint.

        Raises:
            ModelLoadError: it cannot be loaded, or its checkpoint lacks weights it needs or
                holds weights it does not have.
        """
        from transformers import (
            AutoModel,
            AutoModelForCausalLM,
            AutoModelForSequenceClassification,
        )

        auto = {
            "feature-extraction": AutoModel,
            "text-generation": AutoModelForCausalLM,
        }.get(spec.task, AutoModelForSequenceClassification)
        kwargs = {
            "dtype": _DTYPES[placement.dtype],
            "trust_remote_code": False,
            "subfolder": spec.path,
            "output_loading_info": True,
        }
        # Packed execution keeps the padded model for its check and as the fallback.
        attention = "sdpa" if placement.attention == "packed" else placement.attention
        try:
            try:
                model, report = auto.from_pretrained(
                    source, attn_implementation=attention, **kwargs
                )
            except (ImportError, ValueError) as exc:
                if attention == "eager":
                    raise
                log.warning("attention %s unavailable (%s); using eager", attention, exc)
                model, report = auto.from_pretrained(source, attn_implementation="eager", **kwargs)
        except OSError as exc:
            raise ModelLoadError(_load_advice(source, exc)) from exc
        except Exception as exc:  # whatever transformers raises: one line, never a traceback
            raise ModelLoadError(f"cannot load {source} as {auto.__name__}: {exc}") from exc
        _check_loading_report(source, type(model).__name__, spec, report)
        return model.to(placement.device).eval()

    def _num_labels(self, source: str) -> int:
        """Scores per pair, which must be one: the classifier's labels, or the width of the
        last module that writes ``scores``.

        Raises:
            ModelLoadError: the chain writes no scores, or more than one per pair.
        """
        writers = [
            step
            for step in self._chain.steps
            if isinstance(step, LogitScore)
            or (isinstance(step, Dense) and step.output_name == "scores")
        ]
        if writers:
            last = writers[-1]
            labels = int(last.linear.out_features) if isinstance(last, Dense) else 1
        elif self._spec.module_output_name == "scores":
            labels = int(getattr(self._model.config, "num_labels", 1))
        else:
            raise ModelLoadError(
                f"{source}: no module of its chain writes scores: it is not a cross-encoder"
            )
        if labels != 1:
            raise ModelLoadError(
                f"{source} has {labels} labels; rerankd serves one-score cross-encoders"
            )
        return labels

    def _pair_encoder(
        self, source: str, tokenizer: Any, spec: TransformerSpec, max_len: int, prompt: str
    ) -> PairEncoder | ChatEncoder:
        """How pairs become tokens: through the chat template for a causal LM that reads chat
        messages, else as the tokenizer encodes a text pair.

        Raises:
            ModelLoadError: the tokenizer's pairs cannot be reproduced, or the model reads
                chat messages but has no chat template.
        """
        plain = self._spans_tokenizer  # the model's tokenizer without truncation
        if spec.message_format is None:
            try:
                return PairEncoder(plain, max_len, self._uses_type_ids, prompt)
            except TokenizerUnsupported as exc:
                raise ModelLoadError(f"{source}: its tokenizer cannot be served: {exc}") from exc
        template = getattr(tokenizer, "chat_template", None)
        if not isinstance(template, str) or not template:
            raise ModelLoadError(
                f"{source} reads chat messages but its tokenizer has no chat template "
                "(chat_template.jinja or tokenizer_config.json)"
            )
        message_format = spec.message_format
        if message_format == "auto":
            message_format = infer_message_format(template, self._model.config.model_type)
        try:
            return ChatEncoder(tokenizer, plain, max_len, message_format, spec.chat_kwargs, prompt)
        except Exception as exc:  # the template's own errors (raise_exception, a bad variable)
            reason = " ".join(str(exc).split())
            raise ModelLoadError(
                f"{source}: its chat template cannot render a (query, document) pair: {reason}"
            ) from exc

    def _set_prompt_length(self, tokenizer: Any, prompt: str) -> None:
        """Tell Pooling how many leading tokens are the prompt, measured as Sentence
        Transformers does: the prompt alone with special tokens, less a trailing one."""
        ids = self._spans_tokenizer.encode(prompt, add_special_tokens=True).ids
        length = len(ids) - (1 if ids and ids[-1] in set(tokenizer.all_special_ids) else 0)
        for step in self._chain.steps:
            if isinstance(step, Pooling):
                step.prompt_length = length

    def _try_packing(self, placement: Placement) -> None:
        """Run packed from now on, once the packed scores matched the padded model's on sample
        pairs; stay padded, with a warning saying why, when the model, this PyTorch or the
        device cannot run it or it disagrees."""
        on_cuda = self._device.type == "cuda"
        attention: AttentionFn | None
        if not on_cuda:
            attention, self._packed_kernel = reference_attention, "sdpa"
        elif placement.attention == "flash_attention_2":
            attention, self._packed_kernel = flash_attn_varlen(), "flash_attn varlen"
        else:
            attention, self._packed_kernel = varlen_attention(), "varlen_attn"
        try:
            if attention is None:
                raise PackingUnsupported(f"no {self._packed_kernel} kernel in this install")
            runner = PackedModernBert(modernbert_encoder(self._model), attention)
            chain = self._chain
            if self._spec.module_output_name == "scores":  # a classifier: its own head
                chain = Chain([ClassifierHead(self._model)])
            self._packed, self._packed_chain = runner, chain  # the check runs through them
            generator = torch.Generator().manual_seed(0)
            vocab = int(self._model.config.vocab_size)
            ids = [
                torch.randint(5, vocab, (n,), generator=generator).tolist()
                for n in sorted({2, min(37, self._max_len), min(300, self._max_len)})
            ]
            packed = self.device_scores(pack(ids, pin=False)).cpu().numpy()
            padded = self.device_scores(self.collate_padded(ids, None)).cpu().numpy()
            worst = _relative_difference(packed, padded)
            if not worst <= _tolerance(placement.dtype):
                raise PackingUnsupported(f"packed scores differ from padded ones by {worst:.2e}")
        except Exception as exc:  # any failure here means: run padded, as before
            log.warning("packed execution unavailable (%s); running padded batches", exc)
            self._packed, self._packed_chain = None, self._chain
            return
        log.info("packed execution checked against padded (relative difference %.1e)", worst)

    def _check_scoring(self, source: str, dtype: str) -> None:
        """Score two probe pairs together and each alone, as served, before serving: a model
        that fails on a batch (no pad id to find its last token, an answer token outside the
        vocabulary, an activation that does not take one score per pair) or whose scores
        depend on their batch is refused at start, never served to fail or mislead callers.

        Raises:
            ModelLoadError: saying what went wrong, in one line.
        """
        long = " ".join(["the ls command lists the files of a directory"] * 6)
        pairs = [("list files", "ls"), ("how do I list the files in a directory", long)]

        def scores(rows: range) -> FloatArray:
            ids = [tokens.ids[i] for i in rows]
            types = None if tokens.type_ids is None else [tokens.type_ids[i] for i in rows]
            return self.activate(self.forward(self.collate(ids, types)))

        try:
            tokens = self.tokenize(pairs, Truncation.DEFAULT)
            together = scores(range(len(pairs)))
            alone = [scores(range(i, i + 1)) for i in range(len(pairs))]
        except Exception as exc:  # whatever the model or its modules raise: one line
            reason = " ".join(str(exc).split())
            raise ModelLoadError(
                f"{source} cannot score a batch of pairs: {type(exc).__name__}: {reason}"
            ) from exc
        if together.shape != (len(pairs),) or any(one.shape != (1,) for one in alone):
            raise ModelLoadError(f"{source} does not give one score per pair")
        single = np.concatenate(alone)
        if not (np.isfinite(together).all() and np.isfinite(single).all()):
            raise ModelLoadError(f"{source} gives scores that are not finite numbers")
        worst = _relative_difference(together, single)
        if not worst <= _tolerance(dtype):
            raise ModelLoadError(
                f"{source}: a pair's score depends on the batch it is in (relative difference "
                f"{worst:.1e}); its config's pad_token_id may not be a token its classifier "
                "skips"
            )

    @property
    def info(self) -> ScorerInfo:
        return self._info

    def tokenize(self, pairs: Sequence[tuple[str, str]], truncation: Truncation) -> TokenizedPairs:
        """Tokenize as CrossEncoder does, with work bounded by what the model reads
        (``scoring.pairs``)."""
        ids, type_ids, truncated = self._pairs.encode(pairs, self._sides[truncation])
        return TokenizedPairs(ids=ids, type_ids=type_ids, truncated=truncated)

    def token_spans(self, texts: Sequence[str]) -> list[list[tuple[int, int]]]:
        encodings = self._spans_tokenizer.encode_batch(list(texts), add_special_tokens=False)
        return [list(enc.offsets) for enc in encodings]

    def collate(self, ids: Sequence[list[int]], type_ids: Sequence[list[int]] | None) -> Any:
        if self._packed is not None:
            return pack(ids, pin=self._device.type == "cuda")
        return self.collate_padded(ids, type_ids)

    def collate_padded(
        self, ids: Sequence[list[int]], type_ids: Sequence[list[int]] | None
    ) -> dict[str, torch.Tensor]:
        """The padded form of a batch, however the model runs (for the packed load check and
        for benchmarks that compare the two)."""
        # Whole arrays at once: the real tokens, in row order, fill each row's span.
        lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        columns = np.arange(int(lengths.max()))
        if self._pad_left:
            real = columns >= (len(columns) - lengths)[:, None]
        else:
            real = columns < lengths[:, None]
        total = int(lengths.sum())
        input_ids = np.full(real.shape, self._pad_id, dtype=np.int64)
        input_ids[real] = flat(ids, total)
        batch = {
            "input_ids": torch.from_numpy(input_ids),
            "attention_mask": torch.from_numpy(real.astype(np.int64)),
        }
        if type_ids is not None:
            types = np.zeros(real.shape, dtype=np.int64)
            types[real] = flat(type_ids, total)
            batch["token_type_ids"] = torch.from_numpy(types)
        if self._device.type == "cuda":
            batch = {key: value.pin_memory() for key, value in batch.items()}
        return batch

    def forward(self, batch: Any) -> FloatArray:
        """Raw logits of a collated batch. Out of device memory, the batch is split in halves
        and each half retried (down to single pairs), so a batch the budget let through still
        succeeds, only slower, instead of failing every caller in it."""
        try:
            out: FloatArray = self.device_scores(batch).cpu().numpy()
            return out
        except torch.OutOfMemoryError:
            count = len(batch) if isinstance(batch, PackedBatch) else len(batch["input_ids"])
            if count == 1:
                raise
        if self._device.type == "cuda":
            torch.cuda.empty_cache()
        log.warning("out of device memory with %d pairs; retrying in halves", count)
        first: Any
        second: Any
        if isinstance(batch, PackedBatch):
            first, second = batch.halves()
        else:
            half = count // 2
            first = {key: value[:half] for key, value in batch.items()}
            second = {key: value[half:] for key, value in batch.items()}
        return np.concatenate([self.forward(first), self.forward(second)])

    def device_scores(self, batch: Any) -> torch.Tensor:
        """Float32 raw scores of a collated batch (packed or padded), left on the device:
        what ``forward`` copies back, without its wait (benchmarks time batches with it)."""
        with torch.inference_mode():
            if isinstance(batch, PackedBatch):
                return self._packed_scores(batch)
            return self._padded_scores(batch)

    def _padded_scores(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        inputs = {k: v.to(self._device, non_blocking=True) for k, v in batch.items()}
        if self._causal:
            # Positions count from each row's first real token, so a pair scores the same in
            # any batch (Sentence Transformers' positions shift with left padding: its scores
            # move by ~1e-5 with its batch size; these equal its scores of one pair alone).
            mask = inputs["attention_mask"]
            inputs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
            inputs["logits_to_keep"] = 1  # type: ignore[assignment]  # LogitScore reads the last
        output = getattr(self._model(**inputs), self._spec.method_output_name)
        name = self._spec.module_output_name
        if name == "token_embeddings":  # packed by the mask for the chain
            features = pack_padded(output.float(), inputs["attention_mask"], name)
        else:
            features = {name: output.float()}
        scores: torch.Tensor = self._chain(features)["scores"][:, 0].float()
        return scores

    def _packed_scores(self, batch: PackedBatch) -> torch.Tensor:
        if self._packed is None:
            raise ValueError("this model runs padded batches")
        batch = batch.to(self._device)
        hidden = self._packed.hidden(batch)
        features = packed_features(hidden.float(), batch.cu_seqlens, "token_embeddings")
        scores: torch.Tensor = self._packed_chain(features)["scores"][:, 0].float()
        return scores

    def activate(self, logits: FloatArray) -> FloatArray:
        """The activation of each pair's logit, applied as ``CrossEncoder.predict`` applies it,
        to a (pairs, 1) array: an activation across its input (Softmax) then never mixes the
        scores of different pairs."""
        with torch.inference_mode():
            out: FloatArray = self._activation(torch.from_numpy(logits)[:, None])[:, 0].numpy()
        return out

    def warmup(self, max_batch_tokens: int, max_batch_size: int) -> float:
        """One batch at the full budget, then a timed batch of one 128-token row and one of a
        quarter budget of such rows (each run once untimed first, then the fastest of the
        rest): the two split a batch's time into a cost per token and a fixed cost, which is
        returned in tokens. It is measured here, not assumed, because it differs widely by
        model and by device (small models on a GPU are launch-bound); docs/design.md, "A
        batch's fixed cost", has the measurements."""
        length = min(self._max_len, max_batch_tokens)
        self._pad_batch(length, max(1, min(max_batch_size, max_batch_tokens // length)))
        row = min(128, self._max_len, max_batch_tokens)
        rows = max(2, min(max_batch_size, max_batch_tokens // (4 * row)))

        def fastest(count: int, runs: int) -> float:
            self._pad_batch(row, count)  # a new shape's first run is slow
            return min(self._pad_batch(row, count) for _ in range(runs))

        small, large = fastest(1, 3), fastest(rows, 2)
        return fixed_batch_cost(row, small, row * rows, large)

    def _pad_batch(self, length: int, count: int) -> float:
        """Seconds to run ``count`` rows of ``length`` padding tokens."""
        ids = [[self._pad_id] * length for _ in range(count)]
        batch = self.collate(ids, ids if self._uses_type_ids else None)
        began = time.perf_counter()
        self.forward(batch)
        return time.perf_counter() - began


def _relative_difference(got: FloatArray, expected: FloatArray) -> float:
    """The largest difference between two computations of the same scores, relative to their
    size (1 + the largest magnitude): what the load-time checks compare."""
    return float(np.abs(got - expected).max() / (1.0 + np.abs(expected).max()))


def _tolerance(dtype: str) -> float:
    """How far two computations of the same scores may differ: float32's rounding, or half
    precision's."""
    return 1e-4 if dtype == "float32" else 5e-2


def _pad_id(config: Any, tokenizer: Any) -> int:
    """The id padding is filled with: the model config's own pad id, which an LLM sequence
    classifier compares ids with to find each row's last real token (its tokenizer's may
    differ, e.g. pad = eos in one and not the other), else the tokenizer's, else 0 (padding
    is masked, and a causal LM's answer is read at the last, real position)."""
    pad = getattr(config.get_text_config(), "pad_token_id", None)
    if isinstance(pad, int):
        return pad
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def _check_loading_report(
    source: str, model_class: str, spec: TransformerSpec, report: dict[str, Any]
) -> None:
    """Refuse a backbone whose checkpoint did not fill it exactly (transformers would have
    initialised the missing weights at random and ignored the unexpected ones).

    A headless model's pooler is exempt: the chain reads its token embeddings, never the
    pooler's output, so a checkpoint saved without it still scores exactly.

    Raises:
        ModelLoadError: listing the keys.
    """
    missing = sorted(report.get("missing_keys") or ())
    if spec.method_output_name == "last_hidden_state":
        missing = [key for key in missing if not key.startswith("pooler.")]
    problems = [
        f"{what}: {', '.join(sorted(str(key) for key in keys))}"
        for what, keys in (
            ("missing", missing),
            ("unexpected", report.get("unexpected_keys") or ()),
            ("misshapen", report.get("mismatched_keys") or ()),
        )
        if keys
    ]
    if problems:
        raise ModelLoadError(
            f"{source}: the checkpoint does not match {model_class} ({'; '.join(problems)}): "
            "the folder is incomplete or not a cross-encoder rerankd can serve"
        )


def check_source(source: str, probe_timeout: float = 3.0) -> None:
    """Fail fast, with advice, when ``source`` can be neither read locally nor downloaded.

    Without this a missing hub gives up only after its retries (about half a minute).

    Raises:
        ModelLoadError: a path that is not a folder; or a hub id that is not cached while
            ``HF_HUB_OFFLINE`` is set or the hub endpoint cannot be reached.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        return
    if source.startswith(("/", "./", "../", "~")) or path.exists():
        raise ModelLoadError(_load_advice(source, f"{path} is not a folder"))
    from huggingface_hub import constants, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(source, "config.json"), str):
        return  # cached: transformers loads it (and only checks for updates when online)
    if constants.HF_HUB_OFFLINE:
        raise ModelLoadError(
            _load_advice(source, "not in the local cache and HF_HUB_OFFLINE is set")
        )
    endpoint = urlsplit(constants.ENDPOINT)
    host, port = endpoint.hostname or "huggingface.co", endpoint.port or 443
    try:
        socket.create_connection((host, port), timeout=probe_timeout).close()
    except OSError as exc:
        raise ModelLoadError(_load_advice(source, f"cannot reach {host}:{port} ({exc})")) from exc


def _load_advice(source: str, exc: BaseException | str) -> str:
    """Why a model could not be had, and what to do. A local folder's own files are at fault
    (a corrupt tokenizer.json, a Git LFS pointer in place of a file): no hub advice then."""
    reason = " ".join(str(exc).split())  # one line, whatever the library's message held
    if Path(source).is_dir():
        return f"cannot load the model folder {source!r}: {reason}"
    return (
        f"cannot load model {source!r}: {reason}\n"
        "rerankd needs a Hugging Face model id it can download (or find in the cache with "
        "HF_HUB_OFFLINE=1) or a local folder holding the model. Without network access, copy "
        "the model folder to this machine and run: rerankd serve --model /path/to/model-folder"
    )


def _position_table(model: torch.nn.Module) -> int | None:
    """How many positions a model with a learned table of position embeddings can read (a
    RoBERTa-style table starts after its padding index); None for other position schemes."""
    for name, module in model.named_modules():
        if name.endswith("position_embeddings") and isinstance(module, torch.nn.Embedding):
            offset = module.padding_idx + 1 if module.padding_idx is not None else 0
            return int(module.num_embeddings) - offset
    return None

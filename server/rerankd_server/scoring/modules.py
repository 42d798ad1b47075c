"""The modules after a cross-encoder's Transformer, built by rerankd's own code.

A modular Sentence Transformers CrossEncoder (the Ettin rerankers: a headless ModernBERT, then
Pooling(cls), Dense, LayerNorm, Dense) lists its modules in ``modules.json``; each module after
the Transformer is a small torch layer whose ``config.json`` and weights lie in its own folder.
Each type is re-implemented here from its config with Sentence Transformers' semantics, so no
class is imported from the model folder (no remote code can run), and every weight file must
match its layer's parameters exactly: a missing, unexpected or misshapen weight refuses the
model instead of leaving a layer randomly initialised.

Modules read and write a features dict, as Sentence Transformers' do, so a chain runs in the
order the file lists. Token embeddings always arrive packed (``packed_features``): one
(tokens, hidden) matrix for all pairs of a batch, with ``cu_seqlens`` marking where each pair
starts. A padded batch is packed by its attention mask first, so one pooling implementation
serves padded and unpadded execution alike. The chain runs in float32 whatever the backbone's
dtype: it costs a few rows per pair and keeps the head as exact as the reference.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from rerankd_server.errors import ModelLoadError
from rerankd_server.scoring.st_config import ModuleSpec, load_activation, read_json, resolve_file

Features = dict[str, Any]

POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
# The boolean keys of earlier releases, in the order Sentence Transformers concatenates them.
_LEGACY_POOLING_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
_EMBEDDING = "sentence_embedding"


def packed_features(hidden: torch.Tensor, cu_seqlens: torch.Tensor, name: str) -> Features:
    """Features of packed token embeddings: ``hidden`` (tokens, dim), pair i's tokens at
    ``cu_seqlens[i]:cu_seqlens[i + 1]``."""
    return {name: hidden, "cu_seqlens": cu_seqlens.long()}


def pack_padded(hidden: torch.Tensor, attention_mask: torch.Tensor, name: str) -> Features:
    """Packed features of a padded (pairs, length, dim) output: the real tokens of each row in
    order, whichever side was padded."""
    mask = attention_mask.bool()
    lengths = mask.sum(dim=1)
    cu = torch.zeros(len(lengths) + 1, dtype=torch.long, device=hidden.device)
    cu[1:] = torch.cumsum(lengths, 0)
    return packed_features(hidden[mask], cu, name)


class Pooling(nn.Module):
    """Sentence Transformers' Pooling on packed token embeddings (every mode, concatenated in
    the order given; ``include_prompt`` False leaves the prompt's tokens out)."""

    def __init__(self, dimension: int, modes: tuple[str, ...], include_prompt: bool) -> None:
        super().__init__()
        self.dimension = dimension
        self.modes = modes
        self.include_prompt = include_prompt
        self.prompt_length = 0  # set by the scorer when the model has a prompt

    def describe(self) -> str:
        return f"Pooling({'+'.join(self.modes)})"

    def forward(self, features: Features) -> Features:
        hidden: torch.Tensor = features["token_embeddings"]
        cu: torch.Tensor = features["cu_seqlens"]
        features[_EMBEDDING] = torch.cat(self._pool(hidden, cu), dim=-1)
        return features

    def _pool(self, hidden: torch.Tensor, cu: torch.Tensor) -> list[torch.Tensor]:
        count, device = len(cu) - 1, hidden.device
        lengths, starts = cu[1:] - cu[:-1], cu[:-1]
        segment = torch.repeat_interleave(torch.arange(count, device=device), lengths)
        position = torch.arange(hidden.shape[0], device=device) - starts[segment]
        skip = 0 if self.include_prompt else self.prompt_length
        tokens = hidden
        if skip:  # the scatter modes read only the tokens after each pair's prompt
            keep = position >= skip
            tokens, segment, position = hidden[keep], segment[keep], position[keep]
        kept = (lengths - skip).clamp(min=1)
        wide = tokens.float()
        out: list[torch.Tensor] = []
        for mode in self.modes:
            if mode == "cls":  # the first token after the prompt (the first when none is left)
                out.append(hidden[starts + torch.where(lengths > skip, skip, 0)])
            elif mode == "lasttoken":
                out.append(hidden[cu[1:] - 1])
            elif mode in ("mean", "mean_sqrt_len_tokens"):
                total = wide.new_zeros(count, wide.shape[1]).index_add_(0, segment, wide)
                denominator = kept.to(wide.dtype)[:, None]
                if mode == "mean_sqrt_len_tokens":
                    denominator = denominator.sqrt()
                out.append((total / denominator).to(hidden.dtype))
            elif mode == "max":
                index = segment[:, None].expand(-1, tokens.shape[1])
                empty = tokens.new_full((count, tokens.shape[1]), float("-inf"))
                out.append(empty.scatter_reduce(0, index, tokens, reduce="amax"))
            else:  # weightedmean: weights count positions from each pair's first token
                weight = (position + 1).to(wide.dtype)[:, None]
                total = wide.new_zeros(count, wide.shape[1]).index_add_(0, segment, wide * weight)
                weights = wide.new_zeros(count, 1).index_add_(0, segment, weight)
                out.append((total / weights.clamp(min=1e-9)).to(hidden.dtype))
        return out


class Dense(nn.Module):
    """Sentence Transformers' Dense: ``activation(linear(x))`` (plus ``x`` or its projection
    with ``use_residual``), read from and written to named features."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool,
        activation: nn.Module,
        input_name: str,
        output_name: str,
        use_residual: bool,
    ) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features, bias=bias)
        self.activation = activation
        self.input_name, self.output_name = input_name, output_name
        self.use_residual = use_residual
        if use_residual and in_features != out_features:
            self.residual = nn.Linear(in_features, out_features, bias=False)

    def describe(self) -> str:
        name = type(self.activation).__name__
        return "Dense" if name == "Identity" else f"Dense({name})"

    def forward(self, features: Features) -> Features:
        x = features[self.input_name]
        out = self.activation(self.linear(x))
        if self.use_residual:
            out = out + (self.residual(x) if hasattr(self, "residual") else x)
        features[self.output_name] = out
        return features


class LayerNorm(nn.Module):
    """Sentence Transformers' LayerNorm of the sentence embedding."""

    def __init__(self, dimension: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dimension)

    def describe(self) -> str:
        return "LayerNorm"

    def forward(self, features: Features) -> Features:
        features[_EMBEDDING] = self.norm(features[_EMBEDDING])
        return features


class Normalize(nn.Module):
    """Sentence Transformers' Normalize: L2 norm of a named feature."""

    def __init__(self, input_name: str, output_name: str) -> None:
        super().__init__()
        self.input_name, self.output_name = input_name, output_name

    def describe(self) -> str:
        return "Normalize"

    def forward(self, features: Features) -> Features:
        if self.input_name in features:
            features[self.output_name] = nn.functional.normalize(
                features[self.input_name], p=2, dim=-1
            )
        return features


class Dropout(nn.Module):
    """Sentence Transformers' Dropout: nothing at inference."""

    def describe(self) -> str:
        return "Dropout"

    def forward(self, features: Features) -> Features:
        return features


class LogitScore(nn.Module):
    """Sentence Transformers' LogitScore: a causal LM's next-token logits at the last position
    become the score, ``logit[true] - logit[false]`` (or ``logit[true]`` alone)."""

    def __init__(self, true_id: int, false_id: int | None, input_name: str) -> None:
        super().__init__()
        self.true_id, self.false_id, self.input_name = true_id, false_id, input_name

    def describe(self) -> str:
        tokens = f"{self.true_id}" if self.false_id is None else f"{self.true_id} - {self.false_id}"
        return f"LogitScore({tokens})"

    def forward(self, features: Features) -> Features:
        logits = features[self.input_name][:, -1]
        scores = logits[:, self.true_id]
        if self.false_id is not None:
            scores = scores - logits[:, self.false_id]
        features["scores"] = scores.unsqueeze(1)
        return features


class Chain(nn.Module):
    """The modules after the Transformer, run in order on a features dict."""

    def __init__(self, modules: Sequence[nn.Module]) -> None:
        super().__init__()
        self.steps = nn.ModuleList(modules)

    def describe(self) -> list[str]:
        return [step.describe() for step in self.steps]  # type: ignore[operator]

    def forward(self, features: Features) -> Features:
        for step in self.steps:
            features = step(features)
        return features


def build_chain(source: str, specs: Sequence[ModuleSpec]) -> Chain:
    """Build and load every module after the Transformer.

    Raises:
        ModelLoadError: a config rerankd cannot build exactly, or weights that do not match.
    """
    modules = []
    for spec in specs:
        config = read_json(source, "config.json", spec.path)
        if config is not None and not isinstance(config, dict):
            raise ModelLoadError(f"{source}: {spec.label}: config.json is not an object")
        try:
            module = _BUILDERS[spec.kind](config or {})
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelLoadError(f"{source}: {spec.label}: cannot build it: {exc}") from exc
        load_weights(module, source, spec)
        modules.append(module.eval())
    return Chain(modules)


def load_weights(module: nn.Module, source: str, spec: ModuleSpec) -> None:
    """Load the module's own weight file, which must hold exactly its parameters.

    Raises:
        ModelLoadError: the file is missing (for a module with parameters), unreadable, or has
            missing, unexpected or misshapen keys.
    """
    expected = module.state_dict()
    found = _read_weights(source, spec)
    if found is None:
        if not expected:
            return
        raise ModelLoadError(
            f"{source}: {spec.label} has no model.safetensors: the folder is incomplete"
        )
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    misshapen = sorted(
        f"{key} {tuple(found[key].shape)} (expected {tuple(expected[key].shape)})"
        for key in set(expected) & set(found)
        if found[key].shape != expected[key].shape
    )
    problems = [
        f"{what}: {', '.join(keys)}"
        for what, keys in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("misshapen", misshapen),
        )
        if keys
    ]
    if problems:
        raise ModelLoadError(
            f"{source}: {spec.label} weights do not match its config ({'; '.join(problems)}): "
            "the folder is incomplete or not a cross-encoder rerankd can serve"
        )
    module.load_state_dict({key: value.float() for key, value in found.items()}, strict=True)


def _read_weights(source: str, spec: ModuleSpec) -> dict[str, torch.Tensor] | None:
    path = resolve_file(source, "model.safetensors", spec.path)
    try:
        if path is not None:
            from safetensors.torch import load_file

            return load_file(path)
        path = resolve_file(source, "pytorch_model.bin", spec.path)
        if path is None:
            return None
        weights = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unreadable file: refuse with its name
        raise ModelLoadError(f"{source}: {spec.label}: cannot read {path}: {exc}") from exc
    if not isinstance(weights, dict):
        raise ModelLoadError(f"{source}: {spec.label}: {path} holds no state dict")
    return weights


def _pooling(config: dict[str, Any]) -> Pooling:
    dimension = config.get("embedding_dimension", config.get("word_embedding_dimension"))
    modes = config.get("pooling_mode")
    if modes is None:
        modes = [mode for key, mode in _LEGACY_POOLING_KEYS.items() if config.get(key)] or ["mean"]
    modes = (modes,) if isinstance(modes, str) else tuple(modes)
    unknown = [mode for mode in modes if mode not in POOLING_MODES]
    if unknown or not modes or not isinstance(dimension, int):
        raise ValueError(f"pooling modes {list(modes)} over dimension {dimension!r}")
    return Pooling(dimension, modes, bool(config.get("include_prompt", True)))


def _dense(config: dict[str, Any]) -> Dense:
    known = {"in_features", "out_features", "bias", "activation_function", "module_input_name"}
    known |= {"module_output_name", "use_residual"}
    if set(config) - known:
        raise ValueError(f"unknown keys {sorted(set(config) - known)}")
    input_name = config.get("module_input_name", _EMBEDDING)
    return Dense(
        int(config["in_features"]),
        int(config["out_features"]),
        bool(config.get("bias", True)),
        # Sentence Transformers' Dense defaults to Tanh when the config names none.
        load_activation(config.get("activation_function", "torch.nn.Tanh")),
        input_name,
        config.get("module_output_name") or input_name,
        bool(config.get("use_residual", False)),
    )


def _layer_norm(config: dict[str, Any]) -> LayerNorm:
    return LayerNorm(int(config["dimension"]))


def _normalize(config: dict[str, Any]) -> Normalize:
    input_name = config.get("module_input_name", _EMBEDDING)
    return Normalize(input_name, config.get("module_output_name") or input_name)


def _logit_score(config: dict[str, Any]) -> LogitScore:
    false = config.get("false_token_id")
    true = config["true_token_id"]
    if not isinstance(true, int) or not (false is None or isinstance(false, int)):
        raise ValueError(f"token ids {true!r} and {false!r} are not integers")
    return LogitScore(true, false, config.get("module_input_name", "causal_logits"))


_BUILDERS: dict[str, Callable[[dict[str, Any]], nn.Module]] = {
    "Pooling": _pooling,
    "Dense": _dense,
    "LayerNorm": _layer_norm,
    "Normalize": _normalize,
    "Dropout": lambda config: Dropout(),
    "LogitScore": _logit_score,
}

"""Scorers: the model behind the scheduler (protocol in ``base``, Hugging Face in ``hf``)."""

from __future__ import annotations

from rerankd_server.scoring.base import Scorer, ScorerInfo, TokenizedPairs, Truncation

__all__ = ["Scorer", "ScorerInfo", "TokenizedPairs", "Truncation"]

"""Softmax and top-k over a batch of scores."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class Prediction:
    index: int
    label: str
    score: float


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 for stable, reproducible scores."""
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def top_k(probabilities: np.ndarray, labels: Sequence[str], k: int) -> list[Prediction]:
    """The ``k`` most probable classes of one row of probabilities, best first (ties: lower index first)."""
    if probabilities.ndim != 1 or probabilities.shape[0] != len(labels):
        raise ValueError(f"scores of shape {probabilities.shape} do not match {len(labels)} labels")
    # A stable argsort of the negated scores keeps equal scores in index order.
    order = np.argsort(-probabilities, kind="stable")[: min(k, len(labels))]
    return [Prediction(int(i), labels[i], float(probabilities[i])) for i in order]

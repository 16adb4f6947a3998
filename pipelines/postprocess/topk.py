"""Softmax and top-k over a batch of logits."""

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


def top_k(logits: np.ndarray, labels: Sequence[str], k: int) -> list[list[Prediction]]:
    """The ``k`` most probable classes of each row, best first (ties: lower index first)."""
    if logits.ndim != 2 or logits.shape[1] != len(labels):
        raise ValueError(f"logits of shape {logits.shape} do not match {len(labels)} labels")
    k = min(k, logits.shape[1])
    probs = softmax(logits)
    # A stable argsort of the negated scores keeps equal scores in index order.
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return [
        [Prediction(int(i), labels[i], float(row[i])) for i in row_order]
        for row, row_order in zip(probs, order, strict=True)
    ]

"""Softmax and top-k over a batch of scores, a whole batch at a time."""

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


def top_k(probabilities: np.ndarray, labels: Sequence[str], k: int) -> list[list[Prediction]]:
    """The ``k`` most probable classes of each row of ``(frames, classes)`` probabilities, best first (ties:
    lower index first), in one sort for the whole batch."""
    if probabilities.ndim != 2 or probabilities.shape[1] != len(labels):
        raise ValueError(f"scores of shape {probabilities.shape} do not match {len(labels)} labels")
    # A stable argsort of the negated scores keeps equal scores in index order.
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, : min(k, len(labels))]
    scores = np.take_along_axis(probabilities, order, axis=1)
    return [[Prediction(i, labels[i], score) for i, score in zip(row, row_scores, strict=True)]
            for row, row_scores in zip(order.tolist(), scores.tolist(), strict=True)]

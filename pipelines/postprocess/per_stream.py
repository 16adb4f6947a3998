"""What happens to one stream's scores between the engine and the publisher: optional temporal
smoothing, and the decision whether a frame's result is published at all."""

from __future__ import annotations

import numpy as np

from pipelines.sources.config import SourceBase


class StreamPostprocess:
    """Exponential moving average of probabilities (``smoothing`` is the weight of the past), a minimum top
    score, and the ``on_change`` publish mode: publish when the top label changes, or after ``heartbeat_s``
    without one. The settings can be replaced while running (:meth:`configure`); the average carries on."""

    def __init__(self, config: SourceBase) -> None:
        self.configure(config)
        self._average: np.ndarray | None = None
        self._last_label: int | None = None
        self._last_publish = float("-inf")

    def configure(self, config: SourceBase) -> None:
        self._alpha = config.smoothing
        self._on_change = config.publish == "on_change"
        self._heartbeat_s = config.heartbeat_s
        self._min_score = config.min_score

    def smooth(self, probabilities: np.ndarray) -> np.ndarray:
        if self._alpha == 0.0:
            self._average = None  # so that turning smoothing on later starts from the current frame
            return probabilities
        if self._average is None:
            self._average = probabilities.copy()
        else:
            self._average = self._alpha * self._average + (1.0 - self._alpha) * probabilities
        return self._average

    def should_publish(self, top_label: int, top_score: float, now: float) -> bool:
        if top_score < self._min_score:
            return False
        if self._on_change and top_label == self._last_label and now - self._last_publish < self._heartbeat_s:
            return False
        self._last_label, self._last_publish = top_label, now
        return True

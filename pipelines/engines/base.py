"""The engine interface: a compiled classifier that turns a batch buffer into logits."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np


class EngineError(RuntimeError):
    """The engine could not be built or could not run; the message says what a user can do."""


class Engine(ABC):
    """Runs the model on the first ``count`` rows of a ``(batch_size, C, H, W)`` float32 buffer.

    Every input buffer the pipeline hands over has exactly ``batch_size`` rows, so an engine with a
    static batch runs the whole buffer (padding rows included) and returns only the ``count`` real rows.
    Only one ``infer`` call is ever in flight.
    """

    name: str
    batch_size: int

    @abstractmethod
    def infer(self, inputs: np.ndarray, count: int) -> np.ndarray:
        """Logits of shape ``(count, classes)``, float32, owned by the caller."""

    def warmup(self, runs: int = 2) -> None:
        """Run a few batches of zeros so that lazy initialisation happens before the first frame."""
        zeros = np.zeros((self.batch_size, *self.input_chw), dtype=np.float32)
        for _ in range(runs):
            self.infer(zeros, self.batch_size)

    @property
    @abstractmethod
    def input_chw(self) -> tuple[int, int, int]:
        """The model's input (channels, height, width)."""

    @abstractmethod
    def describe(self) -> dict[str, str]:
        """Facts for logs and the model-info metric (engine, provider, precision, ...)."""

    def close(self) -> None:  # noqa: B027 - engines with resources override it
        """Release the engine's resources."""

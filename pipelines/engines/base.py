"""The engine interface: a compiled classifier that turns a batch buffer into logits.

Engines are asynchronous at heart: ``submit`` enqueues a batch and ``result`` waits for its logits, so
a GPU engine can copy batch N+1 to the device while batch N computes. An engine also owns the host
buffers the preprocess stage writes into (``input_buffers``): a GPU engine hands out pinned memory that
the device copies from directly; a CPU engine plain arrays.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


class EngineError(RuntimeError):
    """The engine could not be built or could not run; the message says what a user can do."""


class BuildCancelled(Exception):
    """A stop was requested while the engine was being built (or the daemon started): not an error."""


def _ignore(step: str) -> None:
    """A build step nobody reports."""


def _never() -> bool:
    return False


@dataclass(frozen=True)
class BuildHooks:
    """How a long build (minutes of compiling) tells what it is doing and learns that it should stop.

    ``stop_requested`` is polled several times a second while the build waits for a long step; when it
    returns True the step is stopped and :class:`BuildCancelled` raised.
    """

    step: Callable[[str], None] = _ignore
    stop_requested: Callable[[], bool] = _never


@dataclass(frozen=True)
class BuildReport:
    """How a compiled engine came to be: from its cache, or compiled now (and for how long)."""

    cache: str  # hit, miss, rebuilt or uncached
    compile_seconds: float
    cache_bytes: int  # what the compiled-program cache takes after this build (entries evicted)
    program_path: Path | None  # where the compiled program is kept; None when uncached


@dataclass(frozen=True)
class DeviceMemory:
    """A GPU's memory, in bytes: its size, what every process on it uses, and what this engine holds."""

    total: int
    used: int
    ours: int


@dataclass(frozen=True)
class Placement:
    """Where the nodes of an ONNX Runtime session's graph ran: for each provider, its nodes' op types with their
    counts."""

    providers: tuple[str, ...]  # the session's, the one asked for first
    ops: dict[str, Counter[str]]

    @property
    def provider(self) -> str:
        return self.providers[0]

    def counts(self) -> dict[str, int]:
        """Nodes by provider, every provider of the session included (0 for one that ran none)."""
        return {p: self.nodes(p) for p in [*self.providers, *self.ops]}

    def nodes(self, provider: str) -> int:
        return sum(self.ops.get(provider, Counter()).values())

    @property
    def total(self) -> int:
        return sum(self.nodes(p) for p in self.ops)

    def describe(self) -> str:
        """``MIGraphXExecutionProvider took N of M nodes (K on CPUExecutionProvider: Op1 x3, Op2 x1)``."""
        line = f"{self.provider} took {self.nodes(self.provider)} of {self.total} nodes"
        others = [f"{self.nodes(p)} on {p}: " + ", ".join(f"{op} x{n}" for op, n in sorted(
                      ops.items(), key=lambda item: (-item[1], item[0])))
                  for p, ops in sorted(self.ops.items()) if p != self.provider]
        return f"{line} ({'; '.join(others)})" if others else line


class Engine(ABC):
    """Runs the model on the first ``count`` rows of a ``(batch_size, C, H, W)`` float32 buffer.

    Every buffer handed to ``submit`` is one of this engine's ``input_buffers`` and has exactly
    ``batch_size`` rows, so an engine with a static batch runs the whole buffer (padding rows included)
    and returns only the ``count`` real rows. At most ``max_in_flight`` submissions are outstanding;
    results are collected in submission order.
    """

    name: str
    batch_size: int
    max_in_flight: int = 1
    build_report: BuildReport | None = None  # engines that compile say how it went
    placement: Placement | None = None  # ONNX Runtime: where the graph's nodes ran, known after the first run
    _zeros: np.ndarray | None = None  # the input buffer run_zeros keeps

    def input_buffers(self, count: int) -> list[np.ndarray]:
        """``count`` host buffers of shape ``(batch_size, C, H, W)``, float32, for the preprocess stage."""
        return [np.zeros((self.batch_size, *self.input_chw), dtype=np.float32) for _ in range(count)]

    @abstractmethod
    def submit(self, inputs: np.ndarray, count: int) -> Any:
        """Start inference on one of ``input_buffers``; return a handle for :meth:`result`."""

    @abstractmethod
    def result(self, handle: Any) -> np.ndarray:
        """Wait for a submission; logits of shape ``(count, classes)``, float32, owned by the caller."""

    def infer(self, inputs: np.ndarray, count: int) -> np.ndarray:
        """Submit and wait: one batch, synchronously."""
        return self.result(self.submit(inputs, count))

    def warmup(self, runs: int = 2) -> None:
        """Run a few batches of zeros so that lazy initialisation happens before the first frame."""
        for _ in range(runs):
            self.run_zeros()

    def run_zeros(self) -> np.ndarray:
        """One full batch of zeros (a buffer kept for it); its logits. A model that fails when run is an
        :class:`EngineError` saying so (start-up's error, not a traceback from the pipeline)."""
        zeros = self._zeros
        if zeros is None:
            zeros = self._zeros = self.input_buffers(1)[0]
            zeros[:] = 0.0
        try:
            return self.infer(zeros, self.batch_size)
        except EngineError:
            raise
        except Exception as exc:  # whatever the runtime raises for a graph that does not run
            raise EngineError(f"the model fails when run: {type(exc).__name__}: {exc}") from exc

    def check_output(self, labels: int) -> None:
        """Run once and check the logits: one score per label for every frame, all finite; else EngineError."""
        logits = self.run_zeros()
        if logits.shape != (self.batch_size, labels):
            raise EngineError(f"the model's output has shape {list(logits.shape)} for a batch of {self.batch_size}, "
                              f"but its metadata lists {labels} labels: re-export it with labels that match")
        if not np.isfinite(logits).all():
            raise EngineError("the model's output has NaN or infinite scores for a frame of zeros")

    @property
    @abstractmethod
    def input_chw(self) -> tuple[int, int, int]:
        """The model's input (channels, height, width)."""

    @abstractmethod
    def describe(self) -> dict[str, str]:
        """Facts for logs and the model-info metric (engine, provider, precision, ...)."""

    def device_memory(self) -> DeviceMemory | None:
        """The memory of the GPU the engine runs on, where the engine can read it (None: it cannot)."""
        return None

    def close(self) -> None:  # noqa: B027 - engines with resources override it
        """Release the engine's resources."""

"""Preallocated batch input buffers, recycled between the preprocess and inference stages.

With two buffers the preprocess stage fills batch N+1 while the engine runs batch N (double
buffering); a GPU engine maps each host buffer to a device buffer of its own. The pool is bounded, so
it also applies back-pressure: preprocessing cannot run more than ``count`` batches ahead.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass

import numpy as np


@dataclass(eq=False)
class InputBuffer:
    """One batch-shaped float32 array and its slot number in the pool."""

    slot: int
    array: np.ndarray


class BufferPool:
    """A fixed set of ``(batch, C, H, W)`` float32 buffers handed out and given back.

    The arrays come from the engine (``Engine.input_buffers``): pinned host memory for a GPU engine.
    """

    def __init__(self, arrays: list[np.ndarray]) -> None:
        if not arrays or arrays[0].ndim != 4 or arrays[0].shape[0] < 1:
            raise ValueError("a buffer pool needs at least one (batch, C, H, W) buffer")
        if any(a.shape != arrays[0].shape or a.dtype != np.float32 for a in arrays):
            raise ValueError("pool buffers must all be float32 of one shape")
        self.batch = arrays[0].shape[0]
        self.buffers = tuple(InputBuffer(slot, array) for slot, array in enumerate(arrays))
        self._free: queue.Queue[InputBuffer] = queue.Queue()
        for buffer in self.buffers:
            self._free.put(buffer)
        self._lock = threading.Lock()
        self._out: set[int] = set()

    def acquire(self, timeout: float) -> InputBuffer | None:
        """A free buffer, or None if none came back within ``timeout`` seconds."""
        try:
            buffer = self._free.get(timeout=timeout)
        except queue.Empty:
            return None
        with self._lock:
            self._out.add(buffer.slot)
        return buffer

    def release(self, buffer: InputBuffer) -> None:
        with self._lock:
            if buffer.slot not in self._out:
                raise RuntimeError(f"buffer {buffer.slot} released twice")
            self._out.remove(buffer.slot)
        self._free.put(buffer)

    @property
    def in_use(self) -> int:
        with self._lock:
            return len(self._out)

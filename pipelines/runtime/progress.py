"""Whether the engine keeps making progress: the inference stage's heartbeat.

The inference stage records each batch it takes and each batch it hands on. A batch it holds without
handing anything on for a long time means a hung engine (or a stuck output stage); holding nothing means
it is idle, which is legitimate (streams ended, a source reconnecting, nothing to classify yet). The
systemd watchdog and health checks read :class:`Progress` snapshots.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Progress:
    """A snapshot of the inference stage; times are ``time.monotonic()`` seconds."""

    batches_held: int  # taken from the preprocess stage and not yet handed to the output stage
    batches_done: int  # handed on since the start
    last_progress: float  # the last batch handed on, or the moment work arrived while the stage held none

    def stalled_for(self, now: float) -> float:
        """Seconds the stage has held work without handing a batch on; 0 while it holds none (idle)."""
        return max(0.0, now - self.last_progress) if self.batches_held else 0.0


class ProgressTracker:
    """Thread-safe: the inference stage records, any thread takes a snapshot."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._held = 0
        self._done = 0
        self._last = clock()

    def took(self) -> None:
        """A batch came in. Work arriving at an idle stage restarts the clock: idle time is not a stall."""
        with self._lock:
            if not self._held:
                self._last = self._clock()
            self._held += 1

    def handed_on(self) -> None:
        with self._lock:
            self._held -= 1
            self._done += 1
            self._last = self._clock()

    def snapshot(self) -> Progress:
        with self._lock:
            return Progress(self._held, self._done, self._last)

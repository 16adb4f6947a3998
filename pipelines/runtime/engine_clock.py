"""When the engine will next take a batch, so that live frames are taken just in time rather than early.

A batch filled while the engine is still busy holds its frames until the engine is free: with a CPU engine
at batch 4 that is a whole inference time added to every frame's latency, while newer frames of the same
cameras wait behind it. The preprocess stage asks this clock when the engine will accept the next batch
and, for live streams, starts taking frames only one fill-time before that moment.

The estimate is an exponential moving average of a batch's turn on the engine: the time from when it could
start (submitted to an idle engine, or the previous batch collected) to when its result was collected.
"""

from __future__ import annotations

import threading

SMOOTHING = 0.8  # weight of the past in the moving averages


def _average(previous: float | None, sample: float) -> float:
    return sample if previous is None else SMOOTHING * previous + (1.0 - SMOOTHING) * sample


class EngineClock:
    def __init__(self, max_in_flight: int) -> None:
        self._max_in_flight = max_in_flight
        self._lock = threading.Lock()
        self._outstanding = 0  # batches handed on by preprocess and not yet collected
        self._running = 0  # of those, submitted to the engine
        self._turn_start = 0.0  # when the engine's oldest running batch got its turn
        self._turn_s: float | None = None

    def handed_on(self) -> None:
        with self._lock:
            self._outstanding += 1

    def submitted(self, now: float) -> None:
        with self._lock:
            if self._running == 0:
                self._turn_start = now
            self._running += 1

    def collected(self, now: float) -> None:
        with self._lock:
            self._turn_s = _average(self._turn_s, now - self._turn_start)
            self._turn_start = now
            self._running -= 1
            self._outstanding -= 1

    def accepts_at(self) -> float:
        """The ``perf_counter`` time at which a batch handed on now would be submitted (0: at once)."""
        with self._lock:
            ahead = self._outstanding - self._max_in_flight + 1  # turns to wait for before there is room
            if ahead <= 0 or self._turn_s is None:
                return 0.0
            return self._turn_start + ahead * self._turn_s


class FillTimer:
    """The moving average of preprocessing one frame, to know how long before a batch is due to start it."""

    def __init__(self) -> None:
        self.per_frame_s: float | None = None

    def observe(self, seconds: float) -> None:
        self.per_frame_s = _average(self.per_frame_s, seconds)

    def lead_s(self, frames: int) -> float:
        return 0.0 if self.per_frame_s is None else frames * self.per_frame_s

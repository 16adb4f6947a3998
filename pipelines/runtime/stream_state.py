"""Each stream's state (connecting, running, reconnecting, ended, failed), as a metric and as events
for the status topic."""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from typing import Any

from pipelines.log_context import stream_context
from pipelines.runtime.metrics import FINAL_STATES, SOURCE_STATES, PipelineMetrics

log = logging.getLogger(__name__)

STATES = SOURCE_STATES
__all__ = ["FINAL_STATES", "STATES", "StateChange", "StreamStates"]


@dataclasses.dataclass(frozen=True)
class StateChange:
    """A stream entered ``state`` at ``time_ns``; ``detail`` says why (the latest reason while it stays)."""

    stream_id: str
    state: str
    previous: str | None
    detail: str
    time_ns: int


class StreamStates:
    """Thread-safe: capture stages report, the output stage publishes the changes, metrics and the
    readiness check read the states."""

    def __init__(self, streams: list[str], metrics: PipelineMetrics) -> None:
        self._lock = threading.Lock()
        self._metrics = metrics
        self._latest: dict[str, StateChange | None] = {}
        self._gauges: dict[tuple[str, str], Any] = {}
        self.changes: queue.Queue[StateChange] = queue.Queue()
        for stream in streams:
            self.add(stream)

    def add(self, stream_id: str) -> None:
        """A stream that exists from now on (its state not reported yet); one that exists already keeps its."""
        with self._lock:
            self._latest.setdefault(stream_id, None)
            for state in STATES:
                self._gauges[(stream_id, state)] = self._metrics.source_state.labels(stream=stream_id, state=state)

    def remove(self, stream_id: str) -> None:
        """A stream removed from the configuration: no longer reported (its last change was announced)."""
        with self._lock:
            self._latest.pop(stream_id, None)
            for state in STATES:
                self._gauges.pop((stream_id, state), None)

    def set(self, stream_id: str, state: str, detail: str = "", announce: bool = True) -> StateChange | None:
        """Record a state; return the change (None if the state is unchanged: a new ``detail`` then only
        replaces the latest one). ``announce=False`` leaves publishing it to the caller (the end of a
        stream is announced after its last label)."""
        with self._lock:
            if stream_id not in self._latest:  # removed (a thread left to time out may still report)
                return None
            latest = self._latest[stream_id]
            previous = latest.state if latest else None
            if latest is not None and previous == state:
                if detail:
                    self._latest[stream_id] = dataclasses.replace(latest, detail=detail)
                return None
            change = StateChange(stream_id, state, previous, detail, time.time_ns())
            self._latest[stream_id] = change
            gauges = [(name, self._gauges[(stream_id, name)]) for name in STATES]
        for name, gauge in gauges:
            gauge.set(1.0 if name == state else 0.0)
        level = logging.WARNING if state in ("reconnecting", "failed") else logging.INFO
        log.log(level, "stream %s: %s -> %s%s", stream_id, previous or "-", state, f" ({detail})" if detail else "",
                extra=stream_context(stream_id))
        if announce:
            self.changes.put(change)
        return change

    def get(self, stream_id: str) -> str | None:
        """The stream's state (None before its first report, and once it was removed)."""
        with self._lock:
            latest = self._latest.get(stream_id)
        return latest.state if latest else None

    def latest(self) -> dict[str, StateChange | None]:
        """Each stream's latest change (None before its capture stage reported anything)."""
        with self._lock:
            return dict(self._latest)

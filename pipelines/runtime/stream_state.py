"""Each stream's state (connecting, running, reconnecting, ended, failed), as a metric and as events
for the status topic."""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass

from pipelines.runtime.metrics import PipelineMetrics

log = logging.getLogger(__name__)

STATES = ("connecting", "running", "reconnecting", "ended", "failed")


@dataclass(frozen=True)
class StateChange:
    stream_id: str
    state: str
    previous: str | None
    detail: str
    time_ns: int


class StreamStates:
    """Thread-safe: capture stages report, the output stage publishes the changes, metrics read the states."""

    def __init__(self, streams: list[str], metrics: PipelineMetrics) -> None:
        self._lock = threading.Lock()
        self._states: dict[str, str | None] = dict.fromkeys(streams)
        self._gauges = {(s, state): metrics.source_state.labels(stream=s, state=state)
                        for s in streams for state in STATES}
        self.changes: queue.Queue[StateChange] = queue.Queue()

    def set(self, stream_id: str, state: str, detail: str = "", announce: bool = True) -> StateChange | None:
        """Record a state; return the change (None if the state is unchanged). ``announce=False`` leaves
        publishing it to the caller (the end of a stream is announced after its last label)."""
        with self._lock:
            previous = self._states[stream_id]
            if previous == state:
                return None
            self._states[stream_id] = state
        for name in STATES:
            self._gauges[(stream_id, name)].set(1.0 if name == state else 0.0)
        level = logging.WARNING if state in ("reconnecting", "failed") else logging.INFO
        log.log(level, "stream %s: %s -> %s%s", stream_id, previous or "-", state, f" ({detail})" if detail else "")
        change = StateChange(stream_id, state, previous, detail, time.time_ns())
        if announce:
            self.changes.put(change)
        return change

    def get(self, stream_id: str) -> str | None:
        with self._lock:
            return self._states[stream_id]

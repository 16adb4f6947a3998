"""Each stream's state (connecting, running, reconnecting, ended, failed), as a metric and as events
for the status topic."""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time

from pipelines.log_context import stream_context
from pipelines.runtime.metrics import PipelineMetrics

log = logging.getLogger(__name__)

STATES = ("connecting", "running", "reconnecting", "ended", "failed")
FINAL_STATES = ("ended", "failed")  # what a stream's EndOfStream says


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
        self._latest: dict[str, StateChange | None] = dict.fromkeys(streams)
        self._gauges = {(s, state): metrics.source_state.labels(stream=s, state=state)
                        for s in streams for state in STATES}
        self.changes: queue.Queue[StateChange] = queue.Queue()

    def set(self, stream_id: str, state: str, detail: str = "", announce: bool = True) -> StateChange | None:
        """Record a state; return the change (None if the state is unchanged: a new ``detail`` then only
        replaces the latest one). ``announce=False`` leaves publishing it to the caller (the end of a
        stream is announced after its last label)."""
        with self._lock:
            latest = self._latest[stream_id]
            previous = latest.state if latest else None
            if latest is not None and previous == state:
                if detail:
                    self._latest[stream_id] = dataclasses.replace(latest, detail=detail)
                return None
            change = StateChange(stream_id, state, previous, detail, time.time_ns())
            self._latest[stream_id] = change
        for name in STATES:
            self._gauges[(stream_id, name)].set(1.0 if name == state else 0.0)
        level = logging.WARNING if state in ("reconnecting", "failed") else logging.INFO
        log.log(level, "stream %s: %s -> %s%s", stream_id, previous or "-", state, f" ({detail})" if detail else "",
                extra=stream_context(stream_id))
        if announce:
            self.changes.put(change)
        return change

    def get(self, stream_id: str) -> str | None:
        with self._lock:
            latest = self._latest[stream_id]
        return latest.state if latest else None

    def latest(self) -> dict[str, StateChange | None]:
        """Each stream's latest change (None before its capture stage reported anything)."""
        with self._lock:
            return dict(self._latest)

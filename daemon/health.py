"""What ``/readyz`` answers: is the daemon doing its job?

Ready means the model is loaded and the pipeline runs (``Daemon.ready``: the same moment systemd is told),
the daemon is not stopping, and no stream has failed. A live stream that is ``connecting`` or
``reconnecting`` is the daemon working as configured (it keeps retrying with backoff), and a stream that
``ended`` (a file read to its end, or any stream after a stop) finished normally: both count as fine.
Only ``failed`` (a live source that gave up after ``reconnect.max_attempts``) makes a stream not fine.
A camera that stays down is therefore not a readiness failure but an alert on
``nfnet_stream_source_state{state="reconnecting"}``.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from pipelines.runtime import Pipeline
from pipelines.runtime.stream_state import StateChange

FAILED_STATES = frozenset({"failed"})
NOT_REPORTED = "starting"  # a stream whose capture thread has not reported a state yet


@dataclass(frozen=True)
class Readiness:
    ready: bool
    body: dict[str, Any]


def assess(ready: threading.Event, pipeline: Pipeline | None) -> Readiness:
    """The daemon's readiness from its ready event and its pipeline (None while the model loads)."""
    model_ready = ready.is_set() and pipeline is not None
    stopping = pipeline is not None and pipeline.stopping
    streams = {stream: _stream(change) for stream, change in (pipeline.states.latest() if pipeline else {}).items()}
    ok = model_ready and not stopping and all(stream["ok"] for stream in streams.values())
    return Readiness(ok, {"ready": ok, "model": "ready" if model_ready else "loading", "stopping": stopping,
                          "streams": streams})


def _stream(change: StateChange | None) -> dict[str, Any]:
    if change is None:
        return {"state": NOT_REPORTED, "ok": True}
    report: dict[str, Any] = {"state": change.state, "ok": change.state not in FAILED_STATES,
                              "seconds_in_state": round((time.time_ns() - change.time_ns) / 1e9, 1)}
    if change.detail:
        report["detail"] = change.detail
    return report

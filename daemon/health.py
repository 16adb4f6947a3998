"""What ``/readyz`` answers: is the daemon doing its job?

Ready means the pipeline runs (``Daemon.ready``: the model is loaded and warmed up, the sources are open,
the awaited subscribers arrived), the daemon is not stopping, and no stream has failed. A live stream
that is ``connecting`` or ``reconnecting`` is the daemon working as configured (it keeps retrying with
backoff), and a stream that ``ended`` (a file read to its end, or any stream after a stop) finished
normally: both are fine. Only ``failed`` (a live source that gave up after ``reconnect.max_attempts``)
makes a stream, and so the daemon, not ready. A camera that stays down is therefore not a readiness
failure but an alert on ``nfnet_stream_source_state{state="reconnecting"}``.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from pipelines.redact import mask_credentials
from pipelines.runtime import Pipeline
from pipelines.runtime.stream_state import StateChange

FAILED_STATES = frozenset({"failed"})
NOT_REPORTED = "starting"  # a stream whose capture thread has not reported a state yet


@dataclass(frozen=True)
class Readiness:
    ready: bool
    body: dict[str, Any]


def assess(ready: threading.Event, pipeline: Pipeline | None, startup: dict[str, Any]) -> Readiness:
    """The daemon's readiness from its ready event and its pipeline (None until the model is loaded);
    while it starts, ``startup`` (the step under way and its seconds so far) is part of the answer."""
    if pipeline is None:
        phase = "starting"
    elif pipeline.stopping:
        phase = "stopping"
    else:
        phase = "running" if ready.is_set() else "starting"
    streams = {stream: _stream(change) for stream, change in (pipeline.states.latest() if pipeline else {}).items()}
    ok = phase == "running" and all(stream["ok"] for stream in streams.values())
    body = {"ready": ok, "model": "loading" if pipeline is None else "ready", "pipeline": phase, "streams": streams}
    if phase == "starting":
        body["startup"] = startup
    return Readiness(ok, body)


def _stream(change: StateChange | None) -> dict[str, Any]:
    if change is None:
        return {"state": NOT_REPORTED, "ok": True}
    report: dict[str, Any] = {"state": change.state, "ok": change.state not in FAILED_STATES,
                              "seconds_in_state": round((time.time_ns() - change.time_ns) / 1e9, 1)}
    if change.detail:
        report["detail"] = mask_credentials(change.detail)
    return report

"""The label message every subscriber receives, one per classified frame.

Its JSON Schema is ``label_message.schema.json`` beside this file; ``tests/test_message_schema.py``
validates real messages against it.
"""

from __future__ import annotations

import json
import secrets
import socket
from dataclasses import dataclass
from typing import Any

from pipelines.frames import Frame
from pipelines.postprocess.topk import Prediction
from pipelines.redact import mask_credentials

SCHEMA_VERSION = 4
# ZeroMQ matches subscriptions by prefix. Topics end in "/", which stream ids may not contain, so one
# stream's prefix never matches another stream's (a subscriber to "label/cam1/" does not get cam10).
LABEL_PREFIX = "label/"
STATUS_PREFIX = "status/"


def label_topic(stream_id: str) -> str:
    """``label/<stream_id>/``: one stream's label messages."""
    return f"{LABEL_PREFIX}{stream_id}/"


def status_topic(stream_id: str) -> str:
    """``status/<stream_id>/``: one stream's state changes (and their replays for new subscribers)."""
    return f"{STATUS_PREFIX}{stream_id}/"


@dataclass(frozen=True)
class RunIdentity:
    """Which daemon, and which start of it, a message comes from: ``run_id`` is random per start (seq
    restarts at 0 with a new one), ``instance`` names the daemon in a fleet (its host name by default)."""

    run_id: str
    instance: str

    @classmethod
    def new(cls, instance: str | None) -> RunIdentity:
        return cls(secrets.token_hex(8), instance or socket.gethostname())

    def fields(self) -> dict[str, str]:
        return {"run_id": self.run_id, "instance": self.instance}


def latency_breakdown_ms(frame: Frame, publish_perf: float) -> dict[str, float]:
    """Per-stage latency of one frame, in milliseconds.

    ``queued`` is the time spent waiting in queues and for batch-mates; the stages plus ``queued``
    add up to ``total``, from the start of the frame's read to its publication.
    """
    t = frame.times
    stages = {
        "capture": t.read_end - t.read_start,
        "preprocess": t.shrink_s + (t.preprocess_end - t.preprocess_start),
        "inference": t.inference_end - t.inference_start,
        "postprocess": publish_perf - t.postprocess_start,
    }
    total = publish_perf - t.read_start
    stages["queued"] = max(0.0, total - sum(stages.values()))
    stages["total"] = total
    return {name: round(seconds * 1000.0, 3) for name, seconds in stages.items()}


def build_label_message(
    frame: Frame,
    seq: int,
    dropped: int,
    suppressed: int,
    predictions: list[Prediction],
    model_id: str,
    publish_ns: int,
    latency_ms: dict[str, float],
    run: RunIdentity,
) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "type": "label",
        **run.fields(),
        "stream_id": frame.stream_id,
        "seq": seq,
        "frame_index": frame.index,
        "dropped": dropped,
        "suppressed": suppressed,
        "pts": round(frame.pts, 6),
        "capture_time_ns": frame.capture_ns,
        "publish_time_ns": publish_ns,
        "model_id": model_id,
        "top_k": [{"index": p.index, "label": p.label, "score": p.score} for p in predictions],
        "latency_ms": latency_ms,
    }


@dataclass(frozen=True)
class EndAccounts:
    """What became of a stream registration's frames, in its end ('ended' or 'failed') status: every frame
    read is published, suppressed or dropped (``frames = published + suppressed + sum(dropped)``), and
    ``last_seq`` lets a subscriber see labels lost after the last one it received."""

    frames: int  # read from the source
    published: int  # label messages of this registration
    suppressed: int  # classified, not published (publish = "on_change", min_score)
    dropped: dict[str, int]  # read, not classified, by cause
    missing: int  # declared by a file's container, never read (cut short)
    last_seq: int | None  # the stream's last label seq in this run (None: none published yet)

    def fields(self) -> dict[str, Any]:
        return {"frames": self.frames, "published": self.published, "suppressed": self.suppressed,
                "dropped": self.dropped, "missing": self.missing, "last_seq": self.last_seq}


def build_status_message(stream_id: str, state: str, previous: str | None, detail: str, time_ns: int,
                         run: RunIdentity, accounts: EndAccounts | None = None) -> dict[str, Any]:
    """A stream's state change, published on its ``status_topic``; with ``accounts`` at the end.
    ``replay`` is false: the publisher sets it on the copies it sends to a subscriber that just joined.
    URL passwords in ``detail`` (a source's error) are masked."""
    message: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "type": "status", **run.fields(),
                               "stream_id": stream_id, "state": state, "previous_state": previous,
                               "detail": mask_credentials(detail), "time_ns": time_ns, "replay": False}
    if accounts is not None:
        message.update(accounts.fields())
    return message


def encode(message: dict[str, Any]) -> bytes:
    """Compact JSON; a NaN or infinity anywhere is an error (it is not JSON), never sent."""
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()

"""The label message every subscriber receives, one per classified frame.

Its JSON Schema is ``label_message.schema.json`` beside this file; ``tests/test_message_schema.py``
validates real messages against it.
"""

from __future__ import annotations

import json
from typing import Any

from pipelines.frames import Frame
from pipelines.postprocess.topk import Prediction

SCHEMA_VERSION = 2
STATUS_TOPIC = "_status"  # stream ids cannot start with "_", so it never collides with one


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
) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "type": "label",
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


def build_status_message(stream_id: str, state: str, previous: str | None, detail: str, time_ns: int,
                         frames: int | None = None) -> dict[str, Any]:
    """A stream's state change, published on ``STATUS_TOPIC``; ``frames`` (read in all) at the end."""
    message: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "type": "status", "stream_id": stream_id,
                               "state": state, "previous_state": previous, "detail": detail, "time_ns": time_ns}
    if frames is not None:
        message["frames"] = frames
    return message


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()

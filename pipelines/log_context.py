"""Structured context for log lines about one stream (and one of its frames): ``extra=stream_context(...)``.

The text format already says "stream X:" in the message; the JSON format (``daemon/logs.py``) carries
these as fields, so a log shipper can filter by stream without parsing messages.
"""

from __future__ import annotations

CONTEXT_FIELDS = ("stream_id", "seq", "frame_index")


def stream_context(stream_id: str, *, seq: int | None = None, frame_index: int | None = None) -> dict[str, object]:
    context: dict[str, object] = {"stream_id": stream_id}
    if seq is not None:
        context["seq"] = seq
    if frame_index is not None:
        context["frame_index"] = frame_index
    return context

"""Console publisher: a line per frame on stdout, for demos and for reading by eye."""

from __future__ import annotations

import sys
from typing import Any, TextIO

from pipelines.publishers.base import Publisher
from pipelines.publishers.config import ConsolePublisherConfig


def format_text(message: dict[str, Any]) -> str:
    """One line for a person: a label message's top 3, or a stream's state change."""
    if message["type"] == "status":
        detail = f" {message['detail']}" if message["detail"] else ""
        replay = " (replay: its state when this subscriber joined)" if message["replay"] else ""
        return f"{message['stream_id']} [{message['state']}]{replay}{detail}"
    ranked = "  ".join(f"{p['label']} {p['score']:.3f}" for p in message["top_k"][:3])
    dropped = f", {message['dropped']} dropped before" if message["dropped"] else ""
    return (f"{message['stream_id']} #{message['seq']:<6d} t={message['pts']:8.3f}s  {ranked}"
            f"  ({message['latency_ms']['total']:.1f} ms{dropped})")


class ConsolePublisher(Publisher):
    def __init__(self, config: ConsolePublisherConfig, stream: TextIO | None = None) -> None:
        self._json = config.format == "json"
        self._stream = stream or sys.stdout

    def publish(self, topic: str, payload: bytes, message: dict[str, Any]) -> None:
        line = payload.decode() if self._json else format_text(message)
        self._stream.write(line + "\n")
        self._stream.flush()

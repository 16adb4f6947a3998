"""Logging set-up: human-readable lines by default, or one JSON object a line (``logging.format = "json"``)
for journald and log shippers. Both go to stderr; under systemd, journald adds its own timestamps.

OpenCV and FFmpeg write their own diagnostics straight to stderr (a failed connection's reason, say). In text
mode they are kept, as extra lines; in JSON mode they are silenced so that every line is JSON (until a
restart: FFmpeg reads its level once).

Nothing is logged per frame at ``info``: per-frame facts are in the published messages and the metrics.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

from pipelines.log_context import CONTEXT_FIELDS
from pipelines.redact import mask_credentials
from pipelines.sources.opencv import silence_native_logs

TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class TextFormatter(logging.Formatter):
    """:data:`TEXT_FORMAT` lines, URL passwords masked (a source's URL in its errors, a reload's changes)."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        return mask_credentials(super().format(record))


class JsonFormatter(logging.Formatter):
    """``{"time", "level", "logger", "message", "stream_id"?, "seq"?, "frame_index"?, "exception"?}``, URL
    passwords masked."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": mask_credentials(record.getMessage()),
        }
        for field in CONTEXT_FIELDS:
            if hasattr(record, field):
                entry[field] = getattr(record, field)
        if record.exc_info:
            entry["exception"] = mask_credentials(self.formatException(record.exc_info))
        return json.dumps(entry, default=str)


def configure_logging(level: str, log_format: str = "text") -> None:
    if log_format == "json":
        silence_native_logs()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())

"""``[[sources]]`` tables for test configs: a short video file, and a live stream whose server is down."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tests.conftest import free_port, write_video
from tools.synthetic_shapes import LABELS, render_frame


def file_source(stream_id: str, path: Path, frames: int) -> str:
    """Writes ``frames`` "red circle" frames to ``path``; returns the source table."""
    rng = np.random.default_rng(0)
    write_video(path, (render_frame(LABELS.index("red circle"), rng, 120, 160) for _ in range(frames)))
    return f'\n[[sources]]\nid = "{stream_id}"\npath = "{path}"\n'


def dead_stream(stream_id: str, max_attempts: int | None = None) -> str:
    """A live MJPEG-over-HTTP source that nothing serves: it reconnects quickly (and gives up after
    ``max_attempts``, if given)."""
    attempts = f"max_attempts = {max_attempts}\n" if max_attempts else ""
    return f"""
[[sources]]
id = "{stream_id}"
type = "stream"
url = "http://127.0.0.1:{free_port()}/stream.mjpg"
open_timeout_s = 2.0
[sources.reconnect]
base_s = 0.2
cap_s = 0.5
{attempts}"""


def source_table(stream_id: str, **fields: object) -> str:
    """A ``[[sources]]`` table: ``fields`` as TOML values, a dict as a sub-table (``roi``, ``reconnect``)."""
    scalars = "".join(f"{key} = {_toml(value)}\n" for key, value in fields.items() if not isinstance(value, dict))
    tables = "".join(f"[sources.{key}]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in value.items())
                     for key, value in fields.items() if isinstance(value, dict))
    return f'\n[[sources]]\nid = "{stream_id}"\n{scalars}{tables}'


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))  # a TOML basic string

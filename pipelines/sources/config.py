"""Source configuration: one table per stream."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipelines.config_base import StrictModel
from pipelines.paths import ConfigPath

# A stream id is a ZeroMQ topic and a Prometheus label value: keep it plain.
STREAM_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class FileSourceConfig(StrictModel):
    id: str = Field(pattern=STREAM_ID_PATTERN, description="Stream id: the ZeroMQ topic of its labels.")
    type: Literal["file"] = "file"
    path: ConfigPath = Field(description="A video file readable by OpenCV's FFmpeg backend.")


SourceConfig = FileSourceConfig

"""Video sources behind one interface, chosen by each source table's ``type``."""

from __future__ import annotations

from pipelines.sources.base import RawFrame, Source, SourceError
from pipelines.sources.config import SourceConfig, is_live
from pipelines.sources.opencv import OpenCvSource


def create_source(config: SourceConfig) -> OpenCvSource:
    return OpenCvSource(config)


__all__ = ["OpenCvSource", "RawFrame", "Source", "SourceConfig", "SourceError", "create_source", "is_live"]

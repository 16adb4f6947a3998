"""Video sources behind one interface, chosen by each source table's ``type``."""

from __future__ import annotations

from pipelines.sources.base import RawFrame, Source, SourceError
from pipelines.sources.config import SourceConfig


def create_source(config: SourceConfig) -> Source:
    if config.type == "file":
        from pipelines.sources.file import FileSource

        return FileSource(config)
    raise SourceError(f"unknown source type {config.type!r}")


__all__ = ["RawFrame", "Source", "SourceConfig", "SourceError", "create_source"]

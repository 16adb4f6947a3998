"""Video sources behind one interface, chosen by each source table's ``type``."""

from __future__ import annotations

import os

from pipelines.sources.base import RawFrame, Source, SourceError, Yuv420
from pipelines.sources.config import FileSourceConfig, SourceConfig, is_live
from pipelines.sources.opencv import OpenCvSource, decode_threads_per_stream, decodes_with_ffmpeg
from pipelines.sources.pyav import MIN_DECODE_THREADS, PyAvFileSource


def decodes_with_pyav(config: SourceConfig) -> bool:
    return isinstance(config, FileSourceConfig) and config.decoder == "pyav"


def create_source(config: SourceConfig, decode_threads: int = 0) -> Source:
    if decodes_with_pyav(config):
        return PyAvFileSource(config, decode_threads)
    return OpenCvSource(config, decode_threads)


def create_sources(configs: list[SourceConfig], decode_threads: int | None,
                   among: list[SourceConfig] | None = None) -> list[Source]:
    """The sources of ``configs``, FFmpeg's decoding threads shared out among the files and streams of the
    pipeline (``among``, when ``configs`` are only some of them, added by a reload) over the cores this
    process may run on, or ``pipeline.decode_threads`` each when set."""
    ffmpeg_streams = sum(decodes_with_ffmpeg(config) for config in (configs if among is None else among))
    cores = len(os.sched_getaffinity(0))

    def threads(config: SourceConfig) -> int:
        if not decodes_with_ffmpeg(config):
            return 0
        minimum = MIN_DECODE_THREADS if decodes_with_pyav(config) else 1
        return decode_threads_per_stream(ffmpeg_streams, decode_threads, cores, minimum)

    return [create_source(config, threads(config)) for config in configs]


__all__ = ["OpenCvSource", "PyAvFileSource", "RawFrame", "Source", "SourceConfig", "SourceError", "Yuv420",
           "create_source", "create_sources", "is_live"]

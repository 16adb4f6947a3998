"""Runtime configuration: queue sizes, batching, shutdown."""

from __future__ import annotations

from pydantic import Field

from pipelines.config_base import StrictModel


class PipelineConfig(StrictModel):
    capture_queue: int = Field(16, ge=1, le=1024, description="Frames between capture and preprocess.")
    input_buffers: int = Field(
        2, ge=1, le=8, description="Batch buffers: 2 lets preprocess fill one while the engine runs the other.")
    batch_timeout_ms: float = Field(
        10.0, ge=0, le=60_000, description="Longest wait for batch-mates before a partial batch is run.")
    top_k: int = Field(5, ge=1, le=1000, description="Classes per published message.")
    drain_timeout_s: float = Field(
        30.0, gt=0, le=3600, description="On stop, how long frames in flight may take to be published.")
    exit_when_sources_end: bool = Field(
        True, description="Exit once every source has ended and its frames are published.")
    fail_on_incomplete: bool = Field(
        True, description="When the sources end: exit 4 instead of 0 if one was not read in full (a file with "
                          "undecodable frames or shorter than its container declares, a source that failed).")
    decode_threads: int | None = Field(
        None, ge=1, le=64,
        description="FFmpeg decoding threads for each file and network stream. Default: the machine's cores "
                    "shared among those streams, at least 2 for a file decoded by PyAV (one stream: FFmpeg's own "
                    "choice); decoding many streams with a thread per core each costs more CPU per frame than with "
                    "the cores divided among them.")

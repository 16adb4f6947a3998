"""Source configuration: one ``[[sources]]`` table per stream, its kind chosen by ``type``."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Discriminator, Field, Tag, model_validator

from pipelines.config_base import StrictModel
from pipelines.paths import ConfigPath
from pipelines.redact import mask_credentials

# A stream id is a ZeroMQ topic and a Prometheus label value: keep it plain.
STREAM_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class ReconnectConfig(StrictModel):
    base_s: float = Field(0.5, gt=0, le=3600, description="First wait before reconnecting (at most an hour).")
    cap_s: float = Field(30.0, gt=0, le=86400, description="Longest wait between attempts (at most a day).")
    max_attempts: int | None = Field(
        None, ge=1, le=1_000_000,
        description="Give up (state 'failed') after this many failed attempts in a row (default: never).")
    stall_timeout_s: float = Field(
        10.0, gt=0, le=3600,
        description="A live source that delivers no frame for this long is reconnected (at most an hour).")


class RoiConfig(StrictModel):
    """A region of interest: the rectangle of the frame that is classified (before the model's resize and
    crop), in pixels or in fractions of the frame's width and height."""

    x: float = Field(0, ge=0, le=16384, description="Left edge.")
    y: float = Field(0, ge=0, le=16384, description="Top edge.")
    width: float = Field(gt=0, le=16384, description="Width.")
    height: float = Field(gt=0, le=16384, description="Height.")
    units: Literal["pixels", "fraction"] = Field(
        "pixels", description="pixels: whole pixels of the frame; fraction: 0 to 1 of its width and height.")

    @model_validator(mode="after")
    def _fits_its_units(self) -> RoiConfig:
        values = (self.x, self.y, self.width, self.height)
        if self.units == "pixels" and not all(float(v).is_integer() for v in values):
            raise ValueError("an ROI in pixels needs whole numbers (or units = \"fraction\")")
        if self.units == "fraction" and (self.x + self.width > 1 or self.y + self.height > 1):
            raise ValueError("an ROI in fractions must lie within the frame: x + width and y + height at most 1")
        return self


class SourceBase(StrictModel):
    id: str = Field(pattern=STREAM_ID_PATTERN, description="Stream id: the ZeroMQ topic of its labels.")
    width: int | None = Field(None, ge=16, le=16384, description="Ask the device for this frame width (cameras).")
    height: int | None = Field(None, ge=16, le=16384, description="Ask the device for this frame height (cameras).")
    fps_cap: float | None = Field(None, gt=0, le=1000, description="Classify at most this many frames per second.")
    interval: int = Field(1, ge=1, le=100_000,
                          description="Classify every Nth frame (the others are counted as dropped).")
    buffer_frames: int = Field(
        2, ge=1, le=64, description="Live sources: frames held for preprocessing; when full the oldest is dropped.")
    max_frame_age_ms: float = Field(
        500.0, gt=0, le=3_600_000,
        description="Live sources: a frame older than this when its turn comes is dropped as stale.")
    reconnect: ReconnectConfig = ReconnectConfig()
    smoothing: float = Field(
        0.0, ge=0.0, lt=1.0,
        description="Temporal smoothing: weight of the past in an exponential moving average of the scores "
                    "(0: off; 0.8: about the last 5 frames).")
    publish: Literal["every_frame", "on_change"] = Field(
        "every_frame", description="on_change: publish only when the top label changes, or every heartbeat_s.")
    heartbeat_s: float = Field(5.0, gt=0, le=86400, description="With publish = on_change: the longest silence.")
    roi: RoiConfig | None = Field(
        None, description="Classify only this rectangle of the frame (a conveyor, not the room); checked against "
                          "each frame: one it does not fit fails the stream, saying so.")
    min_score: float = Field(
        0.0, ge=0.0, le=1.0,
        description="Publish only frames whose top class scores at least this (after smoothing); the others "
                    "are counted in the next message's 'suppressed'.")


class FileSourceConfig(SourceBase):
    type: Literal["file"] = "file"
    path: ConfigPath = Field(description="A video file readable by FFmpeg.")
    pace: bool = Field(
        False, description="Deliver frames at the file's own frame rate, like a camera (it is then live: frames "
                           "can be dropped); otherwise as fast as they are classified, losslessly.")
    decoder: Literal["opencv", "pyav"] = Field(
        "pyav", description="pyav: FFmpeg through PyAV, 4:2:0 frames converted only once shrunk to the model's size "
                            "(faster on HD video). opencv: OpenCV's FFmpeg, frames converted to BGR at full size "
                            "(colours within a few levels of pyav's).")
    rotation: Literal["auto", "ignore"] = Field(
        "auto", description="auto: frames turned as the file's display matrix says (a phone's portrait video "
                            "upright, as players show it), under either decoder; ignore: frames as stored.")


class CameraSourceConfig(SourceBase):
    type: Literal["camera"]
    device: int | str = Field(description="V4L2 device: an index (0) or a path (/dev/video0).")


class StreamSourceConfig(SourceBase):
    type: Literal["stream"]
    url: str = Field(pattern=r"^(rtsp|rtsps|rtmp|http|https|udp|tcp|srt)://",
                     description="A network stream (RTSP, RTMP, HTTP(S) incl. MJPEG) for OpenCV's FFmpeg backend.")
    open_timeout_s: float = Field(10.0, gt=0, le=3600, description="Give up opening after this long (at most an hour).")


class GStreamerSourceConfig(SourceBase):
    type: Literal["gstreamer"]
    pipeline: str = Field(min_length=1, description="A GStreamer pipeline ending in appsink (OpenCV with GStreamer).")


SOURCE_TYPES = ("file", "camera", "stream", "gstreamer")


def _source_type(value: object) -> str:
    """The ``type`` of a source table; ``file`` when omitted."""
    return value.get("type", "file") if isinstance(value, dict) else getattr(value, "type", "file")


SourceConfig = Annotated[
    Annotated[FileSourceConfig, Tag("file")] | Annotated[CameraSourceConfig, Tag("camera")]
    | Annotated[StreamSourceConfig, Tag("stream")] | Annotated[GStreamerSourceConfig, Tag("gstreamer")],
    Discriminator(_source_type),
]


def is_live(config: SourceBase) -> bool:
    """Live sources do not wait for the pipeline: their frames can be dropped (and are counted)."""
    return not isinstance(config, FileSourceConfig) or config.pace


def describe_source(config: SourceBase) -> str:
    """What a source reads, as safe to print: any URL's password is hidden (a stream's, or one in a GStreamer
    pipeline or a camera's device string)."""
    if isinstance(config, FileSourceConfig):
        return f"file {config.path}" + (" (paced)" if config.pace else "")
    if isinstance(config, StreamSourceConfig):
        return f"stream {mask_credentials(config.url)}"
    if isinstance(config, CameraSourceConfig):
        return f"camera {mask_credentials(str(config.device))}"
    assert isinstance(config, GStreamerSourceConfig)
    return f"gstreamer {mask_credentials(config.pipeline)}"

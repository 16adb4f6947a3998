"""Publisher configuration: where labels go."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipelines.config_base import StrictModel


class ZmqPublisherConfig(StrictModel):
    enabled: bool = True
    endpoint: str = Field("tcp://127.0.0.1:5555", description="ZeroMQ endpoint the daemon binds.")
    send_hwm: int = Field(
        10000, ge=1,
        description="Messages queued per subscriber before ZeroMQ drops for that subscriber; "
                    "a slow subscriber never slows the pipeline.",
    )
    wait_for_subscribers: int = Field(
        0, ge=0,
        description="Hold the sources until this many subscribers are subscribed (0: start at once), "
                    "so that no message is published before its reader is there.",
    )
    wait_timeout_s: float = Field(30.0, gt=0, description="How long to wait for those subscribers.")


class ConsolePublisherConfig(StrictModel):
    enabled: bool = False
    format: Literal["text", "json"] = Field("text", description="One line per frame on stdout.")


class PublishConfig(StrictModel):
    zmq: ZmqPublisherConfig = ZmqPublisherConfig()
    console: ConsolePublisherConfig = ConsolePublisherConfig()

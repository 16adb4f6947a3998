"""Publisher configuration: where labels go."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from pipelines.config_base import StrictModel
from pipelines.paths import ConfigPath


class CurveConfig(StrictModel):
    """CURVE on the label stream: encrypted, and only subscribers whose public key is listed may connect."""

    server_secret_key: ConfigPath = Field(
        description="The daemon's secret key file (nfnet-keys server); only the daemon's user may read it (0600).")
    authorized_keys_dir: ConfigPath = Field(
        description="Directory of the public key files (*.key) of the subscribers allowed to connect; "
                    "read at start-up and on SIGHUP.")


class ZmqPublisherConfig(StrictModel):
    enabled: bool = True
    endpoint: str = Field("tcp://127.0.0.1:5555",
                          description="ZeroMQ endpoint the daemon binds: tcp://HOST:PORT (PORT 1-65535, or * for any "
                                      "free one; an IPv6 HOST in brackets), ipc://PATH or inproc://NAME.")
    send_hwm: int = Field(
        10000, ge=1, le=10_000_000,
        description="Messages queued per subscriber before ZeroMQ drops for that subscriber; "
                    "a slow subscriber never slows the pipeline.",
    )
    wait_for_subscribers: int = Field(
        0, ge=0, le=100_000,
        description="Hold the sources until this many subscribers are subscribed (0: start at once), "
                    "so that no message is published before its reader is there.",
    )
    wait_timeout_s: float = Field(30.0, gt=0, le=86400, description="How long to wait for those subscribers.")
    replay_removed_s: float = Field(
        300.0, ge=0, le=86400,
        description="A new subscriber is sent each stream's last status; a stream removed by a reload is still "
                    "sent for this many seconds after its end, then forgotten.")

    @field_validator("endpoint")
    @classmethod
    def _endpoint_is_one_zeromq_binds(cls, endpoint: str) -> str:
        tcp = re.fullmatch(r"tcp://(\[[0-9A-Fa-f:.]+\]|[^\[\]:/]+):(\*|\d+)", endpoint)
        if tcp is None and not re.fullmatch(r"(ipc|inproc)://.+", endpoint):
            raise ValueError("expected tcp://HOST:PORT, ipc://PATH or inproc://NAME")
        if tcp is not None and tcp.group(2) != "*" and not 1 <= int(tcp.group(2)) <= 65535:
            raise ValueError(f"port {tcp.group(2)} is not in 1-65535 (or * for any free port)")
        return endpoint
    curve: CurveConfig | None = Field(None, description="Encrypt and authenticate (off when absent).")

    @model_validator(mode="after")
    def _curve_needs_a_connection(self) -> ZmqPublisherConfig:
        # inproc:// has no handshake, so ZeroMQ would skip CURVE there without a word; tcp:// and ipc:// have one.
        if self.curve is not None and self.endpoint.startswith("inproc://"):
            raise ValueError(f"CURVE cannot protect an inproc:// endpoint ({self.endpoint}): use tcp:// or ipc://")
        return self


def check_zmq_option(key: str, value: Any) -> Any:
    """``value`` checked as ``publish.zmq.<key>`` is (an endpoint's syntax and port, ``send_hwm``'s bounds), for
    the tools' command lines: they take the same values the daemon does. A ValueError says why not."""
    try:
        return getattr(ZmqPublisherConfig.model_validate({key: value}), key)
    except ValidationError as exc:
        raise ValueError("; ".join(error["msg"].removeprefix("Value error, ") for error in exc.errors())) from None


class ConsolePublisherConfig(StrictModel):
    enabled: bool = False
    format: Literal["text", "json"] = Field("text", description="One line per frame on stdout.")


class PublishConfig(StrictModel):
    instance: str | None = Field(
        None, min_length=1, max_length=128,
        description="This daemon's name in every message ('instance'), so that consumers of a fleet's merged "
                    "streams know where each comes from; default: the host name.")
    zmq: ZmqPublisherConfig = ZmqPublisherConfig()
    console: ConsolePublisherConfig = ConsolePublisherConfig()

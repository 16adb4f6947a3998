"""Where labels go: ZeroMQ for programs, the console for people."""

from __future__ import annotations

from pipelines.publishers.base import Publisher, PublisherError
from pipelines.publishers.config import PublishConfig


def create_publishers(config: PublishConfig) -> list[Publisher]:
    """Every enabled publisher, ZeroMQ first."""
    publishers: list[Publisher] = []
    try:
        if config.zmq.enabled:
            from pipelines.publishers.zmq import ZmqPublisher

            publishers.append(ZmqPublisher(config.zmq))
        if config.console.enabled:
            from pipelines.publishers.console import ConsolePublisher

            publishers.append(ConsolePublisher(config.console))
    except Exception:
        for publisher in publishers:
            publisher.close()
        raise
    if not publishers:
        raise PublisherError("no publisher is enabled: enable publish.zmq or publish.console")
    return publishers


__all__ = ["PublishConfig", "Publisher", "PublisherError", "create_publishers"]

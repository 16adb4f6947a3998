"""The publisher interface: a sink for encoded label messages."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any


class PublisherError(RuntimeError):
    """A publisher cannot be set up (for example, its endpoint cannot be bound)."""


class Publisher(ABC):
    @abstractmethod
    def publish(self, topic: str, payload: bytes, message: dict[str, Any]) -> None:
        """Send one message; ``payload`` is ``message`` encoded as JSON."""

    def serve(self) -> None:  # noqa: B027 - publishers without subscribers need nothing
        """Answer what subscribers asked for since the last call (the output stage calls it several times a
        second, from the one thread that publishes)."""

    def stream_removed(self, topic: str) -> None:  # noqa: B027 - publishers that keep nothing per stream
        """The stream whose status topic this is was removed, and its end published: forget what is kept of it
        (once it is no longer useful)."""

    def close(self) -> None:  # noqa: B027 - publishers without resources need nothing
        """Flush and release."""

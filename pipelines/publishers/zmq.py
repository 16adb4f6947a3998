"""ZeroMQ publisher: multipart ``[topic, payload]`` on an XPUB socket.

XPUB behaves as PUB for subscribers and lets the daemon see subscriptions arrive, which is how it can
hold its sources until the configured number of subscribers is listening (no label lost to ZeroMQ's
slow-joiner effect), and how a subscriber that joins late learns the present: each stream's last status
message is kept (ZeroMQ's last-value-cache pattern), and a new subscription is answered with those whose
topic it matches, marked ``"replay": true`` (ZeroMQ sends them to every subscriber of those topics, so
others may see a replay too, and can tell it from a change).

A send never waits for a subscriber: each one has a queue of ``send_hwm`` messages, and when a slow or
stalled subscriber's queue is full ZeroMQ drops that subscriber's copy (the others still get theirs);
the subscriber sees the gap in ``seq``.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import zmq

from pipelines.publishers.base import Publisher, PublisherError
from pipelines.publishers.config import ZmqPublisherConfig
from pipelines.publishers.curve import CurveServer
from pipelines.publishers.message import encode

log = logging.getLogger(__name__)

SUBSCRIPTION_READ_S = 0.05  # (un)subscriptions are read at most this often


def needs_ipv6(endpoint: str) -> bool:
    """An IPv6 address in brackets (``tcp://[::1]:5555``): ZeroMQ binds or connects to it only with IPV6 on."""
    return "://[" in endpoint


class ZmqPublisher(Publisher):
    def __init__(self, config: ZmqPublisherConfig) -> None:
        # A context of its own: its ZAP handler (CURVE) then serves this socket only.
        self._context = zmq.Context()
        self._curve: CurveServer | None = None
        self._socket = self._context.socket(zmq.XPUB)
        try:
            self._socket.setsockopt(zmq.LINGER, 0)
            if needs_ipv6(config.endpoint):
                self._socket.setsockopt(zmq.IPV6, 1)
            self._socket.setsockopt(zmq.SNDHWM, config.send_hwm)
            self._socket.setsockopt(zmq.XPUB_NODROP, 0)  # the default, stated: drop for a full subscriber, never block
            # Every subscriber's (un)subscriptions, not only a topic's first and last, so that two subscribers
            # of the same topic count as two for wait_for_subscribers.
            self._socket.setsockopt(zmq.XPUB_VERBOSER, 1)
            if config.curve is not None:
                self._curve = CurveServer(config.curve, self._context)
                self._curve.secure(self._socket)
            try:
                self._socket.bind(config.endpoint)
            except zmq.ZMQError as exc:
                raise PublisherError(f"cannot bind ZeroMQ endpoint {config.endpoint}: {exc}") from exc
        except BaseException:
            self.close()
            raise
        self.endpoint = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self._subscriptions: Counter[bytes] = Counter()
        self._next_subscription_read = 0.0
        self._last_status: dict[str, dict[str, Any]] = {}  # status topic -> its last message

    def wait_for_subscribers(self, count: int, timeout_s: float,
                             cancelled: Callable[[], bool] = lambda: False) -> int:
        """Block until ``count`` subscriptions (one per subscriber and topic it subscribes to) are in,
        ``timeout_s`` passed or ``cancelled()``; return how many are in."""
        deadline = time.monotonic() + timeout_s
        while self._subscriptions.total() < count and not cancelled():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            if self._socket.poll(int(min(remaining, 0.5) * 1000), zmq.POLLIN):
                self._read_subscriptions()  # nothing published yet: nothing to replay
        return self._subscriptions.total()

    def publish(self, topic: str, payload: bytes, message: dict[str, Any]) -> None:
        if message["type"] == "status":
            self._last_status[topic] = message
        self._send(topic, payload)

    def serve(self) -> None:
        """Read new (un)subscriptions, at most every ``SUBSCRIPTION_READ_S`` (a poll per message would be a
        system call per frame), and answer each new one with the last status messages it matches."""
        now = time.monotonic()
        if now < self._next_subscription_read:
            return
        self._next_subscription_read = now + SUBSCRIPTION_READ_S
        if self._socket.poll(0, zmq.POLLIN):
            for prefix in self._read_subscriptions():
                self._replay(prefix)

    def _send(self, topic: str, payload: bytes) -> None:
        # NOBLOCK: with XPUB_NODROP off this never fails (full queues drop); it makes "never waits" explicit.
        # Copied (the default): for messages of a few hundred bytes cheaper than zero-copy frames.
        self._socket.send_multipart((topic.encode(), payload), flags=zmq.NOBLOCK)

    def _replay(self, prefix: bytes) -> None:
        for topic, message in self._last_status.items():
            if topic.encode().startswith(prefix):
                self._send(topic, encode({**message, "replay": True}))

    def _read_subscriptions(self) -> list[bytes]:
        """Read every pending (un)subscription (XPUB delivers them as b"\x01prefix" / b"\x00prefix") so they
        never pile up; count them per prefix for wait_for_subscribers; return the new subscriptions."""
        new = []
        while True:
            try:
                event = self._socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                return new
            prefix = event[1:]
            if event[:1] == b"\x01":
                self._subscriptions[prefix] += 1
                new.append(prefix)
            elif event[:1] == b"\x00" and self._subscriptions[prefix] > 0:
                self._subscriptions[prefix] -= 1

    def reload_authorized_keys(self) -> bool:
        """Re-read CURVE's authorised subscriber keys (SIGHUP); False when CURVE is off."""
        if self._curve is None:
            return False
        self._curve.reload_authorized()
        return True

    def close(self) -> None:
        self._socket.close(linger=0)
        if self._curve is not None:
            self._curve.stop()
        self._context.term()

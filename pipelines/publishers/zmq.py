"""ZeroMQ publisher: multipart ``[topic, payload]`` on an XPUB socket.

XPUB behaves as PUB for subscribers and lets the daemon see subscriptions arrive, which is how it can
hold its sources until the configured number of subscribers is listening (no label lost to ZeroMQ's
slow-joiner effect), and how a subscriber that joins late learns the present: each stream's last status
message is kept (ZeroMQ's last-value-cache pattern), and a new subscription is answered with those whose
topic it matches, marked ``"replay": true`` (ZeroMQ sends them to every subscriber of those topics, so
others may see a replay too, and can tell it from a change).

Replays never hold up labels: they are sent from the output stage's thread between batches, a bounded
number at a time (``REPLAYS_PER_SERVE``), and one replay answers every subscription of its prefix that came
in before it started. A removed stream's last status is replayed for ``replay_removed_s`` after its end,
then forgotten, so the cache holds the configured streams and the recently removed ones only.

A send never waits for a subscriber: each one has a queue of ``send_hwm`` messages, and when a slow or
stalled subscriber's queue is full ZeroMQ drops that subscriber's copy (the others still get theirs);
the subscriber sees the gap in ``seq``.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import zmq

from pipelines.publishers.base import Publisher, PublisherError
from pipelines.publishers.config import ZmqPublisherConfig
from pipelines.publishers.curve import CurveServer
from pipelines.publishers.message import encode

log = logging.getLogger(__name__)

SUBSCRIPTION_READ_S = 0.05  # (un)subscriptions are read, and replays sent, at most this often
SUBSCRIPTIONS_PER_SERVE = 1000  # (un)subscriptions read at most at a time (the rest wait in the socket)
REPLAYS_PER_SERVE = 64  # replayed messages sent at most at a time: about 1,300 a second
CACHE_ENTRIES_PER_SERVE = 4096  # cached statuses matched against replayed prefixes at most at a time


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
        self._subscriptions: Counter[bytes] = Counter()  # prefix -> subscriptions in (none kept at 0)
        self._next_serve = 0.0
        self._last_status: dict[bytes, dict[str, Any]] = {}  # status topic -> its last message
        self._replay_removed_s = config.replay_removed_s
        self._forget_at: dict[bytes, float] = {}  # a removed stream's status topic -> when its status goes
        self._pending_replays: dict[bytes, None] = {}  # prefixes to answer, in order, each once
        self._replaying: Iterator[bytes] = iter(())  # the replay in progress: cached topics still to match
        self._replay_prefix = b""

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
                self._read_subscriptions(SUBSCRIPTIONS_PER_SERVE)  # nothing published yet: nothing to replay
        return self._subscriptions.total()

    def publish(self, topic: str, payload: bytes, message: dict[str, Any]) -> None:
        if message["type"] == "status":
            key = topic.encode()
            self._last_status[key] = message
            self._forget_at.pop(key, None)  # a stream added again: current again
        self._send(topic.encode(), payload)

    def stream_removed(self, topic: str) -> None:
        """The stream of this status topic was removed (its end is published): its last status is replayed for
        ``replay_removed_s`` more, then forgotten."""
        self._forget_at[topic.encode()] = time.monotonic() + self._replay_removed_s

    def serve(self) -> None:
        """At most every ``SUBSCRIPTION_READ_S`` (a poll per message would be a system call per frame): read
        new (un)subscriptions, forget the statuses of streams removed long enough ago, and send the next few
        replays (the last status messages that new subscriptions match)."""
        now = time.monotonic()
        if now < self._next_serve:
            return
        self._next_serve = now + SUBSCRIPTION_READ_S
        if self._socket.poll(0, zmq.POLLIN):
            self._pending_replays.update(dict.fromkeys(self._read_subscriptions(SUBSCRIPTIONS_PER_SERVE)))
        for topic in [topic for topic, when in self._forget_at.items() if when <= now]:
            del self._forget_at[topic], self._last_status[topic]
        self._send_replays(REPLAYS_PER_SERVE, CACHE_ENTRIES_PER_SERVE)

    @property
    def subscription_count(self) -> int:
        """Subscriptions in now (one per subscriber and prefix)."""
        return self._subscriptions.total()

    @property
    def subscribed_prefixes(self) -> int:
        """Distinct prefixes subscribed to now (what is kept per subscription)."""
        return len(self._subscriptions)

    @property
    def cached_statuses(self) -> int:
        """Streams whose last status a new subscriber is sent."""
        return len(self._last_status)

    def _send(self, topic: bytes, payload: bytes) -> None:
        # NOBLOCK: with XPUB_NODROP off this never fails (full queues drop); it makes "never waits" explicit.
        # Copied (the default): for messages of a few hundred bytes cheaper than zero-copy frames.
        self._socket.send_multipart((topic, payload), flags=zmq.NOBLOCK)

    def _send_replays(self, most: int, most_matched: int) -> None:
        """Go on replaying: send at most ``most`` messages, match at most ``most_matched`` cached topics. A
        prefix's replay starts from the cache as it is then (a status published meanwhile reaches the
        subscriber as itself)."""
        sent = matched = 0
        while sent < most and matched < most_matched:
            topic = next(self._replaying, None)
            if topic is None:
                if not self._pending_replays:
                    return
                self._replay_prefix = next(iter(self._pending_replays))
                del self._pending_replays[self._replay_prefix]
                self._replaying = iter(list(self._last_status))
                continue
            matched += 1
            message = self._last_status.get(topic)
            if message is not None and topic.startswith(self._replay_prefix):
                self._send(topic, encode({**message, "replay": True}))
                sent += 1

    def _read_subscriptions(self, most: int) -> list[bytes]:
        """Read up to ``most`` pending (un)subscriptions (XPUB delivers them as b"\x01prefix" / b"\x00prefix");
        count them per prefix for wait_for_subscribers, forgetting a prefix nobody holds any more (a subscriber
        that subscribed to many and left must leave nothing behind); return the new subscriptions."""
        new = []
        for _ in range(most):
            try:
                event = self._socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            prefix = event[1:]
            if event[:1] == b"\x01":
                self._subscriptions[prefix] += 1
                new.append(prefix)
            elif event[:1] == b"\x00" and prefix in self._subscriptions:
                self._subscriptions[prefix] -= 1
                if not self._subscriptions[prefix]:
                    del self._subscriptions[prefix]
                    self._pending_replays.pop(prefix, None)
        return new

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

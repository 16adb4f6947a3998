"""A test subscriber on a real ZeroMQ SUB socket, and HTTP helpers for the daemon's endpoint (scrape, get, poll)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import zmq
from prometheus_client.parser import text_string_to_metric_families

from pipelines.publishers.curve import secure_client

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "pipelines" / "publishers" / "label_message.schema.json"
MESSAGE_SCHEMA = jsonschema.Draft202012Validator(json.loads(SCHEMA_PATH.read_text()))


def check_message(message: dict[str, Any]) -> dict[str, Any]:
    """Fail on a message that breaks the published JSON Schema, or an end whose frames are not all accounted
    for (read = published + suppressed + dropped): every daemon run of the tests checks every message."""
    errors = [f"{'/'.join(map(str, error.absolute_path)) or '(message)'}: {error.message}"
              for error in MESSAGE_SCHEMA.iter_errors(message)]
    assert not errors, f"message breaks the schema: {'; '.join(errors)}: {message}"
    if message["type"] == "status" and "frames" in message:
        accounted = message["published"] + message["suppressed"] + sum(message["dropped"].values())
        assert accounted == message["frames"], f"frames read but not accounted for: {message}"
    return message


class Subscriber:
    """Connects before the daemon binds (ZeroMQ reconnects), so it can see the very first message."""

    def __init__(self, endpoint: str, topics: tuple[str, ...] = ("",), curve: tuple[Path, Path] | None = None,
                 receive_hwm: int = 0) -> None:
        """``topics``: the prefixes to subscribe to (default: everything); ``curve``: this subscriber's secret
        key file and the daemon's public key file; ``receive_hwm``: 0 (unlimited) so that the test sees
        everything, unless the test is about a subscriber that falls behind."""
        self._context = zmq.Context()
        self.socket = self._context.socket(zmq.SUB)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.RCVHWM, receive_hwm)
        self.socket.setsockopt(zmq.IPV6, 1)  # a SUB socket with IPV6 connects to IPv4 endpoints too
        if curve is not None:
            secure_client(self.socket, *curve)
        for topic in topics:
            self.socket.setsockopt_string(zmq.SUBSCRIBE, topic)
        self.socket.connect(endpoint)
        self.messages: list[tuple[str, dict[str, Any]]] = []

    def receive_until(self, done: Callable[[list[tuple[str, dict[str, Any]]]], bool], timeout_s: float,
                      quiet_s: float | None = None) -> list[tuple[str, dict[str, Any]]]:
        """Collect messages until ``done(messages)``, or nothing arrived for ``quiet_s``; fail at timeout."""
        deadline = time.monotonic() + timeout_s
        last = time.monotonic()
        while not done(self.messages):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out with {len(self.messages)} messages")
            if quiet_s is not None and time.monotonic() - last > quiet_s:
                break
            if self.socket.poll(100):
                topic, payload = self.socket.recv_multipart()
                self.messages.append((topic.decode(), check_message(json.loads(payload))))
                last = time.monotonic()
        return self.messages

    def receive_labels(self, count: int, timeout_s: float) -> list[tuple[str, dict[str, Any]]]:
        """Receive until ``count`` label messages are in; return the label messages."""
        self.receive_until(lambda messages: sum(m.get("type") == "label" for _, m in messages) >= count, timeout_s)
        return self.labels

    @property
    def labels(self) -> list[tuple[str, dict[str, Any]]]:
        """The label messages received so far (status messages left out)."""
        return [(topic, message) for topic, message in self.messages if message.get("type") == "label"]

    @property
    def statuses(self) -> list[dict[str, Any]]:
        """The status messages received so far, replays of a stream's state for a late joiner included."""
        return [message for topic, message in self.messages if topic.startswith("status/")]

    def close(self) -> None:
        self.socket.close()
        self._context.term()


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample at ``/metrics`` keyed by (name, sorted labels)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def get(port: int, path: str, method: str = "GET") -> tuple[int, Any]:
    """``(status, body)`` of an HTTP request to the daemon (JSON bodies decoded); error statuses too."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            status, raw, kind = response.status, response.read(), response.headers.get_content_type()
    except urllib.error.HTTPError as error:
        status, raw, kind = error.code, error.read(), error.headers.get_content_type()
    return status, json.loads(raw) if kind == "application/json" else raw.decode()


def poll(port: int, path: str, done: Callable[[int, Any], bool], timeout_s: float) -> list[tuple[int, Any]]:
    """Request ``path`` every 20 ms (connection refused: not up yet) until ``done(status, body)``; return
    every answer received, in order."""
    answers: list[tuple[int, Any]] = []
    deadline = time.monotonic() + timeout_s
    while not answers or not done(*answers[-1]):
        if time.monotonic() > deadline:
            raise AssertionError(f"{path}: not done within {timeout_s}s; last answers: {answers[-3:]}")
        try:
            status, body = get(port, path)
            # The daemon answers these paths in JSON only: anything else is another server on the port.
            assert isinstance(body, dict), f"{path}: not the daemon's answer: {status} {body!r}"
            answers.append((status, body))
        except urllib.error.URLError as error:
            if not isinstance(error.reason, ConnectionRefusedError):
                raise
        time.sleep(0.02)
    return answers

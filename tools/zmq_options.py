"""Command-line values of the tools that talk ZeroMQ (``nfnet-forward``, ``nfnet-subscribe``), checked as the
daemon checks ``publish.zmq``: an endpoint ZeroMQ would misread (``tcp://*:99999`` binds a random port) or a
queue bound it would overflow on is an argparse error (one line, exit 2), not a surprise or a traceback."""

from __future__ import annotations

import argparse
from typing import Any

from pipelines.publishers.config import check_zmq_option


def bind_endpoint(text: str) -> str:
    """An endpoint to bind: ``tcp://HOST:PORT`` (PORT 1-65535 or ``*``), ``ipc://PATH`` or ``inproc://NAME``."""
    return _checked("endpoint", text)


def connect_endpoint(text: str) -> str:
    """An endpoint to connect to: as :func:`bind_endpoint`, without a wildcard (only a bind can take one)."""
    endpoint = _checked("endpoint", text)
    if endpoint.startswith("tcp://") and "*" in endpoint:
        raise argparse.ArgumentTypeError(f"{text}: a wildcard (*) can be bound, not connected to")
    return endpoint


def send_hwm(text: str) -> int:
    """Messages queued per subscriber: a whole number within the daemon's ``publish.zmq.send_hwm`` bounds."""
    try:
        number = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    return _checked("send_hwm", number)


def _checked(key: str, value: object) -> Any:
    try:
        return check_zmq_option(key, value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{value}: {exc}") from None

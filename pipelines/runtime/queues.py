"""Blocking queue operations that give up when the pipeline is aborted."""

from __future__ import annotations

import queue
import threading
import time
from typing import TypeVar

T = TypeVar("T")
POLL_S = 0.1


def put(q: queue.Queue[T], item: T, abort: threading.Event) -> bool:
    """Put ``item``, waiting for room; False if the pipeline was aborted first."""
    while not abort.is_set():
        try:
            q.put(item, timeout=POLL_S)
            return True
        except queue.Full:
            continue
    return False


def get(q: queue.Queue[T], abort: threading.Event, timeout: float | None = None) -> T | None:
    """The next item; None once ``timeout`` seconds passed or the pipeline was aborted."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while not abort.is_set():
        wait = POLL_S if deadline is None else max(0.0, min(POLL_S, deadline - time.monotonic()))
        try:
            return q.get(timeout=wait)
        except queue.Empty:
            if deadline is not None and time.monotonic() >= deadline:
                return None
    return None

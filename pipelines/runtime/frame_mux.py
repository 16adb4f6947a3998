"""Per-stream frame buffers between the capture stages and the preprocess stage.

Each stream has a bounded buffer. A file (not live) waits for room, so nothing is lost; a live source
never waits: when its buffer is full the oldest frame is dropped (cause ``queue_full``), and a frame
that has waited longer than its stream's maximum age is dropped when its turn comes (``stale``). The
preprocess stage takes frames round-robin across streams, so a busy stream cannot starve the others.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from pipelines.frames import EndOfStream, Frame
from pipelines.runtime.queues import POLL_S

Item = Frame | EndOfStream


@dataclass
class _StreamBuffer:
    capacity: int
    live: bool
    max_age_s: float
    drop: Callable[[str], None]  # called with the cause of each dropped frame
    items: deque[Item] = field(default_factory=deque)

    @property
    def frames(self) -> int:
        """Frames held (the end marker does not take a frame's room)."""
        return sum(isinstance(item, Frame) for item in self.items)


class FrameMux:
    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._buffers: dict[str, _StreamBuffer] = {}
        self._order: list[str] = []
        self._next = 0

    def add_stream(self, stream_id: str, capacity: int, live: bool, max_age_s: float,
                   drop: Callable[[str], None]) -> None:
        self._buffers[stream_id] = _StreamBuffer(capacity, live, max_age_s, drop)
        self._order.append(stream_id)

    def put(self, stream_id: str, item: Item, abort: threading.Event) -> bool:
        """Hand ``item`` on; False if the pipeline was aborted while a file waited for room."""
        buffer = self._buffers[stream_id]
        with self._condition:
            if isinstance(item, Frame) and buffer.frames >= buffer.capacity:
                if buffer.live:
                    self._evict_oldest(buffer)
                else:
                    while buffer.frames >= buffer.capacity:
                        if abort.is_set():
                            return False
                        self._condition.wait(POLL_S)
            buffer.items.append(item)
            self._condition.notify_all()
        return True

    def get(self, abort: threading.Event, timeout: float | None = None) -> Item | None:
        """The next item, round-robin across streams; None on timeout or abort."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._condition:
            while not abort.is_set():
                item = self._take()
                if item is not None:
                    self._condition.notify_all()
                    return item
                remaining = POLL_S if deadline is None else min(POLL_S, deadline - time.monotonic())
                if remaining <= 0:
                    return None
                self._condition.wait(remaining)
        return None

    def depth(self) -> int:
        with self._condition:
            return sum(len(buffer.items) for buffer in self._buffers.values())

    def _take(self) -> Item | None:
        now = time.perf_counter()
        for offset in range(len(self._order)):
            index = (self._next + offset) % len(self._order)
            buffer = self._buffers[self._order[index]]
            while buffer.items:
                item = buffer.items.popleft()
                if isinstance(item, Frame) and buffer.live and now - item.times.read_end > buffer.max_age_s:
                    buffer.drop("stale")
                    continue
                self._next = index + 1
                return item
        return None

    @staticmethod
    def _evict_oldest(buffer: _StreamBuffer) -> None:
        for position, item in enumerate(buffer.items):
            if isinstance(item, Frame):
                del buffer.items[position]
                buffer.drop("queue_full")
                return

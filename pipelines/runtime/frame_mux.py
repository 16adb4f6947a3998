"""Per-stream frame buffers between the capture stages and the preprocess stage.

Each stream has a bounded buffer. A file (not live) waits for room, so nothing is lost; a live source
never waits: when its buffer is full the oldest frame is dropped (cause ``queue_full``), and a frame
that has waited longer than its stream's maximum age is dropped when its turn comes (``stale``). The
preprocess stage takes frames round-robin across streams, so a busy stream cannot starve the others.

Streams come and go while the pipeline runs: :meth:`FrameMux.add_stream` returns the buffer a capture
stage puts into, and a buffer is gone once its end has been taken. A stream registered again (its
settings changed) gets a new buffer, served only after the previous one's end, so that its frames never
overtake the old registration's.

One lock guards every buffer; a put wakes only the taker, and a take wakes only the reader of the buffer it
took from (a file's reader waits for room in its own buffer), so that no thread is woken for nothing: with
every stream's buffer full, waking all readers at each take cost a wake-up and a GIL hand-off per stream.
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


@dataclass(eq=False)
class StreamBuffer:
    stream_id: str
    capacity: int
    live: bool
    max_age_s: float
    drop: Callable[[str], None]  # called with the cause of each dropped frame
    room: threading.Condition  # on the mux's lock: its file's reader waits here for room
    items: deque[Item] = field(default_factory=deque)

    @property
    def frames(self) -> int:
        """Frames held (the end marker does not take a frame's room)."""
        return sum(isinstance(item, Frame) for item in self.items)


class FrameMux:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)  # the taker waits here for an item
        self._buffers: list[StreamBuffer] = []  # in registration order
        self._next = 0

    def add_stream(self, stream_id: str, capacity: int, live: bool, max_age_s: float,
                   drop: Callable[[str], None]) -> StreamBuffer:
        buffer = StreamBuffer(stream_id, capacity, live, max_age_s, drop, threading.Condition(self._lock))
        with self._lock:
            self._buffers.append(buffer)
        return buffer

    def discard(self, buffer: StreamBuffer) -> None:
        """Remove the buffer of a registration withdrawn before it put anything."""
        with self._lock:
            if buffer.items:
                raise RuntimeError(f"the buffer of {buffer.stream_id!r} is not empty")
            index = self._buffers.index(buffer)
            del self._buffers[index]
            if self._next > index:
                self._next -= 1

    def resize(self, buffer: StreamBuffer, capacity: int, max_age_s: float) -> None:
        """New limits for a stream's buffer, from its next frame on (a live reload)."""
        with self._lock:
            buffer.capacity, buffer.max_age_s = capacity, max_age_s
            buffer.room.notify()

    def put(self, buffer: StreamBuffer, item: Item, abort: threading.Event) -> bool:
        """Hand ``item`` on; False if the pipeline was aborted while a file waited for room."""
        with self._lock:
            if isinstance(item, Frame) and buffer.frames >= buffer.capacity:
                if buffer.live:
                    while buffer.frames >= buffer.capacity:
                        self._evict_oldest(buffer)
                else:
                    while buffer.frames >= buffer.capacity:
                        if abort.is_set():
                            return False
                        buffer.room.wait(POLL_S)
            buffer.items.append(item)
            self._ready.notify()
        return True

    def get(self, abort: threading.Event, timeout: float | None = None) -> Item | None:
        """The next item, round-robin across streams; None on timeout or abort."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while not abort.is_set():
                item = self._take()
                if item is not None:
                    return item
                remaining = POLL_S if deadline is None else min(POLL_S, deadline - time.monotonic())
                if remaining <= 0:
                    return None
                self._ready.wait(remaining)
        return None

    def wait(self, abort: threading.Event, timeout: float) -> bool:
        """Wait up to ``timeout`` for something to take (without taking it); whether there is."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while not abort.is_set():
                if any(buffer.items for buffer in self._buffers):
                    return True
                remaining = min(POLL_S, deadline - time.monotonic())
                if remaining <= 0:
                    return False
                self._ready.wait(remaining)
        return False

    def depth(self) -> int:
        with self._lock:
            return sum(len(buffer.items) for buffer in self._buffers)

    def _take(self) -> Item | None:
        now = time.perf_counter()
        count = len(self._buffers)
        for offset in range(count):
            index = (self._next + offset) % count
            buffer = self._buffers[index]
            if any(earlier.stream_id == buffer.stream_id for earlier in self._buffers[:index]):
                continue  # a re-registration waits for its predecessor's end
            while buffer.items:
                item = buffer.items.popleft()
                if isinstance(item, Frame) and buffer.live and now - item.times.read_end > buffer.max_age_s:
                    buffer.drop("stale")
                    continue
                if isinstance(item, EndOfStream):  # the registration is over: its buffer goes
                    del self._buffers[index]
                    self._next = index
                else:
                    self._next = index + 1
                    buffer.room.notify()
                return item
        return None

    @staticmethod
    def _evict_oldest(buffer: StreamBuffer) -> None:
        for position, item in enumerate(buffer.items):
            if isinstance(item, Frame):
                del buffer.items[position]
                buffer.drop("queue_full")
                return

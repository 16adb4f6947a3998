"""The streams of a running pipeline, which may come and go (a SIGHUP adds, removes or restarts them).

Every registration of a stream has its capture stage send exactly one :class:`EndOfStream`, which passes
through every later stage in order. So a stage is done once no registration can be added any more (the
set is *closed*: a stop, or, with ``exit_when_sources_end``, the moment every registration has ended) and
it has passed on as many ends as there were registrations.
"""

from __future__ import annotations

import threading


class StreamSet:
    def __init__(self, close_when_all_ended: bool) -> None:
        self._lock = threading.Lock()
        self._close_when_all_ended = close_when_all_ended
        self._registered = 0
        self._ended = 0
        self._closed = False

    def register(self) -> bool:
        """One more stream registration; False (nothing registered) once the set is closed."""
        with self._lock:
            if self._closed:
                return False
            self._registered += 1
            return True

    def withdraw(self) -> None:
        """A registration withdrawn before it started: it will send no end (the last one may close the set)."""
        with self._lock:
            self._registered -= 1
            if self._close_when_all_ended and self._ended == self._registered:
                self._closed = True

    def ended(self) -> None:
        """A registration's capture stage sent its end (with ``exit_when_sources_end``, the last one closes)."""
        with self._lock:
            self._ended += 1
            if self._close_when_all_ended and self._ended == self._registered:
                self._closed = True

    def close(self) -> None:
        """No registration will be added (a stop)."""
        with self._lock:
            self._closed = True

    def done(self, ends_passed: int) -> bool:
        """Whether a stage that has passed on ``ends_passed`` ends has nothing more to wait for."""
        with self._lock:
            return self._closed and ends_passed >= self._registered

    @property
    def active(self) -> int:
        """Registrations whose capture stage has not ended yet."""
        with self._lock:
            return self._registered - self._ended

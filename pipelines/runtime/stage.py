"""A pipeline stage: one thread with one job, which records the error that ended it."""

from __future__ import annotations

import logging
import threading
from abc import abstractmethod

log = logging.getLogger(__name__)


class Stage(threading.Thread):
    """Runs :meth:`loop` until it returns; an exception aborts the whole pipeline.

    Stages end in two ways: normally, once every stream's :class:`EndOfStream` has passed through them
    (this is also how a graceful stop drains), or at once when ``abort`` is set.
    """

    def __init__(self, name: str, abort: threading.Event) -> None:
        super().__init__(name=name, daemon=True)
        self.abort = abort
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.loop()
        except Exception as exc:
            self.error = exc
            log.error("stage %s failed: %s", self.name, exc, exc_info=True)
            self.abort.set()

    @abstractmethod
    def loop(self) -> None:
        """The stage's work; return when done."""

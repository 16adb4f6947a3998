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
        self.abandoned = False  # its work was ended for it (a stop); the thread may still be finishing a call

    @property
    def settled(self) -> bool:
        """Finished, or abandoned: nothing downstream waits for it any more."""
        return self.abandoned or not self.is_alive()

    def run(self) -> None:
        try:
            self.loop()
        except Exception as exc:
            self.error = exc
            log.debug("stage %s failed", self.name, exc_info=True)  # the daemon reports it in one line
            self.abort.set()

    @abstractmethod
    def loop(self) -> None:
        """The stage's work; return when done."""

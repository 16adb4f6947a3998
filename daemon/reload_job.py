"""SIGHUP's slow part, off the main loop: the configuration file is read and checked, and the files it adds
or restarts are probed (opened, their first frame decoded, closed), on a thread of its own at a lower CPU
priority, while the main loop goes on (signals, streams starting and ending, systemd's watchdog) and the
running streams keep their cores. The main loop then applies the result (:class:`daemon.service.Daemon`).

A probe holds one source at a time, decoded by one thread, and closes it before the next: a reload that adds
twenty 8K files costs one 8K decoder's memory while it is prepared (about 80 MB), not twenty held open at
once. Each added stream's capture thread then opens its source again, with its share of decoding threads.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Collection

from daemon.config import ConfigError, DaemonConfig
from daemon.reload import ReloadPlan, plan_reload
from pipelines.log_context import stream_context
from pipelines.sources import SourceConfig, SourceError, create_source, is_live
from pipelines.sources.config import describe_source

log = logging.getLogger(__name__)

PROBE_NICENESS = 10  # added to the probing thread's niceness: the running streams come first


class ReloadCancelled(Exception):
    """The daemon began to stop while a reload was being prepared."""


def probe_sources(configs: list[SourceConfig], cancelled: Callable[[], bool] = lambda: False) -> None:
    """Check every source of ``configs`` and open each file once (first frame decoded, then closed); raise
    :class:`SourceError` for the first that cannot be read, :class:`ReloadCancelled` if ``cancelled()``."""
    for config in configs:
        if cancelled():
            raise ReloadCancelled
        source = create_source(config, decode_threads=1)
        try:
            source.check()
            if not is_live(config):
                source.open()
                log.info("stream %s: %s can be read", config.id, describe_source(config),
                         extra=stream_context(config.id))
        finally:
            source.close()


class ReloadJob(threading.Thread):
    """Reads the configuration and probes its new sources; :attr:`new` is then the configuration to apply,
    or :attr:`error` says (in one line) why nothing is to change."""

    def __init__(self, read_config: Callable[[], DaemonConfig], current: DaemonConfig,
                 failed: Collection[str]) -> None:
        super().__init__(name="reload", daemon=True)
        self._read_config = read_config
        self._current = current
        self._failed = failed
        self._cancelled = threading.Event()
        self.new: DaemonConfig | None = None
        self.error = ""

    def cancel(self) -> None:
        """Stop probing (the daemon is stopping): the job ends with an error, nothing is applied."""
        self._cancelled.set()

    def run(self) -> None:
        with contextlib.suppress(OSError):  # (a sandbox may refuse it: the reload is then only slower to prepare)
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), PROBE_NICENESS)  # this thread only
        try:
            new = self._read_config()
            plan: ReloadPlan = plan_reload(self._current, new, self._failed)
            probe_sources(plan.sources.to_open, self._cancelled.is_set)
            self.new = new
        except ReloadCancelled:
            self.error = "the daemon is stopping"
        except (ConfigError, SourceError) as exc:
            self.error = str(exc)
        except Exception as exc:  # whatever reading or checking a file raises, the running daemon goes on
            log.debug("reading the configuration failed", exc_info=True)
            self.error = f"{type(exc).__name__}: {exc}"

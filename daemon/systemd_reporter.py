"""What the daemon tells systemd: its phase as ``STATUS=`` (what ``systemctl status`` shows), ``READY=1``
once it classifies, ``STOPPING=1``, and watchdog pings.

While it starts, each status also asks for more time (``EXTEND_TIMEOUT_USEC=``, sd_notify(3)): a first
MIGraphX compile can outlast ``TimeoutStartSec=``, and systemd would kill it and, with
``Restart=on-failure``, start it again from zero, for ever. The extension is re-sent every few seconds
while a step runs (see ``Daemon._stop_requested_during_startup``), so a start that stops making those
calls (a hung daemon) still times out, ``START_EXTENSION_S`` after its last word once past
``TimeoutStartSec=``.

Pings go out every half watchdog interval, from the daemon's main loop, only while the engine makes
progress or has nothing to do (streams ended, sources reconnecting or quiet). When the engine has held a
batch for longer than the interval without finishing one, the pings stop, so systemd kills and restarts
the daemon; the reason is logged once and shown as the status.
"""

from __future__ import annotations

import logging
import time
from collections import Counter

from daemon.systemd_notify import SystemdNotifier
from pipelines.runtime import Pipeline
from pipelines.runtime.stream_state import STATES

log = logging.getLogger(__name__)

STATUS_EVERY_S = 1.0  # at most one running-status update a second
# How much more time each start-up status asks for. Longer than the steps that cannot speak meanwhile:
# MIGraphX's load() of a compiled program holds the GIL (no thread of the daemon runs) for seconds to a
# minute for a large NFNet, and so does a warm-up run on a slow GPU.
START_EXTENSION_S = 180.0


def describe(pipeline: Pipeline, draining: bool) -> str:
    """``running: 3 streams (2 running, 1 reconnecting), 1234 frames published``."""
    latest = pipeline.states.latest()
    states = Counter(change.state if change else "connecting" for change in latest.values())
    phase = "draining" if draining else "idle" if pipeline.idle or pipeline.finished else "running"
    breakdown = ", ".join(f"{states[state]} {state}" for state in STATES if states[state])
    plural = "" if len(latest) == 1 else "s"
    published = sum(pipeline.output.published_counts().values())
    return f"{phase}: {len(latest)} stream{plural} ({breakdown}), {published} frames published"


class SystemdReporter:
    def __init__(self, notifier: SystemdNotifier) -> None:
        self._notifier = notifier
        self._interval_s = notifier.watchdog_interval_s
        self._pipeline: Pipeline | None = None
        self._next_ping = self._next_status = 0.0
        self._last_status = ""
        self._stalled = False

    def starting(self, text: str) -> None:
        """A start-up status, with a request for ``START_EXTENSION_S`` more seconds to become ready."""
        self._notifier.status(text, f"EXTEND_TIMEOUT_USEC={int(START_EXTENSION_S * 1e6)}")

    def ready(self, pipeline: Pipeline) -> None:
        """The daemon classifies: from now on :meth:`tick` reports on ``pipeline`` and pings the watchdog."""
        self._pipeline = pipeline
        self._last_status = describe(pipeline, draining=False)
        self._notifier.status(self._last_status, "READY=1")

    def stopping(self, text: str) -> None:
        self._notifier.status(text, "STOPPING=1")

    def tick(self, draining: bool) -> None:
        """Called from the main loop: ping the watchdog if due and deserved; refresh the status."""
        if self._pipeline is None or not self._notifier.enabled:
            return
        now = time.monotonic()
        if self._interval_s is not None:
            self._watchdog(self._pipeline, self._interval_s, now)
        if not self._stalled and now >= self._next_status:
            text = describe(self._pipeline, draining)
            if text != self._last_status:
                self._notifier.status(text)
                self._last_status = text
                self._next_status = now + STATUS_EVERY_S

    def close(self) -> None:
        self._notifier.close()

    def _watchdog(self, pipeline: Pipeline, interval_s: float, now: float) -> None:
        progress = pipeline.progress()
        stalled_for = progress.stalled_for(now)
        if stalled_for > interval_s:
            if not self._stalled:
                self._stalled = True
                reason = (f"the engine has held {progress.batches_held} batch(es) for {stalled_for:.1f}s "
                          f"without finishing one")
                log.error("%s (watchdog interval %.1fs): no longer pinging systemd's watchdog, so that it restarts "
                          "the daemon", reason, interval_s)
                self._notifier.status(f"stalled: {reason}; watchdog pings stopped")
                self._last_status = ""
            return
        if self._stalled:
            self._stalled = False
            log.warning("the engine finished a batch again: watchdog pings resume")
        if now >= self._next_ping:
            self._notifier.notify("WATCHDOG=1")
            self._next_ping = now + interval_s / 2

"""The sd_notify(3) protocol, spoken directly: one datagram of ``KEY=value`` lines per message, sent to the
AF_UNIX socket named by ``$NOTIFY_SOCKET`` (a path, or an abstract name written with a leading ``@``).

Without ``NOTIFY_SOCKET`` (not run by systemd as ``Type=notify``) every call does nothing. A failed send
is logged once and never stops the daemon: systemd's view of it is a side channel.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)


def watchdog_interval_s(environ: Mapping[str, str]) -> float | None:
    """systemd's watchdog interval (``WatchdogSec=``) if it is meant for this process, as sd_watchdog_enabled(3)
    decides: ``WATCHDOG_USEC`` set and, if ``WATCHDOG_PID`` is set, equal to our pid."""
    usec = environ.get("WATCHDOG_USEC", "")
    if not usec:
        return None
    pid = environ.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):
        return None
    try:
        interval = int(usec)
    except ValueError:
        interval = 0
    if interval <= 0:
        log.warning("ignoring WATCHDOG_USEC=%r: not a positive number of microseconds", usec)
        return None
    return interval / 1e6


class SystemdNotifier:
    def __init__(self, environ: Mapping[str, str]) -> None:
        name = environ.get("NOTIFY_SOCKET", "")
        self._address = "\0" + name[1:] if name.startswith("@") else name
        self._socket: socket.socket | None = None
        if name.startswith(("/", "@")):
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        elif name:
            log.warning("ignoring NOTIFY_SOCKET=%r: neither a path nor an abstract socket name (@...)", name)
        self.watchdog_interval_s = watchdog_interval_s(environ) if self._socket is not None else None
        self._send_failed = False

    @property
    def enabled(self) -> bool:
        return self._socket is not None

    def notify(self, *assignments: str) -> None:
        """Send ``KEY=value`` assignments (``READY=1``, ``STATUS=...``) in one datagram."""
        if self._socket is None:
            return
        try:
            self._socket.sendto("\n".join(assignments).encode(), self._address)
        except OSError as exc:
            if not self._send_failed:
                log.warning("cannot notify systemd on %r: %s", self._address.replace("\0", "@"), exc)
                self._send_failed = True

    def status(self, text: str, *assignments: str) -> None:
        """A one-line ``STATUS=`` (what ``systemctl status`` shows), with any other assignments."""
        self.notify(*assignments, "STATUS=" + " ".join(text.split()))

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

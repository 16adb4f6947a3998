"""What start-up is doing, and for how long: for ``/readyz`` and systemd's status until the daemon is ready.

Start-up can take minutes (MIGraphX compiles a new model in a child process); an operator looking at
``/readyz`` or ``systemctl status`` sees the step and its elapsed time instead of a daemon that seems hung.
"""

from __future__ import annotations

import threading
import time
from typing import Any


class StartupProgress:
    def __init__(self) -> None:
        self._lock = threading.Lock()  # read by the HTTP thread
        self._step = "starting"
        self._since = time.monotonic()

    def step(self, text: str) -> None:
        with self._lock:
            self._step, self._since = text, time.monotonic()

    def snapshot(self) -> dict[str, Any]:
        """``{"step": ..., "seconds": ...}``: the current step and how long it has taken so far."""
        with self._lock:
            return {"step": self._step, "seconds": round(time.monotonic() - self._since, 1)}

    def status_line(self) -> str:
        """``compiling shapes.onnx for MIGraphX gpu (process 4242): 1m05s``."""
        snapshot = self.snapshot()
        minutes, seconds = divmod(int(snapshot["seconds"]), 60)
        return f"{snapshot['step']}: {minutes}m{seconds:02d}s" if minutes else f"{snapshot['step']}: {seconds}s"

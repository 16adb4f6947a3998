"""A real daemon process while MIGraphX compiles (the test double, holding the GIL as the real bindings do):
the health endpoints answer, SIGTERM stops the compile and the daemon at once, and a compile process that
crashes or is killed is a clear start-up error naming what it printed."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest

from tests.conftest import SHAPES_MODEL, DaemonProcess, daemon_config, free_port
from tests.double_fixtures import DOUBLES_ENV, migraphx_double_engine
from tests.source_tables import file_source
from tests.subscriber import get, poll

COMPILE_S = "60"  # longer than any test waits: the compile never finishes by itself here


def start(tmp_path: Path, daemon_process, **env: str) -> tuple[DaemonProcess, int]:
    """A daemon with a model that is not compiled yet; returns it and its HTTP port."""
    port = free_port()
    config = daemon_config(SHAPES_MODEL, file_source("cam", tmp_path / "cam.mp4", 4), free_port(), port,
                           exit_when_done=True, engine=migraphx_double_engine(tmp_path / "cache"))
    daemon = daemon_process(config, env={**DOUBLES_ENV, "MIGRAPHX_DOUBLE_COMPILE_S": COMPILE_S, **env}).start()
    return daemon, port


def compile_process(port: int) -> int:
    """The pid of the compile process, once /readyz says the daemon is compiling."""
    _, body = poll(port, "/readyz", lambda status, body: "compiling" in body.get("startup", {}).get("step", ""),
                   timeout_s=60)[-1]
    return int(re.search(r"process (\d+)", body["startup"]["step"]).group(1))


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_health_answers_and_sigterm_acts_within_a_second_during_a_compile(tmp_path: Path, daemon_process) -> None:
    daemon, port = start(tmp_path, daemon_process)
    child = compile_process(port)
    latencies, seconds = [], []
    for _ in range(10):
        started = time.monotonic()
        assert get(port, "/healthz") == (200, {"status": "ok"})
        status, body = get(port, "/readyz")
        latencies.append(time.monotonic() - started)
        assert status == 503 and body["model"] == "loading" and body["pipeline"] == "starting"
        seconds.append(body["startup"]["seconds"])
        time.sleep(0.2)
    assert max(latencies) < 1.0, f"health answers took up to {max(latencies):.2f}s while compiling"
    assert seconds == sorted(seconds) and seconds[-1] >= seconds[0] + 1.5, "the compile's elapsed time"
    assert alive(child)

    sent = time.monotonic()
    daemon.signal(signal.SIGTERM)
    while alive(child) and time.monotonic() - sent < 5:
        time.sleep(0.01)
    assert time.monotonic() - sent < 1.0, "SIGTERM stops the compile process within a second"
    assert daemon.wait(10) == 0, daemon.stderr
    assert time.monotonic() - sent < 2.0, "and the daemon exits (measured: 0.4-0.5 s)"
    assert "stopped during start-up (stopped while compiling" in daemon.stderr
    assert "ready" not in daemon.stderr.split("stopped during start-up")[1]


@pytest.mark.parametrize("how, expected", [
    ("crash", r"compile process \d+ for .*shapes_nfnet\.onnx was killed by SIGABRT; it printed: "
              r"compile_ops\.cpp:42: Assertion `ins' failed\."),
    ("kill", r"compile process \d+ for .*shapes_nfnet\.onnx was killed by SIGKILL \(out of memory\? see the "
             r"kernel log\)"),
])
def test_a_compile_process_that_dies_is_a_start_up_error(tmp_path: Path, daemon_process, how: str,
                                                         expected: str) -> None:
    if how == "crash":
        daemon, _ = start(tmp_path, daemon_process, MIGRAPHX_DOUBLE_COMPILE_S="0.5",
                          MIGRAPHX_DOUBLE_COMPILE_CRASH="compile_ops.cpp:42: Assertion `ins' failed.")
    else:
        daemon, port = start(tmp_path, daemon_process)
        os.kill(compile_process(port), signal.SIGKILL)  # as the kernel's OOM killer would
    assert daemon.wait(30) == 3, daemon.stderr
    (error,) = [line for line in daemon.stderr.splitlines() if line.startswith("nfnet-daemon: error:")]
    assert re.search(expected, error), error
    assert "Traceback" not in daemon.stderr

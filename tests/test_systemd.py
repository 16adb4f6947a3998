"""systemd integration: the unit file verifies cleanly; a real daemon speaks sd_notify on a real socket
(READY=1 only once it classifies, STATUS= lines, STOPPING=1, watchdog pings), and its watchdog pings stop
when the engine hangs but go on while a source is legitimately reconnecting."""

from __future__ import annotations

import itertools
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from daemon.systemd_notify import watchdog_interval_s
from pipelines.runtime import PipelineConfig
from pipelines.runtime.progress import ProgressTracker
from tests.conftest import REPO, DaemonProcess, daemon_config, free_port, solid_frames, write_video
from tests.double_fixtures import DOUBLES_ENV, migraphx_double_engine
from tests.source_tables import dead_stream
from tests.subscriber import Subscriber, scrape

UNIT = REPO / "systemd" / "nfnet-daemon.service"
STALL_LOG = "no longer pinging systemd's watchdog"


# -- the unit file ------------------------------------------------------------------------------------------

def systemd_analyze(*args: str) -> subprocess.CompletedProcess[str]:
    program = shutil.which("systemd-analyze")
    assert program, "systemd-analyze is missing: install Debian's systemd package (tests/install-system-deps.sh)"
    return subprocess.run([program, *args], capture_output=True, text=True, timeout=60)


def verify(unit_text: str, workdir: Path) -> subprocess.CompletedProcess[str]:
    """``systemd-analyze verify`` on ``unit_text``. It checks that ExecStart's program exists on this machine,
    and the installed one does not (/opt/nfnet-stream), so this Python stands in for it; every other line is
    verified as written."""
    unit = workdir / UNIT.name
    unit.write_text(re.sub(r"^ExecStart=\S+", f"ExecStart={sys.executable}", unit_text, count=1, flags=re.M))
    return systemd_analyze("verify", "--man=no", "--generators=no", str(unit))


def unit_setting(key: str) -> str:
    match = re.search(rf"^{key}=(.*)$", UNIT.read_text(), re.M)
    assert match, f"{key}= is not set in {UNIT}"
    return match.group(1).strip()


def test_unit_file_verifies_without_a_single_complaint(tmp_path: Path) -> None:
    result = verify(UNIT.read_text(), tmp_path)
    # verify exits 0 even for unknown keys and unparsable values: what it says is on stderr.
    assert result.returncode == 0 and result.stderr == "", result.stderr


def test_verify_reports_unknown_keys_and_bad_values(tmp_path: Path) -> None:
    """The check above can fail: a misspelt key or a bad value is reported."""
    broken = UNIT.read_text().replace("[Service]\n", "[Service]\nWatchdogSecs=30s\nRestartSec=soon\n")
    stderr = verify(broken, tmp_path).stderr
    assert "Unknown key 'WatchdogSecs'" in stderr and "soon" in stderr, stderr


def test_unit_starts_the_installed_daemon() -> None:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    program = unit_setting("ExecStart").split()[0]
    assert Path(program).name in scripts and program.startswith("/opt/nfnet-stream/.venv/bin/")


def timespan_s(value: str) -> float:
    result = systemd_analyze("timespan", value)
    assert result.returncode == 0, result.stderr
    return int(re.search(r"μs: (\d+)", result.stdout).group(1)) / 1e6  # type: ignore[union-attr]


def test_unit_stop_timeout_covers_the_drain() -> None:
    """SIGTERM drains for up to drain_timeout_s, then the stages get up to 10 s to stop (daemon/service.py)."""
    assert timespan_s(unit_setting("TimeoutStopSec")) >= PipelineConfig().drain_timeout_s + 10 + 5


# -- the watchdog's rules, without a process --------------------------------------------------------------

@pytest.mark.parametrize(("environ", "expected"), [
    ({}, None),
    ({"WATCHDOG_USEC": "30000000"}, 30.0),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 30.0),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),  # meant for another process
    ({"WATCHDOG_USEC": "thirty"}, None),
    ({"WATCHDOG_USEC": "0"}, None),
])
def test_watchdog_interval_follows_sd_watchdog_enabled(environ: dict[str, str], expected: float | None) -> None:
    assert watchdog_interval_s(environ) == expected


def test_progress_counts_a_stall_only_while_work_is_held() -> None:
    now = [100.0]
    tracker = ProgressTracker(clock=lambda: now[0])
    now[0] = 500.0  # a long idle spell (a source reconnecting, say) is not a stall
    assert tracker.snapshot().stalled_for(now[0]) == 0.0
    tracker.took()
    now[0] = 501.0
    tracker.took()  # a second batch in flight does not restart the clock
    now[0] = 503.0
    assert tracker.snapshot().stalled_for(now[0]) == 3.0
    tracker.handed_on()
    now[0] = 504.0
    assert tracker.snapshot().stalled_for(now[0]) == 1.0
    tracker.handed_on()
    progress = tracker.snapshot()
    assert (progress.batches_held, progress.batches_done, progress.stalled_for(1000.0)) == (0, 2, 0.0)


# -- a real daemon on a real notify socket ----------------------------------------------------------------

class NotifySocket:
    """systemd's side of sd_notify: an AF_UNIX datagram socket (a path, or an abstract name with a leading
    '@'), read by a thread of its own so that each ``KEY=value`` line gets its true arrival time."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind("\0" + name[1:] if name.startswith("@") else name)
        self._socket.settimeout(0.1)
        self._lines: list[tuple[float, str]] = []
        self._arrived = threading.Condition()
        self._closed = threading.Event()
        self._reader = threading.Thread(target=self._read, name="notify-socket", daemon=True)
        self._reader.start()

    def receive_until(self, done: Callable[[], bool], timeout_s: float, daemon: DaemonProcess) -> None:
        deadline = time.monotonic() + timeout_s
        with self._arrived:
            while not done():
                assert time.monotonic() < deadline, f"timed out; received {self._lines}\n{daemon.stderr}"
                assert daemon.process is not None and daemon.process.poll() is None, daemon.stderr
                self._arrived.wait(0.1)

    @property
    def lines(self) -> list[tuple[float, str]]:
        with self._arrived:
            return list(self._lines)

    def times(self, line: str) -> list[float]:
        return [t for t, received in self.lines if received == line]

    def statuses(self, after: float = 0.0, before: float = float("inf")) -> list[str]:
        return [line.removeprefix("STATUS=") for t, line in self.lines
                if line.startswith("STATUS=") and after <= t < before]

    def close(self) -> None:
        self._closed.set()
        self._reader.join()
        self._socket.close()

    def _read(self) -> None:
        while not self._closed.is_set():
            try:
                datagram = self._socket.recv(4096)
            except TimeoutError:
                continue
            arrived = time.monotonic()
            with self._arrived:
                self._lines.extend((arrived, line) for line in datagram.decode().split("\n"))
                self._arrived.notify_all()


@pytest.fixture
def notify_socket(tmp_path: Path):
    sock = NotifySocket(str(tmp_path / "notify.sock"))
    yield sock
    sock.close()


def systemd_env(notify: NotifySocket, watchdog_s: float) -> dict[str, str]:
    return {"NOTIFY_SOCKET": notify.name, "WATCHDOG_USEC": str(int(watchdog_s * 1e6))}


def pings_after(notify: NotifySocket, start: float) -> int:
    return sum(t > start for t in notify.times("WATCHDOG=1"))


def largest_gap(times: list[float]) -> float:
    return max(later - earlier for earlier, later in itertools.pairwise(times))


def start_notified_daemon(model: Path, sources: str, notify: NotifySocket, watchdog_s: float,
                          daemon_process) -> tuple[DaemonProcess, Subscriber, int]:
    """A daemon (ONNX Runtime) run as systemd would, with ``sources``; the subscriber it waits for, and its
    metrics port."""
    zmq_port, metrics_port = free_port(), free_port()
    config = daemon_config(model, sources, zmq_port, metrics_port, exit_when_done=False,
                           engine='type = "onnxruntime"')
    subscriber = Subscriber(f"tcp://127.0.0.1:{zmq_port}")
    return daemon_process(config, env=systemd_env(notify, watchdog_s)).start(), subscriber, metrics_port


def test_notify_protocol_over_a_daemons_life(tmp_path: Path, colour_model_path: Path, notify_socket: NotifySocket,
                                              daemon_process) -> None:
    watchdog_s = 2.0
    video = write_video(tmp_path / "cam.mp4", solid_frames([(220, 30, 30)] * 75), fps=25.0)
    source = f'[[sources]]\nid = "cam"\npath = "{video}"\npace = true\n'  # 3 s of classifying, like a camera
    daemon, subscriber, metrics_port = start_notified_daemon(colour_model_path, source, notify_socket, watchdog_s,
                                                             daemon_process)
    try:
        notify_socket.receive_until(lambda: bool(notify_socket.times("READY=1")), 60, daemon)
        assert "ready: 1 stream(s)" in daemon.stderr, "READY=1 comes only once the daemon is ready"
        assert scrape(metrics_port), "once READY=1 is in, the daemon serves"
        ready_at = notify_socket.times("READY=1")[0]
        subscriber.receive_labels(75, timeout_s=60)
        idle = "idle: 1 stream (1 ended), 75 frames published"
        notify_socket.receive_until(lambda: idle in notify_socket.statuses(), 30, daemon)
        idle_at = notify_socket.times("STATUS=" + idle)[0]
        notify_socket.receive_until(lambda: pings_after(notify_socket, idle_at) >= 2, 30, daemon)
        daemon.signal(signal.SIGTERM)
        notify_socket.receive_until(lambda: bool(notify_socket.times("STOPPING=1")), 30, daemon)
        assert daemon.wait(30) == 0, daemon.stderr
    finally:
        subscriber.close()
    startup = [status.split()[0] for status in notify_socket.statuses(before=ready_at)]
    assert startup == ["reading", "building", "warming", "opening", "waiting"], notify_socket.lines
    running = notify_socket.statuses(after=ready_at, before=idle_at)
    assert running[0].startswith("running: 1 stream (") and "running: 1 stream (1 running)" in " ".join(running)
    pings = [t for t in notify_socket.times("WATCHDOG=1") if t < notify_socket.times("STOPPING=1")[0]]
    assert pings and pings[0] >= ready_at, "the watchdog is pinged only once the daemon is ready"
    assert sum(t < idle_at for t in pings) >= 2 and sum(t > idle_at for t in pings) >= 2, "busy and idle"
    assert largest_gap([ready_at, *pings]) < watchdog_s, "never a ping late"
    assert any(s.startswith("draining") for s in notify_socket.statuses(after=notify_socket.times("STOPPING=1")[0]))


def test_watchdog_pings_stop_when_the_engine_hangs(tmp_path: Path, daemon_process) -> None:
    """MIGraphX on the test doubles, every GPU operation taking 10 minutes: the first batch never comes back."""
    watchdog_s = 1.0
    notify = NotifySocket(f"@nfnet-test-{uuid.uuid4().hex}")  # an abstract socket name
    video = write_video(tmp_path / "cam.mp4", solid_frames([(30, 220, 30)] * 8))
    zmq_port, metrics_port = free_port(), free_port()
    engine = "warmup_runs = 0\n" + migraphx_double_engine(tmp_path / "cache")  # a warm-up would hang too
    config = daemon_config(REPO / "tests" / "assets" / "shapes_nfnet.onnx", {"cam": video}, zmq_port,
                           metrics_port, exit_when_done=False, engine=engine)
    subscriber = Subscriber(f"tcp://127.0.0.1:{zmq_port}")
    env = {**DOUBLES_ENV, "HIP_DOUBLE_OP_DELAY_S": "600", **systemd_env(notify, watchdog_s)}
    daemon = daemon_process(config, env=env).start()
    try:
        notify.receive_until(lambda: bool(notify.times("READY=1")), 60, daemon)
        stalled = "stalled: the engine has held "  # 1 or 2 batches: the engine takes 2 at a time
        notify.receive_until(lambda: any(s.startswith(stalled) for s in notify.statuses()), 30, daemon)
        stopped_at = next(t for t, line in notify.lines if line.startswith("STATUS=" + stalled))
        time.sleep(3 * watchdog_s)  # watching for pings that must not come
    finally:
        subscriber.close()
        notify.close()
    pings = notify.times("WATCHDOG=1")
    assert pings and pings[0] > notify.times("READY=1")[0], "the watchdog was pinged before the engine hung"
    assert not [t for t in pings if t > stopped_at], "no ping once the engine is stuck"
    assert daemon.stderr.count(STALL_LOG) == 1
    assert re.search(r"the engine has held [12] batch\(es\) for [\d.]+s without finishing one", daemon.stderr)


def test_watchdog_pings_go_on_while_a_source_reconnects(tmp_path: Path, colour_model_path: Path,
                                                        notify_socket: NotifySocket, daemon_process) -> None:
    watchdog_s = 1.0
    daemon, subscriber, _ = start_notified_daemon(colour_model_path, dead_stream("gate"), notify_socket, watchdog_s,
                                                  daemon_process)
    try:
        notify_socket.receive_until(lambda: bool(notify_socket.times("READY=1")), 60, daemon)
        reconnecting = "running: 1 stream (1 reconnecting), 0 frames published"
        notify_socket.receive_until(lambda: reconnecting in notify_socket.statuses(), 30, daemon)
        reconnecting_at = notify_socket.times("STATUS=" + reconnecting)[0]
        notify_socket.receive_until(lambda: pings_after(notify_socket, reconnecting_at) >= 5, 30, daemon)
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(30) == 0, daemon.stderr
    finally:
        subscriber.close()
    pings = [t for t in notify_socket.times("WATCHDOG=1") if t > reconnecting_at]
    assert largest_gap([reconnecting_at, *pings]) < watchdog_s, notify_socket.lines
    assert STALL_LOG not in daemon.stderr

"""systemd integration: the unit file verifies cleanly; a real daemon speaks sd_notify on a real socket
(READY=1 only once it classifies, STATUS= lines, STOPPING=1, watchdog pings), and its watchdog pings stop
when the engine hangs but go on while a source is legitimately reconnecting. Where systemd-nspawn can boot a
container, the service installed by the README's steps runs under a real systemd: start-up, groups, reload,
stop, watchdog and `systemd-analyze security`."""

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
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from daemon.systemd_notify import watchdog_interval_s
from pipelines.runtime import PipelineConfig
from pipelines.runtime.progress import ProgressTracker
from tests.conftest import REPO, DaemonProcess, daemon_config, free_port, solid_frames, write_video
from tests.double_fixtures import DOUBLES_ENV, migraphx_double_engine
from tests.nspawn import Container, ContainerUnavailable, unavailable_reason
from tests.source_tables import dead_stream
from tests.subscriber import Subscriber, scrape
from tests.wheelhouse import WheelhouseError, build_wheelhouse

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
        self._datagrams: list[tuple[float, list[str]]] = []
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

    def datagrams(self, containing: str) -> list[tuple[float, list[str]]]:
        """The messages (one datagram each: its arrival, its lines) with a line that starts with ``containing``."""
        with self._arrived:
            return [(t, lines) for t, lines in self._datagrams if any(line.startswith(containing) for line in lines)]

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
            lines = datagram.decode().split("\n")
            with self._arrived:
                self._lines.extend((arrived, line) for line in lines)
                self._datagrams.append((arrived, lines))
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


def test_start_up_asks_for_more_time_while_it_compiles(tmp_path: Path, notify_socket: NotifySocket,
                                                        daemon_process) -> None:
    """Issue 20, point 2: a first compile longer than TimeoutStartSec= must not be killed (and restarted from
    zero, for ever). While it compiles (the MIGraphX double, slowed), the daemon keeps asking for more time
    (EXTEND_TIMEOUT_USEC=, sd_notify(3)), each time with its progress as STATUS=, more often than the time it
    asks for runs out; once ready, it asks no more."""
    compile_s = 11.0
    video = write_video(tmp_path / "cam.mp4", solid_frames([(30, 30, 220)] * 8))
    zmq_port, metrics_port = free_port(), free_port()
    config = daemon_config(REPO / "tests" / "assets" / "shapes_nfnet.onnx", {"cam": video}, zmq_port, metrics_port,
                           exit_when_done=False, engine=migraphx_double_engine(tmp_path / "cache"))
    subscriber = Subscriber(f"tcp://127.0.0.1:{zmq_port}")
    env = {**DOUBLES_ENV, "MIGRAPHX_DOUBLE_COMPILE_S": str(compile_s), **systemd_env(notify_socket, 30.0)}
    daemon = daemon_process(config, env=env).start()
    try:
        notify_socket.receive_until(lambda: bool(notify_socket.times("READY=1")), 90, daemon)
        time.sleep(1.0)  # anything said after READY=1 arrives
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(30) == 0, daemon.stderr
    finally:
        subscriber.close()
    ready_at = notify_socket.times("READY=1")[0]
    extensions = notify_socket.datagrams("EXTEND_TIMEOUT_USEC=")
    assert extensions and all(t < ready_at for t, _ in extensions), "more time only to start"
    asked_s = set()
    for _, lines in extensions:
        assert any(line.startswith("STATUS=") for line in lines), lines
        asked_s.update(int(line.split("=", 1)[1]) / 1e6 for line in lines if line.startswith("EXTEND_TIMEOUT_USEC="))
    (asked,) = asked_s
    compiling = [t for t, lines in extensions if any(line.startswith("STATUS=compiling ") for line in lines)]
    assert len(compiling) >= 3, f"re-sent during the compile: {notify_socket.lines}"
    assert largest_gap([t for t, _ in extensions]) < asked / 2, "re-sent well before it runs out"
    assert largest_gap(compiling) < 7.5, f"every 5 s while compiling: {notify_socket.lines}"
    progress = [status for status in notify_socket.statuses(before=ready_at) if status.startswith("compiling ")]
    assert any(re.search(r": (5|6|7|8|9|10)s$", status) for status in progress), progress


# -- the installed service under a real systemd -----------------------------------------------------------
# This machine's root booted as a container by systemd-nspawn (tests/nspawn.py: copy-on-write in memory, its
# own network namespace), the service installed in it by the README's steps and run by its systemd.

EXPOSURE_LIMIT = 3.5  # `systemd-analyze security`'s overall exposure (0 safest, 10 unprotected); 3.2 today
SOURCE_IN_BOX = "/srv/nfnet-test/source"
WHEELS_IN_BOX = "/srv/nfnet-test/wheels"
SERVICE = "nfnet-daemon"
DROP_IN = f"/run/systemd/system/{SERVICE}.service.d/test.conf"
ENV_FILE = "/etc/nfnet-stream/nfnet-daemon.env"
# The container has no network: pip's own settings point it at the wheels of this environment's packages
# (tests/wheelhouse.py), as on an offline box (README).
PIP_OFFLINE = {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": WHEELS_IN_BOX, "PIP_CONFIG_FILE": "/dev/null",
               "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
# The README's "edit it": the bundled model on the bundled demo video (240 frames, 9.6 s at its own pace), on
# ROCm's `migraphx` found where the unit looks (PYTHONPATH=/opt/rocm/lib): the MIGraphX and HIP test doubles.
BOX_CONFIG = """\
[model]
path = "/opt/nfnet-stream/tests/assets/shapes_nfnet.onnx"

[engine]
type = "auto"
batch_size = 4

[engine.migraphx]
hip_library = "python:hip_runtime"

[pipeline]
top_k = 5
exit_when_sources_end = false

[[sources]]
id = "demo"
path = "/opt/nfnet-stream/tests/assets/demo_shapes.mp4"
pace = true

[publish.zmq]
endpoint = "tcp://127.0.0.1:5555"

[metrics]
host = "127.0.0.1"
port = 9108

[logging]
format = "text"
"""


def readme_service_steps() -> list[str]:
    """The commands of the README's "Running as a service" block, without their comments."""
    section = (REPO / "README.md").read_text().split("## Running as a service", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block, "README.md's 'Running as a service' has no sh block"
    return [line.split(" #")[0].strip() for line in block.group(1).splitlines() if line.strip()]


def readme_step(start: str) -> str:
    """The README's step that begins with ``start``, as root runs it (no sudo in the container):
    ``sudo -u USER command`` with runuser, ``sudo command`` as it is."""
    steps = [step for step in readme_service_steps() if step.startswith(start)]
    assert len(steps) == 1, f"{len(steps)} of the README's service steps begin {start!r}: {readme_service_steps()}"
    step = steps[0]
    as_user = re.match(r"sudo -u (\S+) (.*)", step)
    return f"runuser -u {as_user[1]} -- {as_user[2]}" if as_user else step.removeprefix("sudo ")


def exposure(analysis: str) -> float:
    match = re.search(r"Overall exposure level for \S+: ([\d.]+)", analysis)
    assert match, analysis
    return float(match.group(1))


def test_unit_exposure_stays_low(tmp_path: Path) -> None:
    """`systemd-analyze security` of the unit file as written (the container test checks the loaded unit)."""
    unit = tmp_path / UNIT.name
    unit.write_text(re.sub(r"^ExecStart=\S+", f"ExecStart={sys.executable}", UNIT.read_text(), count=1, flags=re.M))
    result = systemd_analyze("security", "--offline=yes", "--no-pager", str(unit))
    assert exposure(result.stdout) < EXPOSURE_LIMIT, result.stdout


class ServiceBox:
    """The container with the service installed, and what the tests ask of its systemd."""

    def __init__(self, container: Container) -> None:
        self.container = container

    def run(self, command: str, check: bool = True, timeout_s: float = 120.0, env: dict[str, str] | None = None,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        return self.container.run(command, check=check, timeout_s=timeout_s, env=env, input=input)

    def show(self, *properties: str) -> dict[str, str]:
        output = self.run(f"systemctl show {SERVICE} " + " ".join(f"-p {name}" for name in properties)).stdout
        return dict(line.split("=", 1) for line in output.splitlines())

    def cursor(self) -> str:
        """Where the journal ends now: :meth:`journal` shows what comes after."""
        output = self.run("journalctl --show-cursor -n 0 --quiet").stdout
        return output.rsplit("-- cursor: ", 1)[1].strip()

    def journal(self, after: str) -> str:
        """The service's log and what systemd logged about it, since ``after``."""
        return self.run(f"journalctl -u {SERVICE} -o cat --no-pager --after-cursor={after!r}").stdout

    def wait_for(self, condition: Callable[[], bool], timeout_s: float, what: str, after: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            assert time.monotonic() < deadline, f"no {what} within {timeout_s}s:\n{self.journal(after)}"
            time.sleep(0.2)

    def wait_for_log(self, text: str, after: str, timeout_s: float = 60.0) -> None:
        self.wait_for(lambda: text in self.journal(after), timeout_s, repr(text), after)

    def main_pid_groups(self) -> set[str]:
        """The groups the running daemon has (its ``Groups:``, the user's own group among them), by name."""
        pid = self.show("MainPID")["MainPID"]
        assert pid != "0", self.run(f"systemctl status {SERVICE}", check=False).stdout
        gids = re.search(r"^Groups:(.*)$", self.run(f"cat /proc/{pid}/status").stdout, re.M)
        assert gids
        names = self.run(f"getent group {gids.group(1)} | cut -d: -f1").stdout.split() if gids.group(1).strip() else []
        return set(names)

    def set_group(self, group: str, present: bool) -> None:
        exists = self.run(f"getent group {group}", check=False).returncode == 0
        if exists and not present:
            self.run(f"groupdel {group}")
        elif present and not exists:
            self.run(f"groupadd --system {group}")

    def start(self) -> None:
        """Started and ready (a no-op if it is already), so that no test depends on another having run."""
        if self.show("ActiveState")["ActiveState"] != "active":
            self.run(f"systemctl start {SERVICE}", timeout_s=180)

    def reset(self) -> None:
        """Stopped, with no test settings left: no drop-in, the env file as installed."""
        self.run(f"rm -f {DROP_IN} && cp /srv/nfnet-test/nfnet-daemon.env {ENV_FILE} && systemctl daemon-reload && "
                 f"systemctl kill -s KILL {SERVICE} 2>/dev/null; systemctl stop {SERVICE}; "
                 f"systemctl reset-failed {SERVICE} 2>/dev/null; true", timeout_s=120)

    def drop_in(self, *settings: str) -> None:
        """``[Service]`` settings over the installed unit's, until :meth:`reset`."""
        self.run(f"mkdir -p {Path(DROP_IN).parent} && cat > {DROP_IN} && systemctl daemon-reload",
                 input="\n".join(["[Service]", *settings, ""]))


def install_in_container(box: ServiceBox, files: list[str]) -> None:
    """This checkout in /opt/nfnet-stream (the README clones it there), ROCm's Python modules where a ROCm box
    has them (the MIGraphX and HIP doubles), no render group; then the README's steps."""
    box.run(f"mkdir /opt/nfnet-stream && tar -C {SOURCE_IN_BOX} --null -T - -cf - | tar -C /opt/nfnet-stream -xf -",
            input="\0".join(files))
    doubles = "/opt/nfnet-stream/tests/doubles"
    box.run(f"install -d /opt/rocm/lib && cp -r {doubles}/migraphx {doubles}/hip_runtime.py {doubles}/device.py "
            "/opt/rocm/lib/")
    box.set_group("render", present=False)
    box.run(readme_step("sudo /opt/nfnet-stream/systemd/install.sh") + " --extras onnxruntime", env=PIP_OFFLINE,
            timeout_s=600)
    box.run(f"cat > /etc/nfnet-stream/daemon.toml <<'EOF'\n{BOX_CONFIG}EOF\n"
            f"install -d /srv/nfnet-test && cp {ENV_FILE} /srv/nfnet-test/nfnet-daemon.env")
    checked = box.run(readme_step("sudo -u nfnet "), timeout_s=120).stdout
    assert "engine   migraphx" in checked, checked


def checkout_files() -> list[str]:
    """The checkout's files as they are, committed or not (what `git clone` of a commit of them gives)."""
    listing = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             capture_output=True, text=True, check=True).stdout
    return [name for name in listing.split("\0") if name and (REPO / name).is_file()]


@pytest.fixture(scope="module")
def service_box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceBox]:
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(f"cannot boot a systemd container here: {reason}")
    work = tmp_path_factory.mktemp("service-box")
    container = Container(work / "root", {REPO: SOURCE_IN_BOX})
    try:
        try:
            container.boot()
        except ContainerUnavailable as exc:
            pytest.skip(f"systemd-nspawn cannot boot a container here: {exc}")
        python = container.run("python3 -c 'import ensurepip, sys; print(*sys.version_info[:2])'", check=False)
        if python.stdout.split() != [str(part) for part in sys.version_info[:2]]:
            pytest.skip(f"the container's python3 cannot make a venv for this environment's wheels (Python "
                        f"{sys.version_info[0]}.{sys.version_info[1]}): {python.stdout}{python.stderr}")
        # Written straight into the container's memory: nothing of them stays on this machine's disk.
        wheels = container.path(WHEELS_IN_BOX)
        wheels.mkdir(parents=True)
        try:
            build_wheelhouse(REPO / "pyproject.toml", ["onnxruntime"], wheels)
        except WheelhouseError as exc:
            pytest.skip(f"cannot install the project offline in a container: {exc}")
        box = ServiceBox(container)
        install_in_container(box, checkout_files())
        yield box
    finally:
        container.close()
        shutil.rmtree(work, ignore_errors=True)


def test_service_starts_without_a_render_group(service_box: ServiceBox) -> None:
    """Issue 11, point 11: on a box with no render group (CPU-only, older ROCm) the installed unit starts, its
    daemon in the groups the box has; the unit as it was (SupplementaryGroups=video render) fails there."""
    box = service_box
    box.reset()
    box.set_group("render", present=False)
    box.drop_in("SupplementaryGroups=video render")
    mark = box.cursor()
    assert box.run(f"systemctl start {SERVICE}", check=False).returncode != 0
    assert "status=216/GROUP" in box.journal(mark)
    box.reset()
    mark = box.cursor()
    box.run(readme_step("sudo systemctl enable --now"), timeout_s=180)
    # Type=notify: the start returned only once the daemon said READY=1, after its "ready" line.
    assert "ready: 1 stream(s)" in box.journal(mark)
    state = box.show("ActiveState", "SubState", "StatusText", "NRestarts")
    assert state["ActiveState"] == "active" and state["SubState"] == "running", state
    assert state["StatusText"].startswith(("running: 1 stream", "idle: 1 stream")) and state["NRestarts"] == "0"
    status = box.run(readme_step("systemctl status"), check=False).stdout
    assert 'Status: "running: 1 stream' in status or 'Status: "idle: 1 stream' in status, status
    assert "engine migraphx ready" in box.journal(mark)  # ROCm's migraphx, through the unit's PYTHONPATH
    assert box.main_pid_groups() == {"nfnet", "video"}


def test_service_joins_the_render_group_where_there_is_one(service_box: ServiceBox) -> None:
    """Issue 11, point 11: on a ROCm box (a render group) the install puts the user in it and the daemon runs
    with it."""
    box = service_box
    box.reset()
    box.set_group("render", present=True)
    try:
        box.run(readme_step("sudo /opt/nfnet-stream/systemd/install.sh") + " --extras onnxruntime", env=PIP_OFFLINE,
                timeout_s=600)
        box.start()
        assert box.main_pid_groups() == {"nfnet", "video", "render"}
    finally:
        box.reset()
        box.set_group("render", present=False)


def test_reload_rereads_the_configuration(service_box: ServiceBox) -> None:
    """`systemctl reload` (ExecReload: SIGHUP to the main process) applies a live setting, same process."""
    box = service_box
    box.start()
    pid = box.show("MainPID")["MainPID"]
    box.run("sed -i 's/^top_k = 5$/top_k = 3/' /etc/nfnet-stream/daemon.toml")
    try:
        mark = box.cursor()
        box.run(readme_step("sudo systemctl reload"))
        box.wait_for_log("SIGHUP: configuration reloaded; applied:", mark, timeout_s=30)
        assert "top_k" in box.journal(mark)
        assert box.show("MainPID", "ActiveState") == {"MainPID": pid, "ActiveState": "active"}
    finally:
        box.run("sed -i 's/^top_k = 3$/top_k = 5/' /etc/nfnet-stream/daemon.toml")


def test_stop_publishes_the_frames_in_flight_and_exits_0(service_box: ServiceBox) -> None:
    box = service_box
    box.reset()
    box.start()
    mark = box.cursor()
    published = re.compile(r"running: 1 stream \(1 running\), (\d+) frames published")

    def streaming() -> bool:  # mid-video: the source is still reading
        match = published.match(box.show("StatusText")["StatusText"])
        return match is not None and int(match.group(1)) >= 8
    box.wait_for(streaming, 60, "frames published", mark)
    before = int(published.match(box.show("StatusText")["StatusText"]).group(1))  # type: ignore[union-attr]
    box.run(f"systemctl stop {SERVICE}", timeout_s=90)
    log = box.journal(mark)
    done = re.search(r"all streams done: demo=(\d+) published", log)
    assert done and log.index("SIGTERM: stopping sources, publishing frames in flight") < done.start(), log
    assert int(done.group(1)) >= before and "drain took longer" not in log and "aborting" not in log, log
    # systemd's word on the exit (the unit's properties can be gone: an inactive unit nothing wants is unloaded):
    # a main process that exits non-zero or is killed is logged as "Main process exited, code=..., status=...".
    assert "nfnet-daemon.service: Deactivated successfully." in log and "Main process exited" not in log, log
    assert box.show("ActiveState") == {"ActiveState": "inactive"}


def test_watchdog_restarts_a_hung_engine(service_box: ServiceBox) -> None:
    """The daemon's pings keep a healthy service up past WatchdogSec; an engine that stops finishing batches (the
    HIP double's operations take 10 minutes) stops them, and systemd aborts the daemon (every thread's traceback
    in the journal) and restarts it, healthy again once the hang is gone. WatchdogSec is shortened here."""
    box = service_box
    watchdog_s = 4
    box.reset()
    box.drop_in(f"WatchdogSec={watchdog_s}s", "LimitCORE=0")  # and no core dump of the aborted daemon
    try:
        box.start()
        assert box.show("WatchdogUSec") == {"WatchdogUSec": f"{watchdog_s}s"}
        pid = box.show("MainPID")["MainPID"]
        time.sleep(2.5 * watchdog_s)
        assert box.show("MainPID", "NRestarts", "ActiveState") == {"MainPID": pid, "NRestarts": "0",
                                                                    "ActiveState": "active"}
        box.run(f"cat >> {ENV_FILE}", input="HIP_DOUBLE_OP_DELAY_S=600\nNFNET_ENGINE__WARMUP_RUNS=0\n")
        mark = box.cursor()
        box.run(f"systemctl restart {SERVICE}", timeout_s=180)
        timeout = f"Watchdog timeout (limit {watchdog_s}s)!"
        box.wait_for_log(timeout, mark, timeout_s=60)
        box.run(f"cp /srv/nfnet-test/nfnet-daemon.env {ENV_FILE}")  # before the restart, RestartSec=5s later
        restarted = "Scheduled restart job, restart counter is at 1"
        box.wait_for(lambda: "ready: 1 stream(s)" in box.journal(mark).partition(restarted)[2], 60,
                     "ready daemon after the restart", mark)
        log = box.journal(mark)
        assert box.show("ActiveState", "NRestarts") == {"ActiveState": "active", "NRestarts": "1"}, log
    finally:
        box.reset()
    assert STALL_LOG in log and log.index(STALL_LOG) < log.index(timeout) < log.index(restarted), log
    assert "Failed with result 'watchdog'" in log and "status=6/ABRT" in log, log
    assert "Fatal Python error: Aborted" in log and "most recent call first" in log, log


def test_a_compile_longer_than_the_start_timeout_completes_without_a_restart(service_box: ServiceBox) -> None:
    """Issue 20, point 2: a first compile (the MIGraphX double's, slowed to 15 s) outlasts TimeoutStartSec (6 s
    here): systemd neither kills nor restarts it, `systemctl status` shows its progress, and it becomes ready."""
    box = service_box
    timeout_s, compile_s = 6, 15
    box.reset()
    box.run("rm -rf /var/cache/nfnet-stream/*")  # no compiled program: a first compile
    box.drop_in(f"TimeoutStartSec={timeout_s}s")
    box.run(f"cat >> {ENV_FILE}", input=f"MIGRAPHX_DOUBLE_COMPILE_S={compile_s}\n")
    compiling = re.compile(r"compiling shapes_nfnet\.onnx for MIGraphX gpu \(process \d+\): (\d+)s")

    def compiling_for(status: str) -> int:
        match = compiling.fullmatch(status)
        return int(match.group(1)) if match else -1
    try:
        mark = box.cursor()
        box.run(f"systemctl start --no-block {SERVICE}")
        box.wait_for(lambda: compiling_for(box.show("StatusText")["StatusText"]) > timeout_s, 60,
                     "a compile past TimeoutStartSec", mark)
        status = box.run(f"systemctl status {SERVICE}", check=False).stdout
        assert re.search(r"Active: activating \(start\).*\n(.*\n)*.*Status: \"compiling shapes_nfnet", status), status
        box.wait_for(lambda: box.show("ActiveState")["ActiveState"] != "activating", 60, "the end of the start", mark)
        state = box.show("ActiveState", "SubState", "NRestarts")
        log = box.journal(mark)
    finally:
        box.reset()
    assert state == {"ActiveState": "active", "SubState": "running", "NRestarts": "0"}, log
    assert "timed out" not in log and "Scheduled restart job" not in log, log
    assert "ready: 1 stream(s)" in log and re.search(r"compiled program: cache miss, compile 1\d\.\ds", log), log


def test_security_exposure_under_systemd(service_box: ServiceBox) -> None:
    analysis = service_box.run(f"systemd-analyze security --no-pager {SERVICE}.service").stdout
    assert exposure(analysis) < EXPOSURE_LIMIT, analysis

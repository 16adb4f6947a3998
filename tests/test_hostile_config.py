"""Hostile input at start-up and on SIGHUP: a bad file is a configuration error and a running daemon goes on
untouched; a daemon that fails never leaves a stream looking complete; SIGHUP never kills the process."""

from __future__ import annotations

import json
import logging
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from contextlib import closing
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from daemon.health import Readiness
from daemon.http import REQUEST_TIMEOUT_S, MetricsServer
from pipelines.redact import mask_credentials
from tests.conftest import REPO, SHAPES_MODEL, DaemonProcess, daemon_config, free_port
from tests.source_tables import file_source, source_table
from tests.subscriber import Subscriber, get, poll
from tests.test_daemon_errors import EXIT_CONFIG, assert_clean_error, run_daemon
from tests.test_reliability import h264

DEEP = 500  # levels of nesting: past what tomllib can read within Python's recursion limit
ADDED = '\n[[sources]]\nid = "added"\n'  # a source added to the file
HOSTILE = {
    "no such user": ADDED + 'path = "~nosuchuser/x.mp4"\n',
    "arrays 500 deep": ADDED + 'path = "x.mp4"\nroi = ' + "[" * DEEP + "]" * DEEP + "\n",
    "tables 500 deep": ADDED + 'path = "x.mp4"\nroi = ' + "{a = " * DEEP + "1" + "}" * DEEP + "\n",
}


def long_file_config(tmp_path: Path, frames: int) -> tuple[str, int]:
    """One lossless file stream ("cam") of ``frames`` frames; the daemon exits when it ends."""
    zmq_port = free_port()
    video = h264(tmp_path / "long.mp4", frames)
    return daemon_config(SHAPES_MODEL, {"cam": video}, zmq_port, 0, exit_when_done=True, batch_size=1,
                         engine='type = "onnxruntime"'), zmq_port


def the_end(subscriber: Subscriber) -> dict:
    return next(s for s in subscriber.statuses if s["state"] in ("ended", "failed"))


@pytest.mark.parametrize("hostile", HOSTILE.values(), ids=HOSTILE.keys())
def test_a_hostile_file_at_start_up_is_a_configuration_error(tmp_path: Path, hostile: str) -> None:
    config = tmp_path / "c.toml"
    config.write_text(daemon_config(SHAPES_MODEL, {"cam": tmp_path / "x.mp4"}, free_port(), 0, exit_when_done=True)
                      + hostile)
    assert_clean_error(run_daemon(config), EXIT_CONFIG, str(config),
                       "~nosuchuser: no such user" if "~" in hostile else "nested too deeply")


def test_a_hostile_environment_variable_at_start_up_is_a_configuration_error(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(daemon_config(SHAPES_MODEL, {"cam": tmp_path / "x.mp4"}, free_port(), 0, exit_when_done=True))
    result = subprocess.run([sys.executable, "-m", "daemon", "--config", str(config)], cwd=REPO, capture_output=True,
                            text=True, timeout=60, env={"NFNET_SOURCES__0__ROI": "[" * DEEP + "]" * DEEP,
                                                        "PATH": "/usr/bin:/bin"})
    assert_clean_error(result, EXIT_CONFIG, "nested too deeply", "NFNET_")


def test_hostile_reloads_leave_the_running_daemon_untouched(tmp_path: Path, daemon_process) -> None:
    frames = 1500
    config, zmq_port = long_file_config(tmp_path, frames)
    with closing(Subscriber(f"tcp://127.0.0.1:{zmq_port}")) as subscriber:
        daemon = daemon_process(config).start()
        subscriber.receive_labels(5, timeout_s=60)
        for count, hostile in enumerate(HOSTILE.values(), start=1):
            daemon.config.write_text(config + hostile)
            daemon.signal(signal.SIGHUP)
            deadline = time.monotonic() + 30
            while daemon.stderr.count("configuration not reloaded") < count:
                assert daemon.process is not None and daemon.process.poll() is None, daemon.stderr
                assert time.monotonic() < deadline, daemon.stderr
                time.sleep(0.05)
        subscriber.receive_until(lambda m: any(s["state"] in ("ended", "failed") for s in subscriber.statuses), 120)
        assert daemon.wait(60) == 0, daemon.stderr
    assert the_end(subscriber)["state"] == "ended"
    assert f"{frames} of {frames} frames published" in the_end(subscriber)["detail"]
    assert [m["seq"] for _, m in subscriber.labels] == list(range(frames))
    assert "Traceback" not in daemon.stderr
    reasons = [line for line in daemon.stderr.splitlines() if "configuration not reloaded" in line]
    assert "~nosuchuser" in reasons[0] and all("nested too deeply" in line for line in reasons[1:]), reasons


BROKEN_MAIN_LOOP = """
import sys
import daemon.service

def a_bug(self):
    raise RuntimeError("a bug in the main loop")

daemon.service.Daemon._reload = a_bug  # fault injection: the next SIGHUP raises in the main loop
from daemon.cli import main
sys.exit(main())
"""


def test_a_daemon_that_fails_ends_the_streams_it_cuts_as_failed(tmp_path: Path, daemon_process) -> None:
    frames = 1500
    config, zmq_port = long_file_config(tmp_path, frames)
    with closing(Subscriber(f"tcp://127.0.0.1:{zmq_port}")) as subscriber:
        daemon = daemon_process(config)
        with open(daemon.stdout_path, "wb") as out, open(daemon.stderr_path, "wb") as err:
            daemon.process = subprocess.Popen([sys.executable, "-c", BROKEN_MAIN_LOOP, "--config", str(daemon.config)],
                                              cwd=REPO, stdout=out, stderr=err)
        subscriber.receive_labels(5, timeout_s=60)
        daemon.signal(signal.SIGHUP)
        assert daemon.wait(60) == 1, daemon.stderr
        subscriber.receive_until(lambda m: any(s["state"] in ("ended", "failed") for s in subscriber.statuses), 30)
    end = the_end(subscriber)
    published = len(subscriber.labels)
    assert published < frames, "the stream was cut"
    assert end["state"] == "failed", end
    assert end["detail"].startswith("the daemon failed: RuntimeError: a bug in the main loop"), end
    assert f"{published} of {published} frames published" in end["detail"], "what it read is still published"
    assert "nfnet-daemon: error: internal error: RuntimeError: a bug in the main loop" in daemon.stderr


HEAVY_LIBRARY = "_multiarray_umath"  # NumPy's core, loaded by the daemon's first imports


def sighup_state(pid: int) -> tuple[bool, bool]:
    """(SIGHUP ignored or caught, NumPy loaded) for a running process, from /proc."""
    status = dict(line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    handled = (int(status["SigIgn"], 16) | int(status["SigCgt"], 16)) & (1 << (signal.SIGHUP - 1))
    return bool(handled), HEAVY_LIBRARY in Path(f"/proc/{pid}/maps").read_text()


def test_sighup_from_start_to_exit_never_kills_the_daemon(tmp_path: Path, daemon_process) -> None:
    """SIGHUP every few milliseconds from the moment the process can take one (the interpreter's own start,
    before any of the daemon's code runs, cannot) until it has exited: it must run to its normal end."""
    zmq_port = free_port()
    config = daemon_config(SHAPES_MODEL, file_source("cam", tmp_path / "cam.mp4", 40), zmq_port, 0,
                           exit_when_done=True, engine='type = "onnxruntime"')
    first_handled: list[bool] = []  # NumPy loaded already when SIGHUP was first handled?
    sent = 0

    def hammer(daemon: DaemonProcess) -> None:
        nonlocal sent
        assert daemon.process is not None
        while daemon.process.poll() is None:
            try:
                handled, numpy_loaded = sighup_state(daemon.process.pid)
            except (FileNotFoundError, ProcessLookupError, ValueError, KeyError):
                break  # it has exited (or is exiting: its /proc entry is going)
            if handled and not first_handled:
                first_handled.append(numpy_loaded)
            if first_handled:
                daemon.signal(signal.SIGHUP)
                sent += 1
            time.sleep(0.002 if first_handled else 0.0002)

    with closing(Subscriber(f"tcp://127.0.0.1:{zmq_port}")) as subscriber:
        daemon = daemon_process(config).start()
        thread = threading.Thread(target=hammer, args=(daemon,))
        thread.start()
        try:
            subscriber.receive_until(lambda m: any(s["state"] == "ended" for s in subscriber.statuses), 120)
            returncode = daemon.wait(60)
        finally:
            thread.join(60)
    assert returncode == 0, f"rc {returncode} after {sent} SIGHUPs:\n{daemon.stderr}"
    assert first_handled == [False], "SIGHUP must be taken before the heavy imports (NumPy was already loaded)"
    assert sent > 100 and [m["seq"] for _, m in subscriber.labels] == list(range(40))


PASSWORD = "Pw0rd-s3cr3t"
HOST = f"rtsp://admin:{PASSWORD}@127.0.0.1:{free_port()}"  # nothing serves it
URL = f"{HOST}/live"
# Every setting that can hold a URL: (its type, its key, its value with the URL in it).
URL_SETTINGS = {
    "stream url": ("stream", "url", URL),
    "gstreamer pipeline": ("gstreamer", "pipeline", f"rtspsrc location={URL} latency=0 ! decodebin ! appsink"),
    "camera device": ("camera", "device", URL),
}
# Errors about a source with a URL, as the [[sources]] tables that cause them. The first two quote the
# source's table (the whole file for a duplicate id), the last one only the bad value.
CONFIG_ERRORS = {
    "duplicate id": lambda kind, key: f'[[sources]]\nid = "cam"\ntype = "{kind}"\n{key} = "from the environment"\n'
                                      '[[sources]]\nid = "cam"\npath = "x.mp4"\n',
    "bad type": lambda kind, key: f'[[sources]]\nid = "cam"\ntype = "strem"\n{key} = "from the environment"\n',
    "bad value in another key": lambda kind, key: f'[[sources]]\nid = "cam"\ntype = "{kind}"\n'
                                                  f'{key} = "from the environment"\nfps_cap = "fast"\n',
}


@pytest.mark.parametrize(("text", "masked"), [
    ("rtsp://admin:pw@cam/x", "rtsp://admin:***@cam/x"),
    ("rtsp://admin:p@ss@cam:554/x", "rtsp://admin:***@cam:554/x"),  # an unescaped @ in the password
    ("rtsp://:pw@cam/x", "rtsp://:***@cam/x"),
    ("got {'url': 'rtsp://a:b@h/1', 'id': 'x'}", "got {'url': 'rtsp://a:***@h/1', 'id': 'x'}"),
    ("url: 'rtsp://a:b@h/1' -> 'http://c:d@h/2'", "url: 'rtsp://a:***@h/1' -> 'http://c:***@h/2'"),
    ("rtspsrc location=rtsp://a:b@h/x latency=0 ! appsink", "rtspsrc location=rtsp://a:***@h/x latency=0 ! appsink"),
    ("rtsp://admin@cam/x http://cam:8080/x", "rtsp://admin@cam/x http://cam:8080/x"),  # no password: unchanged
    ("rtsp://admin:***@cam/x", "rtsp://admin:***@cam/x"),
])
def test_mask_credentials(text: str, masked: str) -> None:
    assert mask_credentials(text) == masked


def assert_no_password(text: str, masked: bool = True) -> None:
    """No password in ``text``; with ``masked``, the URL is there with its password masked."""
    assert PASSWORD not in text, text
    assert "admin:***@" in text or not masked, text


@pytest.mark.parametrize("error", CONFIG_ERRORS.keys())
@pytest.mark.parametrize("setting", URL_SETTINGS.keys())
@pytest.mark.parametrize("given_in", ["file", "environment"])
def test_a_configuration_error_never_shows_a_password(tmp_path: Path, error: str, setting: str,
                                                      given_in: str) -> None:
    kind, key, value = URL_SETTINGS[setting]
    sources = CONFIG_ERRORS[error](kind, key)
    env = {"PATH": "/usr/bin:/bin"}
    if given_in == "file":
        sources = sources.replace('"from the environment"', f'"{value}"')
    else:
        env[f"NFNET_SOURCES__0__{key.upper()}"] = value
    config = tmp_path / "c.toml"
    config.write_text(f'[model]\npath = "{SHAPES_MODEL}"\n{sources}')
    result = subprocess.run([sys.executable, "-m", "daemon", "--config", str(config)], cwd=REPO, capture_output=True,
                            text=True, timeout=60, env=env)
    assert_clean_error(result, EXIT_CONFIG)
    assert_no_password(result.stdout + result.stderr, masked=error != "bad value in another key")



def failing_sources(tmp_path: Path, path: str) -> str:
    """A file that ends, and live sources with a password in their URL that give up at once (door's URL
    comes from the environment; yard's and cam's end in ``path``). GStreamer is left out: OpenCV's wheels
    lack it, and a daemon with a GStreamer source does not start (its pipeline is in the errors above)."""
    reconnect = {"reconnect": {"base_s": 0.2, "max_attempts": 1}}
    return (file_source("lobby", tmp_path / "lobby.mp4", 8)
            + source_table("door", type="stream", url="rtsp://set-by-the-environment/", open_timeout_s=2.0,
                           **reconnect)
            + source_table("yard", type="stream", url=HOST + path, open_timeout_s=2.0, **reconnect)
            + source_table("cam", type="camera", device=HOST + path, **reconnect))


def all_failed(body: dict) -> bool:
    streams = body["streams"]
    return body["pipeline"] == "running" and all(streams.get(s, {}).get("state") == "failed"
                                                 for s in ("door", "yard", "cam"))


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_running_daemon_never_shows_a_password(tmp_path: Path, daemon_process, log_format: str) -> None:
    """In its logs (a reload that restarts streams whose URLs changed), its statuses and /readyz."""
    zmq_port, port = free_port(), free_port()
    text = daemon_config(SHAPES_MODEL, failing_sources(tmp_path, "/live"), zmq_port, port, exit_when_done=False,
                         engine='type = "onnxruntime"')
    env = {"NFNET_SOURCES__1__URL": URL, "NFNET_LOGGING__FORMAT": log_format}
    with closing(Subscriber(f"tcp://127.0.0.1:{zmq_port}")) as subscriber:
        daemon = daemon_process(text, env=env).start()
        answers = poll(port, "/readyz", lambda status, body: all_failed(body), timeout_s=60)
        daemon.config.write_text(text.replace(failing_sources(tmp_path, "/live"), failing_sources(tmp_path, "/new")))
        daemon.signal(signal.SIGHUP)
        daemon.wait_for_log("configuration reloaded")
        subscriber.receive_until(lambda m: sum(s["state"] == "failed" for s in subscriber.statuses) == 5, 60)
        answers += poll(port, "/readyz", lambda status, body: all_failed(body), timeout_s=60)
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(30) == 0, daemon.stderr
    readyz = json.dumps([body for _, body in answers])
    statuses = json.dumps(subscriber.statuses)
    assert "sources[yard] restarted: url: 'rtsp://admin:***@" in daemon.stderr, daemon.stderr
    assert "sources[cam] restarted: device: 'rtsp://admin:***@" in daemon.stderr
    for shown in (daemon.stderr, readyz, statuses):
        assert_no_password(shown)
    assert_no_password(daemon.stdout, masked=False)


def hostile_http_clients(port: int) -> list[socket.socket]:
    """Clients that idle, send half a request, or go away in the middle of an answer; the ones still open."""
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(5)]
    half_sent = []
    for partial in (b"GET /metr", b"GET /metrics HTTP/1.1\r\nHost: x\r\n", b"GET /readyz HTTP/1.1\r\nContent-"):
        client = socket.create_connection(("127.0.0.1", port))
        client.sendall(partial)
        half_sent.append(client)
    for path in (b"/metrics", b"/readyz", b"/healthz", b"/nowhere"):
        client = socket.create_connection(("127.0.0.1", port))
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close: a reset
        client.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        client.recv(10)
        client.close()
    return idle + half_sent


def test_json_logs_stay_json_whatever_http_clients_do(tmp_path: Path, daemon_process) -> None:
    zmq_port, port = free_port(), free_port()
    config = daemon_config(SHAPES_MODEL, file_source("cam", tmp_path / "cam.mp4", 8), zmq_port, port,
                           exit_when_done=False, engine='type = "onnxruntime"')
    with closing(Subscriber(f"tcp://127.0.0.1:{zmq_port}")):
        daemon = daemon_process(config, env={"NFNET_LOGGING__FORMAT": "json"}).start()
        daemon.wait_for_log("staying up until stopped")
        clients = hostile_http_clients(port)
        time.sleep(REQUEST_TIMEOUT_S + 1.5)  # the server drops the idle and half-sent ones
        for client in clients:
            client.close()
        poll(port, "/healthz", lambda status, body: status == 200, timeout_s=15)
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(30) == 0, daemon.stderr
    lines = daemon.stderr.splitlines()
    not_json = [line for line in lines if not line.startswith("{") or not isinstance(json.loads(line), dict)]
    assert not not_json, "\n".join(not_json)


def test_an_app_error_goes_to_the_log_not_to_stderr(caplog: pytest.LogCaptureFixture,
                                                    capfd: pytest.CaptureFixture[str]) -> None:
    def broken() -> Readiness:
        raise RuntimeError("a bug in readiness")

    server = MetricsServer("127.0.0.1", 0, CollectorRegistry(), broken)
    try:
        with caplog.at_level(logging.ERROR, logger="daemon.http"):
            status, _ = get(server.port, "/readyz")
    finally:
        server.close()
    assert status == 500
    assert capfd.readouterr().err == ""
    assert "RuntimeError: a bug in readiness" in caplog.text


def run_tool(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", f"tools.{tool}", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=60)


TOOL_ERRORS = {  # name: (tool, arguments, the start of its error line)
    "bind port": ("forward", ["--connect", "tcp://127.0.0.1:5555", "--bind", "tcp://*:99999"],
                  "argument --bind: tcp://*:99999: port 99999 is not in 1-65535"),
    "send_hwm too big": ("forward", ["--connect", "tcp://127.0.0.1:5555", "--send-hwm", "99999999999"],
                         "argument --send-hwm: 99999999999: Input should be less than or equal to 10000000"),
    "send_hwm 0": ("forward", ["--connect", "tcp://127.0.0.1:5555", "--send-hwm", "0"],
                   "argument --send-hwm: 0: Input should be greater than or equal to 1"),
    "connect to a wildcard": ("forward", ["--connect", "tcp://127.0.0.1:*"],
                              "argument --connect: tcp://127.0.0.1:*: a wildcard (*) can be bound, not connected to"),
    "no scheme": ("forward", ["--connect", "localhost:5555"],
                  "argument --connect: localhost:5555: expected tcp://HOST:PORT"),
    "subscribe port": ("subscribe", ["--endpoint", "tcp://127.0.0.1:99999"],
                       "argument --endpoint: tcp://127.0.0.1:99999: port 99999 is not in 1-65535"),
    "subscribe no port": ("subscribe", ["--endpoint", "tcp://127.0.0.1"],
                          "argument --endpoint: tcp://127.0.0.1: expected tcp://HOST:PORT"),
}


@pytest.mark.parametrize(("tool", "args", "error"), TOOL_ERRORS.values(), ids=TOOL_ERRORS.keys())
def test_the_tools_check_endpoints_and_bounds_as_the_daemon_does(tool: str, args: list[str], error: str) -> None:
    result = run_tool(tool, *args)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith(f"nfnet-{tool}: error:")]
    assert len(errors) == 1 and errors[0].startswith(f"nfnet-{tool}: error: {error}"), result.stderr


def test_sighup_never_cuts_a_forwarders_subscribers_off(tmp_path: Path, daemon_process) -> None:
    frames = 300
    config, zmq_port = long_file_config(tmp_path, frames)
    bind = f"tcp://127.0.0.1:{free_port()}"
    forward_err = tmp_path / "forward.txt"
    with open(forward_err, "wb") as err:
        forwarder = subprocess.Popen([sys.executable, "-m", "tools.forward", "--connect",
                                      f"tcp://127.0.0.1:{zmq_port}", "--bind", bind], cwd=REPO, stderr=err)
    done = threading.Event()

    def hammer() -> None:
        while not done.wait(0.005) and forwarder.poll() is None:
            forwarder.send_signal(signal.SIGHUP)

    thread = threading.Thread(target=hammer)
    try:
        deadline = time.monotonic() + 30
        while "forwarding" not in forward_err.read_text():
            assert forwarder.poll() is None and time.monotonic() < deadline, forward_err.read_text()
            time.sleep(0.05)
        thread.start()
        with closing(Subscriber(bind)) as subscriber:
            daemon = daemon_process(config).start()
            subscriber.receive_until(lambda m: forwarder.poll() is not None
                                     or any(s["state"] == "ended" for s in subscriber.statuses), 120)
            assert forwarder.poll() is None, f"the forwarder died: {forwarder.returncode}"
            assert daemon.wait(30) == 0, daemon.stderr
        done.set()
        thread.join(10)
        forwarder.send_signal(signal.SIGTERM)
        assert forwarder.wait(30) == 0
    finally:
        done.set()
        forwarder.kill()
    assert [m["seq"] for _, m in subscriber.labels] == list(range(frames))
    assert "nfnet-forward: SIGHUP ignored" in forward_err.read_text()

"""CURVE on the label stream, with a real daemon and real sockets: only subscribers whose public key the
daemon lists receive anything (all of it); a key that is not listed, or no CURVE at all, gets nothing;
the daemon refuses to start on a key that others could read, with one clear error line."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

from tests.conftest import REPO, SHAPES_MODEL, daemon_config, free_port, solid_frames, write_video
from tests.live_servers import MjpegServer, shapes_camera
from tests.subscriber import Subscriber
from tests.test_daemon_errors import EXIT_CONFIG, EXIT_STARTUP, assert_clean_error, run_daemon
from tools.keys import create_key_pair

COLOURS = {"red": (230, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 230)}
LABELS = [name for name in COLOURS for _ in range(8)] * 2
# Relative to the daemon's config file, as a user would write them.
CURVE_TABLE = """
[publish.zmq.curve]
server_secret_key = "keys/server.key_secret"
authorized_keys_dir = "keys/authorized"
"""
HANDSHAKE_FAILED = zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL \
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL


@dataclass
class Keys:
    server_public: Path
    server_secret: Path
    authorized: Path
    viewer_secret: Path  # listed in authorized/
    intruder_secret: Path  # a valid key pair, not listed


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    server_public, server_secret = create_key_pair(tmp_path / "keys", "server")
    viewer_public, viewer_secret = create_key_pair(tmp_path / "viewer", "viewer")
    _, intruder_secret = create_key_pair(tmp_path / "intruder", "intruder")
    authorized = tmp_path / "keys" / "authorized"
    authorized.mkdir(mode=0o755)
    shutil.copy(viewer_public, authorized)
    return Keys(server_public, server_secret, authorized, viewer_secret, intruder_secret)


@pytest.fixture
def video(tmp_path: Path) -> Path:
    return write_video(tmp_path / "v.mp4", solid_frames([COLOURS[name] for name in LABELS]))


def curve_config(model: Path, video: Path, zmq_port: int, exit_when_done: bool) -> str:
    return daemon_config(model, {"cam1": video}, zmq_port, 0, exit_when_done=exit_when_done) + CURVE_TABLE


@contextmanager
def handshake_failures(subscriber: Subscriber) -> Iterator[zmq.Socket]:
    """A monitor of ``subscriber``'s failed handshakes (set up before the daemon binds, so none is missed)."""
    monitor = subscriber.socket.get_monitor_socket(HANDSHAKE_FAILED)
    try:
        yield monitor
    finally:
        subscriber.socket.disable_monitor()
        monitor.close()


def test_only_listed_subscribers_receive_labels(tmp_path: Path, keys: Keys, video: Path, colour_model_path: Path,
                                                daemon_process) -> None:
    zmq_port = free_port()
    endpoint = f"tcp://127.0.0.1:{zmq_port}"
    viewer = Subscriber(endpoint, curve=(keys.viewer_secret, keys.server_public))
    intruder = Subscriber(endpoint, curve=(keys.intruder_secret, keys.server_public))
    plain = Subscriber(endpoint)
    try:
        with handshake_failures(intruder) as intruder_failures, handshake_failures(plain) as plain_failures:
            daemon = daemon_process(curve_config(colour_model_path, video, zmq_port, exit_when_done=False)).start()
            labels = [message for _, message in viewer.receive_labels(len(LABELS), timeout_s=60)]
            daemon.wait_for_log("all streams ended")
            # Both were refused at the handshake, and then got nothing although every label was published.
            assert intruder_failures.poll(10_000) and plain_failures.poll(10_000)
            intruder_failure = recv_monitor_message(intruder_failures)
            plain_failure = recv_monitor_message(plain_failures)
            for refused in (intruder, plain):
                refused.receive_until(lambda messages: False, timeout_s=10, quiet_s=0.5)
    finally:
        for subscriber in (viewer, intruder, plain):
            subscriber.close()
    daemon.signal()
    assert daemon.wait() == 0, daemon.stderr

    assert [m["seq"] for m in labels] == list(range(len(LABELS)))
    assert [m["frame_index"] for m in labels] == list(range(len(LABELS)))
    assert [m["top_k"][0]["label"] for m in labels] == LABELS
    assert intruder.messages == [] and plain.messages == []
    assert intruder_failure["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH  # the daemon's ZAP handler said no
    assert plain_failure["event"] in (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL, zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL)
    assert f"CURVE on: 1 subscriber key(s) authorised from {keys.authorized}" in daemon.stderr


def test_subscriber_tool_with_and_without_a_listed_key(tmp_path: Path, keys: Keys, video: Path,
                                                       colour_model_path: Path, daemon_process) -> None:
    zmq_port = free_port()

    def tool(*curve: str | Path) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-m", "tools.subscribe", "--endpoint", f"tcp://127.0.0.1:{zmq_port}",
                                 "--json", "--count", str(len(LABELS)), *map(str, curve)],
                                cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    tools = {"viewer": tool("--client-key", keys.viewer_secret, "--server-key", keys.server_public),
             "intruder": tool("--client-key", keys.intruder_secret, "--server-key", keys.server_public),
             "plain": tool()}
    try:
        # The daemon stays up until every tool is done: a refused tool may need a retry to learn why.
        daemon = daemon_process(curve_config(colour_model_path, video, zmq_port, exit_when_done=False)).start()
        results = {name: process.communicate(timeout=60) for name, process in tools.items()}
    finally:
        for process in tools.values():
            process.kill()
    daemon.signal()
    assert daemon.wait() == 0, daemon.stderr

    out, err = results["viewer"]
    assert tools["viewer"].returncode == 0, err
    printed = [line for line in out.splitlines() if '"type":"label"' in line]
    assert len(printed) == len(LABELS) and "GAP" not in err
    assert tools["intruder"].returncode == 1
    assert "nfnet-subscribe: error: the daemon refused this subscriber's key" in results["intruder"][1]
    assert tools["plain"].returncode == 1
    assert "nfnet-subscribe: error: CURVE on one side only" in results["plain"][1]
    assert results["intruder"][0] == results["plain"][0] == ""


@pytest.mark.parametrize("loose, mode, problem", [
    ("server_secret", 0o640, "secret key file {} has mode 0640: group and others must have no access"),
    ("authorized", 0o777, "authorized keys directory {} has mode 0777: it must not be writable"),
])
def test_keys_that_others_could_read_or_change_stop_the_daemon(tmp_path: Path, keys: Keys, video: Path,
                                                               colour_model_path: Path, loose: str, mode: int,
                                                               problem: str) -> None:
    path: Path = getattr(keys, loose)
    path.chmod(mode)
    config = tmp_path / "daemon.toml"
    config.write_text(curve_config(colour_model_path, video, free_port(), exit_when_done=True))
    assert_clean_error(run_daemon(config), EXIT_STARTUP, problem.format(path))


def test_curve_on_an_inproc_endpoint_is_a_configuration_error(tmp_path: Path, keys: Keys, video: Path,
                                                              colour_model_path: Path) -> None:
    config = tmp_path / "daemon.toml"
    text = curve_config(colour_model_path, video, 5555, exit_when_done=True)
    config.write_text(text.replace("tcp://127.0.0.1:5555", "inproc://labels"))
    assert_clean_error(run_daemon(config), EXIT_CONFIG, "CURVE cannot protect an inproc:// endpoint")


def test_subscriber_tool_refuses_a_secret_key_others_can_read(keys: Keys) -> None:
    keys.viewer_secret.chmod(0o644)
    result = subprocess.run([sys.executable, "-m", "tools.subscribe", "--endpoint", f"tcp://127.0.0.1:{free_port()}",
                             "--client-key", str(keys.viewer_secret), "--server-key", str(keys.server_public)],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert f"nfnet-subscribe: error: secret key file {keys.viewer_secret} has mode 0644" in result.stderr


def test_sighup_admits_a_newly_listed_key(tmp_path: Path, keys: Keys, daemon_process) -> None:
    """A subscriber's key copied into the authorised directory is admitted after a SIGHUP, without a restart."""
    server = MjpegServer(shapes_camera("red circle"), fps=25.0).start()
    zmq_port = free_port()
    endpoint = f"tcp://127.0.0.1:{zmq_port}"
    sources = f'\n[[sources]]\nid = "yard"\ntype = "stream"\nurl = "{server.url}"\n'
    viewer = Subscriber(endpoint, curve=(keys.viewer_secret, keys.server_public))
    newcomer: Subscriber | None = None
    try:
        daemon = daemon_process(daemon_config(SHAPES_MODEL, sources, zmq_port, 0,
                                              exit_when_done=False, engine='type = "onnxruntime"')
                                + CURVE_TABLE).start()
        viewer.receive_labels(3, timeout_s=60)
        refused = Subscriber(endpoint, curve=(keys.intruder_secret, keys.server_public))
        with handshake_failures(refused) as failures:
            assert failures.poll(10_000), "not listed yet: refused"
        refused.close()

        shutil.copy(keys.intruder_secret.with_suffix(".key"), keys.authorized)
        daemon.signal(signal.SIGHUP)
        daemon.wait_for_log(f"CURVE on: 2 subscriber key(s) authorised from {keys.authorized}")
        newcomer = Subscriber(endpoint, curve=(keys.intruder_secret, keys.server_public))
        assert len(newcomer.receive_labels(3, timeout_s=30)) >= 3
        daemon.signal()
        assert daemon.wait(30) == 0, daemon.stderr
    finally:
        for subscriber in (viewer, newcomer):
            if subscriber is not None:
                subscriber.close()
        server.stop()


def test_check_config_reads_the_keys_with_their_checks(tmp_path: Path, keys: Keys, video: Path,
                                                       colour_model_path: Path) -> None:
    config = tmp_path / "daemon.toml"
    config.write_text(curve_config(colour_model_path, video, free_port(), exit_when_done=True))
    command = [sys.executable, "-m", "daemon", "--config", str(config), "--check-config"]
    good = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert good.returncode == 0, good.stderr
    assert "CURVE on, 1 subscriber key(s) authorised" in good.stdout
    keys.server_secret.chmod(0o644)
    loose = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert loose.returncode == EXIT_STARTUP and f"secret key file {keys.server_secret} has mode 0644" in loose.stderr

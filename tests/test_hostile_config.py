"""Hostile input at start-up and on SIGHUP: a bad file is a configuration error and a running daemon goes on
untouched; a daemon that fails never leaves a stream looking complete; SIGHUP never kills the process."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from contextlib import closing
from pathlib import Path

import pytest

from tests.conftest import REPO, SHAPES_MODEL, DaemonProcess, daemon_config, free_port
from tests.source_tables import file_source
from tests.subscriber import Subscriber
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

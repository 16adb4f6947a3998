"""Shared fixtures: models, video files, free ports, and a daemon run as a real subprocess."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pytest

import tools.video_files
from tests.onnx_models import colour_model

REPO = Path(__file__).resolve().parent.parent
ASSETS = REPO / "tests" / "assets"
SHAPES_MODEL = ASSETS / "shapes_nfnet.onnx"


def write_video(path: Path, frames_rgb: Iterable[np.ndarray], fps: float = 25.0) -> Path:
    """Encode RGB frames into a real video file (mp4v in MP4, through OpenCV's FFmpeg)."""
    tools.video_files.write_video(path, frames_rgb, fps)
    return path


def solid_frames(colours_rgb: list[tuple[int, int, int]], size_hw: tuple[int, int] = (120, 160),
                 seed: int = 0) -> Iterator[np.ndarray]:
    """Frames of one colour each, with mild noise."""
    rng = np.random.default_rng(seed)
    for colour in colours_rgb:
        frame = np.empty((*size_hw, 3), dtype=np.int16)
        frame[:] = colour
        frame += rng.integers(-12, 13, size=frame.shape, dtype=np.int16)
        yield np.clip(frame, 0, 255).astype(np.uint8)


def daemon_config(model: Path, videos: dict[str, Path] | str, zmq_port: int, metrics_port: int,
                  exit_when_done: bool, batch_size: int = 4, engine: str = "", top_k: int = 3,
                  instance: str = "test-box", host: str = "127.0.0.1", subscriptions: int = 1) -> str:
    """A daemon config for tests that awaits ``subscriptions`` before starting. ``videos``: file sources by
    stream id, or the ``[[sources]]`` tables as TOML; ``host``: the ZeroMQ endpoint's (``[::1]`` for IPv6)."""
    sources = videos if isinstance(videos, str) else \
        "".join(f'\n[[sources]]\nid = "{sid}"\npath = "{path}"\n' for sid, path in videos.items())
    return f"""
[model]
path = "{model}"

[engine]
batch_size = {batch_size}
{engine}

[pipeline]
exit_when_sources_end = {str(exit_when_done).lower()}
top_k = {top_k}
{sources}
[publish]
instance = "{instance}"

[publish.zmq]
endpoint = "tcp://{host}:{zmq_port}"
wait_for_subscribers = {subscriptions}

[metrics]
port = {metrics_port}
"""


@pytest.fixture(autouse=True)
def _simulated_device_environment() -> Iterator[None]:
    """``DEVICE.reset`` exports the simulated hardware as ``HIP_DOUBLE_*`` for child processes: restore
    those variables after each test, so that one test's device never reaches a later test's daemon."""
    saved = {name: value for name, value in os.environ.items() if name.startswith("HIP_DOUBLE_")}
    yield
    for name in [name for name in os.environ if name.startswith("HIP_DOUBLE_")]:
        del os.environ[name]
    os.environ.update(saved)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def colour_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return colour_model(tmp_path_factory.mktemp("models") / "colour.onnx")


class DaemonProcess:
    """``python -m daemon`` in a subprocess, with its stdout/stderr in files for the assertions."""

    def __init__(self, workdir: Path, config_text: str, env: dict[str, str] | None = None) -> None:
        self.env = env or {}
        self.config = workdir / "daemon.toml"
        self.config.write_text(config_text)
        self.stdout_path, self.stderr_path = workdir / "stdout.txt", workdir / "stderr.txt"
        self.process: subprocess.Popen | None = None

    def start(self) -> DaemonProcess:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.process = subprocess.Popen([sys.executable, "-m", "daemon", "--config", str(self.config)],
                                            cwd=REPO, stdout=out, stderr=err, env=env)
        return self

    def wait_for_log(self, text: str, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if text in self.stderr:
                return
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"daemon exited ({self.process.returncode}) before {text!r}:\n{self.stderr}")
            time.sleep(0.05)
        raise AssertionError(f"no {text!r} within {timeout_s}s:\n{self.stderr}")

    def signal(self, signum: int = signal.SIGTERM) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def wait(self, timeout_s: float = 60.0) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout_s)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")


@pytest.fixture
def daemon_process(tmp_path: Path) -> Iterator[type[DaemonProcess]]:
    """A factory of daemon subprocesses that are all killed at the end of the test."""
    started: list[DaemonProcess] = []

    def make(config_text: str, env: dict[str, str] | None = None, name: str = "") -> DaemonProcess:
        """``name``: a folder of its own for the daemon's config and output, when a test runs several."""
        workdir = tmp_path / name
        workdir.mkdir(exist_ok=True)
        proc = DaemonProcess(workdir, config_text, env)
        started.append(proc)
        return proc

    yield make  # type: ignore[misc]
    for proc in started:
        proc.kill()

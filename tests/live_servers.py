"""Real network video servers on loopback that a test can kill mid-stream and start again on the same
port: MJPEG over HTTP (multipart/x-mixed-replace, as IP cameras serve; in this process) and RTSP
(Debian's gst-rtsp-server, in a subprocess of the system python3: ``tests/rtsp_server.py``)."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np

from tools.synthetic_shapes import LABELS, render_frame

BOUNDARY = b"frame"


def shapes_camera(label: str, size_hw: tuple[int, int] = (120, 160), seed: int = 0) -> Callable[[int], np.ndarray]:
    """``frame(n)`` for a server: varied frames that all show ``label`` (one of the shapes model's classes)."""
    rng = np.random.default_rng(seed)
    return lambda n: render_frame(LABELS.index(label), rng, *size_hw)


class MjpegServer:
    def __init__(self, frame: Callable[[int], np.ndarray], fps: float = 25.0, port: int = 0) -> None:
        """``frame(n)`` gives the n-th RGB frame served (n counts across restarts)."""
        self.frame, self.fps, self.port = frame, fps, port
        self.served = 0
        self._server: ThreadingHTTPServer | None = None
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stopped = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/stream.mjpg"

    def start(self) -> MjpegServer:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with owner._lock:
                    owner._connections.add(self.connection)
                self.send_response(200)
                self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY.decode()}")
                self.end_headers()
                try:
                    while not owner._stopped.is_set():
                        ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(owner.frame(owner.served), cv2.COLOR_RGB2BGR))
                        assert ok
                        self.wfile.write(b"--" + BOUNDARY + b"\r\nContent-Type: image/jpeg\r\nContent-Length: "
                                         + str(len(jpeg)).encode() + b"\r\n\r\n" + jpeg.tobytes() + b"\r\n")
                        owner.served += 1
                        time.sleep(1.0 / owner.fps)
                except OSError:
                    pass  # the client went away, or the test killed the server

            def log_message(self, format: str, *args: object) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self._stopped.clear()
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        """Kill it: stop accepting and cut every open connection."""
        self._stopped.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with self._lock:
            for connection in self._connections:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)
            self._connections.clear()


SYSTEM_PYTHON = "/usr/bin/python3"
RTSP_SCRIPT = Path(__file__).with_name("rtsp_server.py")


def rtsp_unavailable() -> str | None:
    """Why the RTSP server cannot run here (None if it can); .ci/run installs what it needs."""
    probe = ("import gi; gi.require_version('GstRtspServer', '1.0'); from gi.repository import Gst, GstRtspServer;"
             "Gst.init(None); assert Gst.ElementFactory.find('rtpjpegpay') and Gst.ElementFactory.find('jpegenc')")
    if not shutil.which(SYSTEM_PYTHON):
        return f"{SYSTEM_PYTHON} not found"
    result = subprocess.run([SYSTEM_PYTHON, "-c", probe], capture_output=True, text=True, timeout=60)
    return None if result.returncode == 0 else \
        "gst-rtsp-server is not installed (bash tests/install-system-deps.sh): " + result.stderr.strip()[-200:]


class RtspServer:
    """``rtsp://127.0.0.1:PORT/cam`` serving ``frames`` (RGB) in a loop at 25 frames/s."""

    def __init__(self, frame: Callable[[int], np.ndarray], workdir: Path, frames: int = 50) -> None:
        self.frame, self.workdir, self.frames = frame, workdir, frames
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self._process: subprocess.Popen | None = None
        self._generation = 0

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}/cam"

    def start(self) -> RtspServer:
        self._generation += 1
        directory = self.workdir / f"frames-{self._generation}"
        directory.mkdir(parents=True)
        for n in range(self.frames):
            cv2.imwrite(str(directory / f"{n:05d}.jpg"), cv2.cvtColor(self.frame(n), cv2.COLOR_RGB2BGR))
        self._process = subprocess.Popen([SYSTEM_PYTHON, str(RTSP_SCRIPT), str(self.port), str(directory)],
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self._process.stdout is not None
        line = self._process.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"RTSP server did not start: {line} {self._process.stderr.read()}")  # type: ignore[union-attr]
        return self

    def stop(self) -> None:
        """Kill it (SIGKILL: no goodbye to the clients)."""
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            with contextlib.suppress(OSError):
                self._process.stdout.close()  # type: ignore[union-attr]
                self._process.stderr.close()  # type: ignore[union-attr]
            self._process = None

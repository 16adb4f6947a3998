"""A real MJPEG-over-HTTP server on loopback (multipart/x-mixed-replace, as IP cameras serve), which a
test can kill mid-stream — listening socket and open connections — and start again on the same port."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import numpy as np

BOUNDARY = b"frame"


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

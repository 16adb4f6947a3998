"""The daemon's HTTP endpoint: ``/metrics`` for Prometheus, ``/healthz`` and ``/readyz`` for supervisors.

A small WSGI app on the standard library's server, one thread per request (a slow scrape does not hold up
a health check); ``/metrics`` is prometheus_client's own WSGI app over the daemon's private registry.
Nothing of the server's goes to stderr directly: socketserver's and wsgiref's error reports (a client that
times out or goes away, an app that raises) go to the daemon's log, so that JSON logs stay JSON.
"""

from __future__ import annotations

import io
import json
import logging
import socket
import sys
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer
from wsgiref.types import StartResponse, WSGIEnvironment

from prometheus_client import CollectorRegistry, make_wsgi_app

from daemon.health import Readiness

log = logging.getLogger(__name__)

ROUTES = ("/metrics", "/healthz", "/readyz")
REQUEST_TIMEOUT_S = 5.0  # a client that sends nothing (or reads nothing) for this long is dropped
MAX_CONNECTIONS = 32  # served at once; Prometheus and a health checker need a few


class HttpEndpointError(RuntimeError):
    """The endpoint cannot listen where it was configured to."""


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    # close() waits for requests in flight, so that no answer is cut off when the daemon exits; each
    # request is bounded by the handler's timeout, so a client that never sends its request cannot hold it,
    # and at most MAX_CONNECTIONS are served at once (a thread each): more are closed at once, so that no
    # client can exhaust the process's threads.
    daemon_threads = False
    block_on_close = True

    def __init__(self, host: str, port: int) -> None:
        # IPv4 or IPv6, whichever the configured host is.
        self.address_family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__((host, port), _QuietHandler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            log.debug("refusing %s: %d connections are being served", client_address, MAX_CONNECTIONS)
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A request that failed outside the app, to the log (socketserver prints a traceback to stderr). A
        client that sent nothing in time, or went away, is routine: debug."""
        error = sys.exc_info()[1]
        if isinstance(error, OSError):
            log.debug("HTTP client %s: %s: %s", client_address, type(error).__name__, error)
        else:
            log.error("HTTP request from %s failed", client_address, exc_info=True)


class _ErrorLog(io.TextIOBase):
    """wsgiref's error stream (it writes an app's traceback there, then flushes): one error line in the log."""

    def __init__(self) -> None:
        self._parts: list[str] = []

    def write(self, text: str) -> int:
        self._parts.append(text)
        return len(text)

    def flush(self) -> None:
        text, self._parts = "".join(self._parts).rstrip(), []
        if text:
            log.error("HTTP: %s", text)


class _QuietHandler(WSGIRequestHandler):
    """Requests go to the debug log, not to stderr (a scrape every few seconds is not news)."""

    timeout = REQUEST_TIMEOUT_S

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def get_stderr(self) -> _ErrorLog:
        return _ErrorLog()


class StatusApp:
    """The WSGI app: routes by path; GET only (as prometheus_client's own app)."""

    def __init__(self, registry: CollectorRegistry, readiness: Callable[[], Readiness]) -> None:
        self._metrics = make_wsgi_app(registry)
        self._readiness = readiness

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path, method = environ.get("PATH_INFO", "/"), environ["REQUEST_METHOD"]
        if path not in ROUTES:
            return _json(start_response, "404 Not Found", {"error": f"no {path}; try {', '.join(ROUTES)}"})
        if method != "GET":
            return _json(start_response, "405 Method Not Allowed", {"error": f"{method} not allowed"},
                         [("Allow", "GET")])
        if path == "/metrics":
            return self._metrics(environ, start_response)
        if path == "/healthz":
            return _json(start_response, "200 OK", {"status": "ok"})
        readiness = self._readiness()
        return _json(start_response, "200 OK" if readiness.ready else "503 Service Unavailable", readiness.body)


def _json(start_response: StartResponse, status: str, body: dict[str, Any],
          headers: list[tuple[str, str]] | None = None) -> list[bytes]:
    payload = json.dumps(body).encode() + b"\n"
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(payload))),
                            ("Cache-Control", "no-store"), *(headers or [])])
    return [payload]


class MetricsServer:
    """Serves :class:`StatusApp` on a background thread until :meth:`close`."""

    def __init__(self, host: str, port: int, registry: CollectorRegistry, readiness: Callable[[], Readiness]) -> None:
        try:
            self._server = _ThreadingServer(host, port)
        except OSError as exc:
            raise HttpEndpointError(f"cannot serve metrics on {host}:{port}: {exc.strerror}") from exc
        self._server.set_app(StatusApp(registry, readiness))
        self.host, self.port = self._server.server_address[:2]
        self._thread = threading.Thread(target=self._server.serve_forever, name="http", daemon=True)
        self._thread.start()
        log.info("metrics at http://%s:%d/metrics, health at /healthz and /readyz", self.host, self.port)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


__all__ = ["HttpEndpointError", "MetricsServer", "StatusApp"]

"""The HTTP endpoint Prometheus scrapes."""

from __future__ import annotations

import logging
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server

log = logging.getLogger(__name__)


class HttpEndpointError(RuntimeError):
    """The metrics endpoint cannot listen where it was configured to."""


class MetricsServer:
    """Serves ``/metrics`` from a private registry on a background thread."""

    def __init__(self, host: str, port: int, registry: CollectorRegistry) -> None:
        try:
            self._server: WSGIServer
            self._server, self._thread = start_http_server(port, addr=host, registry=registry)
        except OSError as exc:
            raise HttpEndpointError(f"cannot serve metrics on {host}:{port}: {exc.strerror}") from exc
        self.host, self.port = self._server.server_address[:2]
        log.info("metrics at http://%s:%d/metrics", self.host, self.port)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


__all__ = ["HttpEndpointError", "MetricsServer"]

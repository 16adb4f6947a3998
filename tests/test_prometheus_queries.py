"""A real Prometheus server, with the repository's scrape config and alert rules, scraping a real daemon every
second: one run, observed at three moments (before any frame, after the streams came to an end, after the
daemon stopped), then checked point by point.

- Latency: Prometheus' p90 of the end-to-end histogram is what histogram_quantile() makes of the very
  latencies the label messages carry, and within a bucket (28 %) of the messages' own p90.
- Stream ends: every stream's ended and failed counts exist at 0 before anything ends, so the dashboard's
  increase() shows an end; a file that ended and a live stream that failed count apart.
- A stopped daemon: up is 0, the NfnetStreamDown alert's expression fires (the rule is pending), and
  "Streams not running" has no data (which the dashboard shows as a problem) instead of a green 0.
- No ``_created`` series reach Prometheus; the engine's build time is there under ONNX Runtime.
- The daemon listens on its default port, 9612, where the shipped scrape job finds it (unless something
  else holds that port on the test machine: then the run takes a free port and that check is skipped).
"""

from __future__ import annotations

import json
import re
import signal
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import yaml

from daemon.config import MetricsConfig
from pipelines.runtime.metrics import LATENCY_BUCKETS
from tests.conftest import SHAPES_MODEL, DaemonProcess, daemon_config, free_port
from tests.prometheus_server import ALERT_RULES, DASHBOARD, JOB, PrometheusServer, Sample, by_labels, needs_prometheus
from tests.source_tables import dead_stream, file_source
from tests.subscriber import Subscriber, poll

FRAMES = 240
# Grafana's variables as the dashboard's defaults fill them in: this job, every instance and stream, and a
# rate window (Grafana's $__rate_interval) that covers the whole short run.
VARIABLES = {"$job": JOB, "$instance": ".*", "$stream": ".*", "$__rate_interval": "1m"}
ENDS = "nfnet_stream_streams_ended_total"
LOBBY_P90 = 'histogram_quantile(0.9, sum by (le) (nfnet_stream_end_to_end_latency_seconds_bucket{stream="lobby"}))'

pytestmark = needs_prometheus


@dataclass
class Observed:
    metrics_port: int
    targets: dict[str, str]  # scrape URL → health, while the daemon runs
    ends_before: dict[tuple[str, ...], float]  # (stream, state) → value, before any frame was read
    ends_after: dict[tuple[str, ...], float]
    ends_increase: dict[tuple[str, ...], float]  # the dashboard's "Stream events" query, after the ends
    latencies_s: list[float]  # lobby's latency_ms.total of every label message, in seconds
    prometheus_p90_s: float
    created_series: list[Sample]
    build_seconds: dict[tuple[str, ...], float]
    up_after_stop: list[Sample]  # the dashboard's "Daemon" query
    down_alert_after_stop: list[Sample]  # NfnetStreamDown's expression
    alerts_after_stop: list[dict[str, Any]]
    not_running_while_up: list[Sample]  # the dashboard's "Streams not running" query
    not_running_after_stop: list[Sample]


def panel_queries(title: str) -> list[str]:
    """The queries of the dashboard panel ``title``, with the variables filled in."""
    panel = next(panel for panel in json.loads(DASHBOARD.read_text())["panels"] if panel["title"] == title)
    return [re.sub(r"\$\w+", lambda m: VARIABLES[m[0]], target["expr"]) for target in panel["targets"]]


def default_port_or_free() -> int:
    port = MetricsConfig().port
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the daemon's server: TIME_WAIT is no owner
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return free_port()
    return port


def alert_expr(name: str) -> str:
    rules = yaml.safe_load(ALERT_RULES.read_text())
    return next(rule["expr"] for group in rules["groups"] for rule in group["rules"] if rule.get("alert") == name)


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Observed]:
    tmp = tmp_path_factory.mktemp("prometheus")
    zmq_port, metrics_port = free_port(), default_port_or_free()
    sources = file_source("lobby", tmp / "lobby.mp4", FRAMES) + dead_stream("gate", max_attempts=2)
    daemon = DaemonProcess(tmp, daemon_config(SHAPES_MODEL, sources, zmq_port, metrics_port, exit_when_done=False))
    prometheus = PrometheusServer(tmp, metrics_port)
    subscriber: Subscriber | None = None
    try:
        daemon.start()
        prometheus.start()
        # The daemon waits for its subscriber: nothing has been read, and Prometheus scrapes the start.
        ends_before = by_labels(prometheus.wait_for(ENDS, lambda result: len(result) == 4, timeout_s=30),
                                "stream", "state")
        not_running_while_up = prometheus.query(panel_queries("Streams not running")[0])
        targets = prometheus.targets()
        subscriber = Subscriber(f"tcp://127.0.0.1:{zmq_port}")
        labels = subscriber.receive_labels(FRAMES, timeout_s=60)
        poll(metrics_port, "/readyz", lambda status, body: body["streams"]["lobby"]["state"] == "ended"
             and body["streams"]["gate"]["state"] == "failed", timeout_s=30)
        prometheus.wait_for(f"sum({ENDS}) == 2 and on () nfnet_stream_end_to_end_latency_seconds_count"
                            f'{{stream="lobby"}} == {FRAMES}', lambda result: len(result) == 1, timeout_s=10)
        ends_after = by_labels(prometheus.query(ENDS), "stream", "state")
        ends_increase = by_labels(prometheus.query(panel_queries("Stream events")[1]), "stream", "state")
        (p90,) = prometheus.query(LOBBY_P90)
        created = prometheus.query('{__name__=~"nfnet_stream_.+_created"}')
        build_seconds = by_labels(prometheus.query("nfnet_stream_engine_build_seconds"), "step")

        daemon.signal(signal.SIGTERM)
        assert daemon.wait(30) == 0, daemon.stderr
        (up_query,) = panel_queries("Daemon")
        up_after_stop = prometheus.wait_for(up_query, lambda result: by_labels(result) == {(): 0.0}, timeout_s=10)
        down = alert_expr("NfnetStreamDown")
        prometheus.wait_for("ALERTS", lambda result: any(s["metric"]["alertname"] == "NfnetStreamDown"
                                                         for s in result), timeout_s=10)
        yield Observed(
            metrics_port=metrics_port, targets=targets,
            ends_before=ends_before, ends_after=ends_after, ends_increase=ends_increase,
            latencies_s=[message["latency_ms"]["total"] / 1000.0
                         for topic, message in labels if topic == "label/lobby/"],
            prometheus_p90_s=float(p90["value"][1]), created_series=created, build_seconds=build_seconds,
            up_after_stop=up_after_stop, down_alert_after_stop=prometheus.query(down),
            alerts_after_stop=prometheus.alerts(), not_running_while_up=not_running_while_up,
            not_running_after_stop=prometheus.query(panel_queries("Streams not running")[0]))
    finally:
        if subscriber is not None:
            subscriber.close()
        prometheus.stop()
        daemon.kill()


def histogram_quantile(q: float, values: list[float], bounds: tuple[float, ...]) -> float:
    """Prometheus' histogram_quantile() of ``values`` recorded into buckets with upper ``bounds`` (+Inf after)."""
    cumulative = [sum(value <= bound for value in values) for bound in bounds]
    rank = q * len(values)
    b = next((i for i, count in enumerate(cumulative) if count >= rank), None)
    if b is None:
        return bounds[-1]
    start, below = (bounds[b - 1], cumulative[b - 1]) if b else (0.0, 0)
    return start + (bounds[b] - start) * (rank - below) / (cumulative[b] - below)


def test_prometheus_p90_latency_matches_the_label_messages(observed: Observed) -> None:
    values = observed.latencies_s
    assert len(values) == FRAMES
    # Exactly what histogram_quantile() makes of the messages' latencies: Prometheus saw every frame.
    assert observed.prometheus_p90_s == pytest.approx(histogram_quantile(0.9, values, LATENCY_BUCKETS), rel=1e-9)
    # The messages' own p90 (the smallest latency that 90 % of frames do not exceed) is in the same bucket:
    # the two differ by less than the widest bucket's ratio, 1.28.
    truth = float(np.quantile(values, 0.9, method="inverted_cdf"))
    assert abs(observed.prometheus_p90_s - truth) <= 0.28 * truth, (observed.prometheus_p90_s, truth)


def test_stream_ends_exist_at_zero_and_count_ended_and_failed_apart(observed: Observed) -> None:
    keys = {("lobby", "ended"), ("lobby", "failed"), ("gate", "ended"), ("gate", "failed")}
    assert observed.ends_before == dict.fromkeys(keys, 0.0)
    assert observed.ends_after == {**dict.fromkeys(keys, 0.0), ("lobby", "ended"): 1.0, ("gate", "failed"): 1.0}
    shown = {key for key, value in observed.ends_increase.items() if value > 0}
    assert shown == {("lobby", "ended"), ("gate", "failed")}, observed.ends_increase


def test_a_stopped_daemon_reads_as_down(observed: Observed) -> None:
    assert by_labels(observed.up_after_stop) == {(): 0.0}
    assert [sample["metric"]["job"] for sample in observed.down_alert_after_stop] == [JOB]
    states = {alert["labels"]["alertname"]: alert["state"] for alert in observed.alerts_after_stop}
    assert states.get("NfnetStreamDown") == "pending"  # firing after its 1m "for"
    # While up: a 0 for each state not running; once down: no data, not a 0 (the panel's noValue, in red).
    assert by_labels(observed.not_running_while_up, "state") == {
        ("connecting",): 0.0, ("reconnecting",): 0.0, ("failed",): 0.0}
    assert observed.not_running_after_stop == []


def test_no_created_series_and_the_engine_build_time_reach_prometheus(observed: Observed) -> None:
    assert observed.created_series == []
    assert set(observed.build_seconds) == {("build",), ("warmup",)}
    assert observed.build_seconds[("build",)] > 0, "ONNX Runtime's session takes time to create"


def test_the_shipped_scrape_job_finds_the_daemon_on_its_default_port(observed: Observed) -> None:
    if observed.metrics_port != MetricsConfig().port:
        pytest.skip(f"127.0.0.1:{MetricsConfig().port} is in use on this machine")
    assert observed.targets == {"http://127.0.0.1:9612/metrics": "up"}

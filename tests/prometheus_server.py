"""What Prometheus and Grafana are given (the repository's scrape config, alert rules and dashboard), and a real
Prometheus server (Debian's ``prometheus``) for the tests: it runs that config and those rules against one
daemon on loopback, scraping and evaluating every second, and answers PromQL through its HTTP API until it is
stopped (killed if it does not stop)."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO, free_port

PROMETHEUS = shutil.which("prometheus")
PROMETHEUS_CONFIG = REPO / "configs" / "prometheus" / "nfnet-stream.yml"
ALERT_RULES = REPO / "configs" / "prometheus" / "nfnet-stream-alerts.yml"
DASHBOARD = REPO / "configs" / "grafana" / "nfnet-stream-dashboard.json"
JOB = "nfnet-stream"

needs_prometheus = pytest.mark.skipif(PROMETHEUS is None,
                                      reason="no prometheus server (Debian's prometheus; tests/install-system-deps.sh)")

Sample = dict[str, Any]  # {"metric": {label: value}, "value": [time, "value"]}


class PrometheusServer:
    def __init__(self, workdir: Path, target_port: int) -> None:
        """The shipped config, with the job's target moved to ``127.0.0.1:target_port`` and every interval
        1 s (a fresh server still waits about 5 s for its first scrape: target discovery is throttled)."""
        config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
        config["global"] = {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"}
        config["rule_files"] = [str(ALERT_RULES)]
        job = next(job for job in config["scrape_configs"] if job["job_name"] == JOB)
        job["scrape_interval"] = "1s"
        job["static_configs"] = [{"targets": [f"127.0.0.1:{target_port}"]}]
        self._config = workdir / "prometheus.yml"
        self._config.write_text(yaml.safe_dump(config))
        self._tsdb = workdir / "tsdb"
        self.log_path = workdir / "prometheus.log"
        self.port = free_port()
        self._process: subprocess.Popen | None = None

    def start(self, timeout_s: float = 30.0) -> PrometheusServer:
        assert PROMETHEUS is not None
        with open(self.log_path, "wb") as log:
            self._process = subprocess.Popen(
                [PROMETHEUS, f"--config.file={self._config}", f"--storage.tsdb.path={self._tsdb}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
                stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while not self._ready():
            if self._process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"prometheus not ready: {self.log_path.read_text(errors='replace')}")
            time.sleep(0.1)
        return self

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, ConnectionError):
            return False

    def _api(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as response:
            answer = json.loads(response.read())
        assert answer["status"] == "success", answer
        return answer["data"]

    def query(self, expr: str) -> list[Sample]:
        """An instant query, now."""
        data = self._api("query", query=expr)
        assert data["resultType"] == "vector", data
        return data["result"]

    def wait_for(self, expr: str, done: Callable[[list[Sample]], bool], timeout_s: float) -> list[Sample]:
        """Query ``expr`` every 0.2 s until ``done(result)``; return that result."""
        deadline = time.monotonic() + timeout_s
        while not done(result := self.query(expr)):
            if time.monotonic() > deadline:
                raise AssertionError(f"{expr}: not done within {timeout_s}s; last: {result}")
            time.sleep(0.2)
        return result

    def targets(self) -> dict[str, str]:
        """Each active target's scrape URL and health (up, down, unknown)."""
        return {target["scrapeUrl"]: target["health"] for target in self._api("targets")["activeTargets"]}

    def alerts(self) -> list[dict[str, Any]]:
        """Pending and firing alerts, with their state."""
        return self._api("alerts")["alerts"]

    def stop(self) -> None:
        if self._process is None or self._process.poll() is not None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


def by_labels(result: list[Sample], *labels: str) -> dict[tuple[str, ...], float]:
    """Each sample's value, keyed by the values of ``labels``."""
    return {tuple(sample["metric"].get(label, "") for label in labels): float(sample["value"][1])
            for sample in result}

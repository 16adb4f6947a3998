"""nfnet-bench runs both measurements on the same model and video and reports a ratio."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO


def test_benchmark_reports_engine_and_daemon_rates() -> None:
    result = subprocess.run([sys.executable, "-m", "tools.benchmark", "--frames", "40", "--repeats", "1", "--json"],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["frames"] == 40 and report["batch_size"] == 4
    assert report["engine_fps"] > 0 and report["daemon_fps"] > 0
    assert report["ratio"] == report["daemon_fps"] / report["engine_fps"]


def test_latency_benchmark_reports_percentiles_per_load() -> None:
    result = subprocess.run([sys.executable, "-m", "tools.latency_bench", "--seconds", "1", "--loads", "0.5,2",
                             "--size", "160x120", "--streams", "2", "--json"],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["capacity_fps"] > 0 and report["streams"] == 2
    assert [r["load"] for r in report["results"]] == [0.5, 2.0]
    for row in report["results"]:
        assert 0 < row["latency_ms_p50"] <= row["latency_ms_p90"] <= row["latency_ms_p99"]
        assert row["classified_fps"] > 0 and 0 <= row["dropped_share"] < 1
        assert row["frames_accounted"] == row["frames_offered"], "every frame published or counted as dropped"

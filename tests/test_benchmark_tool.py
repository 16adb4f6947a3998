"""nfnet-bench runs both measurements on the same model and video and reports a ratio."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.engines import EngineConfig
from pipelines.engines.config import MigraphxOptions
from pipelines.model_info import read_model_info
from tests.conftest import ASSETS, REPO, SHAPES_MODEL
from tests.double_fixtures import use_doubles
from tests.doubles.device import DEVICE
from tools.benchmark import engine_fps


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


def test_latency_benchmark_with_a_stream_added_and_removed_meanwhile() -> None:
    result = subprocess.run([sys.executable, "-m", "tools.latency_bench", "--seconds", "3", "--loads", "0.5",
                             "--size", "160x120", "--streams", "2", "--churn-every", "0.5", "--json"],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    [row] = json.loads(result.stdout)["results"]
    assert row["reloads"] >= 4, "the extra stream came and went"
    assert row["frames_accounted"] == row["frames_offered"], "the steady streams' frames all accounted for"
    assert 0 < row["latency_ms_p50"] <= row["latency_ms_p99"]


def test_engine_rate_keeps_distinct_buffers_in_flight(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On the MIGraphX double (two submissions in flight) the engine-alone rate submits each buffer again only
    after its result: re-submitting one in flight is refused by the engine (and a data race on a GPU)."""
    doubles = use_doubles(op_delay_s=0.01)
    monkeypatch.setitem(sys.modules, "migraphx", doubles.migraphx)
    config = EngineConfig(type="migraphx", batch_size=4,
                          migraphx=MigraphxOptions(cache_dir=tmp_path / "cache", hip_library=doubles.hip_library))
    video = ASSETS / "demo_shapes.mp4"
    assert engine_fps(SHAPES_MODEL, read_model_info(SHAPES_MODEL), config, video, frames=24) > 0
    assert not DEVICE.faults and not DEVICE.leaks() and not DEVICE.leaks(owner="migraphx")


def test_ceiling_benchmark_reports_decode_preprocess_and_daemon_rates() -> None:
    result = subprocess.run([sys.executable, "-m", "tools.ceiling_bench", "--cases", "1x320x240,2x320x240",
                             "--frames", "24", "--repeats", "1", "--json"],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [(row["case"], row["frames"]) for row in rows] == [("1 x 320x240", 24), ("2 x 320x240", 48)]
    for row in rows:
        assert min(row["decode_fps"], row["decode_daemon_threads_fps"], row["decode_preprocess_fps"],
                   row["daemon_fps"]) > 0
        assert row["ratio"] == row["daemon_fps"] / row["decode_fps"] and row["daemon_peak_rss_mb"] > 50
        assert row["daemon_pyav_fps"] > 0 and row["pyav_ratio"] == row["daemon_pyav_fps"] / row["decode_fps"]

"""What Prometheus and Grafana are given: a real daemon's /metrics passes ``promtool check metrics`` and has
no ``_created`` series; every metric, label and label value that the Grafana dashboard and the alert rules
query is exported by a real daemon (a file that ended, a live stream reconnecting, MIGraphX's
compiled-program cache; and, from a second one on ONNX Runtime, where the graph's nodes ran), every
nfnet_stream_ metric is on the dashboard, and every panel query of a per-stream metric follows the stream
variable; the panels where no data means trouble say so; the
Prometheus config and rules pass promtool and scrape the default port; the README's metrics table lists
exactly the metrics the code registers. (A real Prometheus server runs them in tests/test_prometheus_queries.py.)"""

from __future__ import annotations

import json
import math
import re
import shutil
import signal
import subprocess
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from daemon.config import MetricsConfig
from pipelines.engines.base import DeviceMemory
from pipelines.runtime.metrics import PREFIX, PipelineMetrics
from tests.conftest import REPO, SHAPES_MODEL, DaemonProcess, daemon_config, free_port
from tests.double_fixtures import DOUBLES_ENV, migraphx_double_engine
from tests.prometheus_server import ALERT_RULES, DASHBOARD, PROMETHEUS_CONFIG
from tests.promql import Matcher, Query, Selector, parse
from tests.source_tables import dead_stream, file_source
from tests.subscriber import Subscriber, get, poll

TARGET_LABELS = frozenset({"job", "instance"})  # added by Prometheus to every scraped series
SYNTHETIC_METRICS = frozenset({"up"})  # made by Prometheus for each target, never exported
LABEL_VALUES = re.compile(r"^label_values\((?:(?P<selector>.+),\s*)?(?P<label>\w+)\)$")
README_METRIC_ROW = re.compile(rf"^\| `(?P<name>{PREFIX}_\w+)` \| (?P<type>\w+) \|", re.MULTILINE)
SAMPLE_SUFFIX = {"counter": "_total", "info": "_info"}  # what a family's samples add to its name

needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None,
                                    reason="no promtool (Debian's prometheus; tests/install-system-deps.sh)")


@pytest.fixture(scope="module")
def exposition(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """/metrics of a daemon with an ended file, a reconnecting live stream and a MIGraphX (double) engine."""
    tmp = tmp_path_factory.mktemp("observed")
    zmq_port, port = free_port(), free_port()
    sources = file_source("lobby", tmp / "lobby.mp4", 8) + dead_stream("gate")
    daemon = DaemonProcess(tmp, daemon_config(SHAPES_MODEL, sources, zmq_port, port, exit_when_done=False,
                                              engine=migraphx_double_engine(tmp / "cache")), DOUBLES_ENV)
    subscriber = Subscriber(f"tcp://127.0.0.1:{zmq_port}")
    try:
        daemon.start()
        subscriber.receive_labels(8, timeout_s=60)
        poll(port, "/readyz", lambda status, body: body["streams"]["lobby"]["state"] == "ended"
             and body["streams"]["gate"]["state"] == "reconnecting", timeout_s=30)
        status, text = get(port, "/metrics")
        assert status == 200
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(30) == 0, daemon.stderr
        yield text
    finally:
        subscriber.close()
        daemon.kill()


@pytest.fixture(scope="module")
def onnxruntime_exposition(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """/metrics of a daemon on ONNX Runtime (the CPU) waiting for its subscriber: the series only that engine
    exports (where the graph's nodes ran)."""
    tmp = tmp_path_factory.mktemp("observed-onnxruntime")
    port = free_port()
    daemon = DaemonProcess(tmp, daemon_config(SHAPES_MODEL, file_source("lobby", tmp / "lobby.mp4", 2), free_port(),
                                              port, exit_when_done=False, engine='type = "onnxruntime"'))
    try:
        daemon.start()
        daemon.wait_for_log("onnxruntime: CPUExecutionProvider took")  # logged once its metrics are set
        status, text = get(port, "/metrics")
        assert status == 200
        yield text
    finally:
        daemon.kill()


def both_engines(exposition: str, onnxruntime_exposition: str) -> dict[str, dict[str, set[str]]]:
    """What a daemon exports on MIGraphX, with what only one on ONNX Runtime adds (a series both export is taken
    from the MIGraphX daemon's, which has run frames)."""
    return {**exported(onnxruntime_exposition), **exported(exposition)}


def exported(text: str) -> dict[str, dict[str, set[str]]]:
    """Sample name → label name → the values it takes."""
    samples: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = samples[sample.name]
            for name, value in sample.labels.items():
                labels[name].add(value)
    return samples


def dashboard_queries() -> list[str]:
    """Every panel query of the dashboard (rows included) and every variable's label_values() selector."""
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            found.extend([node["expr"]] if isinstance(node.get("expr"), str) else [])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    dashboard = json.loads(DASHBOARD.read_text())
    walk(dashboard["panels"])
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            match = LABEL_VALUES.match(variable["query"]["query"])
            assert match and match["selector"], f"variable {variable['name']}: not label_values(metric, label)"
            found.append(f"sum by ({match['label']}) ({match['selector']})")
    return found


def data_panels() -> list[dict[str, Any]]:
    """The dashboard's panels with queries (rows aside)."""
    return [panel for panel in json.loads(DASHBOARD.read_text())["panels"] if panel["type"] != "row"]


def rule_queries() -> list[str]:
    rules = yaml.safe_load(ALERT_RULES.read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def problems(expr: str, samples: dict[str, dict[str, set[str]]]) -> list[str]:
    """What ``expr`` asks for that the daemon does not export."""
    query = parse(expr)
    if not query.selectors:
        return [f"no metric in {expr!r}"]
    found = []
    for selector in query.selectors:
        if selector.metric in SYNTHETIC_METRICS:
            continue
        if selector.metric not in samples:
            found.append(f"{selector.metric}: not exported")
            continue
        labels = samples[selector.metric]
        for matcher in selector.matchers:
            if matcher.label not in labels and matcher.label not in TARGET_LABELS:
                found.append(f"{selector.metric}: no label {matcher.label!r}")
            elif matcher.op == "=" and "$" not in matcher.value and matcher.label not in TARGET_LABELS \
                    and matcher.value not in labels[matcher.label]:
                found.append(f"{selector.metric}: {matcher.label} is never {matcher.value!r}")
        found += [f"{selector.metric}: no label {label!r} to group by" for label in sorted(query.grouping)
                  if label not in labels and label not in TARGET_LABELS]
    return found


@needs_promtool
def test_metrics_pass_promtool_check(exposition: str) -> None:
    result = subprocess.run(["promtool", "check", "metrics"], input=exposition, capture_output=True, text=True,
                            timeout=60)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_process_metrics_are_exported(exposition: str) -> None:
    samples = exported(exposition)
    assert {"process_resident_memory_bytes", "process_cpu_seconds_total", "python_info"} <= set(samples)


def test_dashboard_queries_only_what_the_daemon_exports(exposition: str, onnxruntime_exposition: str) -> None:
    samples = both_engines(exposition, onnxruntime_exposition)
    queries = dashboard_queries()
    assert len(queries) >= 20
    assert [problem for expr in queries for problem in problems(expr, samples)] == []


def test_no_created_series_are_exported(exposition: str) -> None:
    """Prometheus would store each as a series of its own, one beside every counter and histogram."""
    assert [name for name in exported(exposition) if name.endswith("_created")] == []


def test_dashboard_shows_every_daemon_metric(exposition: str, onnxruntime_exposition: str) -> None:
    queried = set().union(*(parse(expr).metrics for expr in dashboard_queries()))
    families: dict[str, set[str]] = defaultdict(set)
    for text in (exposition, onnxruntime_exposition):
        for family in text_string_to_metric_families(text):
            if family.name.startswith("nfnet_stream_"):
                families[family.name] |= {sample.name for sample in family.samples}
    assert sorted(name for name, sample_names in families.items() if not sample_names & queried) == []


def test_the_stream_variable_filters_every_query_of_a_per_stream_metric(exposition: str) -> None:
    """Panels of metrics without a stream label (stage latency, queues, engine, process) are for all streams,
    and say so."""
    samples = exported(exposition)
    unfiltered = [(panel["title"], selector.metric) for panel in data_panels()
                  for target in panel["targets"] for selector in parse(target["expr"]).selectors
                  if "stream" in samples.get(selector.metric, {})
                  and Matcher("stream", "=~", "$stream") not in selector.matchers]
    assert unfiltered == []
    per_stream = [panel["title"] for panel in data_panels()
                  if any("$stream" in target["expr"] for target in panel["targets"])]
    assert len(per_stream) == 7, per_stream
    rows = {panel["title"] for panel in json.loads(DASHBOARD.read_text())["panels"] if panel["type"] == "row"}
    assert {"Pipeline (all streams)", "Engine and process (all streams)"} <= rows


def test_panels_where_no_data_is_trouble_show_it_in_red() -> None:
    """With the daemon down, "Daemon" and "Streams not running" have no data (tests/test_prometheus_queries.py):
    each says so in red, where "Streams not running" used to read a green 0."""
    panels = {panel["title"]: panel for panel in data_panels()}
    for title in ("Daemon", "Streams not running"):
        defaults = panels[title]["fieldConfig"]["defaults"]
        assert defaults["noValue"] not in ("", "0"), title
        assert defaults["thresholds"]["steps"][0] == {"color": "red", "value": None}, title  # the colour of no data
    assert parse(panels["Daemon"]["targets"][0]["expr"]).metrics == {"up"}


def test_alert_rules_query_only_what_the_daemon_exports(exposition: str) -> None:
    samples = exported(exposition)
    assert [problem for expr in rule_queries() for problem in problems(expr, samples)] == []


@needs_promtool
def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """promtool parses each query (Grafana's variables filled in) as a recording rule."""
    filled = {"$__rate_interval": "1m", "$job": "nfnet-stream", "$instance": ".*", "$stream": ".*"}
    rules = [{"record": f"nfnet_stream:dashboard_query_{n}:value",
              "expr": re.sub(r"\$\w+", lambda m: filled[m[0]], expr)} for n, expr in enumerate(dashboard_queries())]
    rules_file = tmp_path / "dashboard-rules.yml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run(["promtool", "check", "rules", str(rules_file)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


@needs_promtool
def test_prometheus_config_and_rules_pass_promtool() -> None:
    for command in (["check", "config", str(PROMETHEUS_CONFIG)], ["check", "rules", str(ALERT_RULES)]):
        result = subprocess.run(["promtool", *command], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "SUCCESS" in result.stdout and "WARNING" not in result.stdout + result.stderr


def test_prometheus_config_scrapes_the_default_endpoint() -> None:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    job = next(job for job in config["scrape_configs"] if job["job_name"] == "nfnet-stream")
    defaults = MetricsConfig()
    assert job["static_configs"][0]["targets"] == [f"{defaults.host}:{defaults.port}"]
    assert job.get("metrics_path", "/metrics") == "/metrics"


def test_the_default_port_is_not_graphite_exporters_and_is_the_one_documented() -> None:
    """9108 is graphite_exporter's in Prometheus' port list; 9612 is free there. Every file that names the
    default names 9612, and none names 9108 as a port (":9108", "= 9108")."""
    port = MetricsConfig().port
    assert port == 9612
    files = [REPO / "README.md", PROMETHEUS_CONFIG, *sorted((REPO / "configs").glob("*.toml"))]
    assert [path.name for path in files
            if re.search(r"[:=] ?9108\b", path.read_text()) or str(port) not in path.read_text()] == []


def test_the_readme_documents_every_metric_the_daemon_registers() -> None:
    """The README's metrics table names each nfnet_stream_ metric of the registry as it is queried (a counter with
    ``_total``, an info with ``_info``) with its type, and nothing else: a metric added to the code without a row
    (as ``nfnet_stream_frames_missing_total`` once was) fails here."""
    registered = {f"{family.name}{SAMPLE_SUFFIX.get(family.type, '')}": family.type
                  for family in PipelineMetrics().registry.collect() if family.name.startswith(f"{PREFIX}_")}
    documented = {row["name"]: row["type"] for row in README_METRIC_ROW.finditer((REPO / "README.md").read_text())}
    assert len(registered) >= 15
    assert documented == registered


@pytest.mark.parametrize(("expr", "expected"), [
    ('histogram_quantile(0.99, sum by (le, stream) (rate(x_seconds_bucket{job=~"$job", stream=~"$stream"}'
     '[$__rate_interval])))',
     Query([Selector("x_seconds_bucket", (Matcher("job", "=~", "$job"), Matcher("stream", "=~", "$stream")))],
           {"le", "stream"})),
    ('sum without (cause) (increase(a_total{x="1"}[5m] offset 1h)) / on (stream) group_left (model_id) b_info',
     Query([Selector("a_total", (Matcher("x", "=", "1"),)), Selector("b_info")], {"cause", "stream", "model_id"})),
    ('count(up{job="nfnet"} == 1) or vector(0)', Query([Selector("up", (Matcher("job", "=", "nfnet"),))])),
    ('sum(rate(a[1m])) by (stream) > bool 2e3', Query([Selector("a")], {"stream"})),
    ('{__name__="foo", a="}"}', Query([Selector("foo", (Matcher("a", "=", "}"),))])),
    ('max_over_time(process_resident_memory_bytes[1h:5m]) > 1e9 and topk(3, rate(x[5m]))',
     Query([Selector("process_resident_memory_bytes"), Selector("x")])),
    ('label_replace(a, "dst", "$1", "src", "(.*)")', Query([Selector("a")])),
])
def test_promql_extraction(expr: str, expected: Query) -> None:
    assert parse(expr) == expected


def test_device_memory_is_read_at_each_scrape_and_nan_while_the_engine_cannot_say() -> None:
    metrics = PipelineMetrics()
    readings: list[DeviceMemory | None] = [DeviceMemory(total=16 << 30, used=5 << 30, ours=3 << 30), None]
    metrics.watch_device_memory(lambda: readings[0])

    def scraped(kind: str) -> float:
        value = metrics.registry.get_sample_value(f"{PREFIX}_device_memory_bytes", {"kind": kind})
        assert value is not None
        return value

    assert [scraped(kind) for kind in ("total", "used", "ours")] == [16 << 30, 5 << 30, 3 << 30]
    readings.pop(0)
    assert all(math.isnan(scraped(kind)) for kind in ("total", "used", "ours"))

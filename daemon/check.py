"""``nfnet-daemon --check-config``: everything start-up would check, without starting the pipeline.

The model is opened and its metadata read, the engine choice is made and its requirements checked (without
compiling), file sources are opened and their first frame decoded; live sources are not contacted, since a
camera that is down at start-up does not stop the daemon either. Errors are raised as start-up would raise
them; the return value is a summary a person can read.
"""

from __future__ import annotations

from pathlib import Path

from daemon.config import DaemonConfig
from pipelines.engines import probe_engine
from pipelines.model_info import model_id, read_model_info
from pipelines.sources import create_source
from pipelines.sources.config import describe_source


def check_config(config: DaemonConfig, path: Path) -> list[str]:
    info = read_model_info(config.model.path)
    lines = [
        f"{path}: valid",
        f"  model    {model_id(config.model.path, info)} ({config.model.path}): input "
        f"{'x'.join(map(str, info.input_size))}, {info.num_classes} classes, weights {info.weights.describe()}",
        f"  engine   {probe_engine(config.engine, config.model.path, info)}",
    ]
    for source_config in config.sources:
        source = create_source(source_config)
        source.check()
        if source_config.type != "file":
            outcome = "live: not contacted"
        else:
            source.open()
            source.close()
            outcome = "opened, first frame decoded"
        lines.append(f"  source   {source_config.id}: {describe_source(source_config)} ({outcome})")
    zmq, console = config.publish.zmq, config.publish.console
    if zmq.enabled:
        lines.append(f"  publish  zmq {zmq.endpoint} (send_hwm {zmq.send_hwm})")
    if console.enabled:
        lines.append(f"  publish  console ({console.format})")
    metrics = config.metrics
    lines.append(f"  http     http://{metrics.host}:{metrics.port}/metrics, /healthz, /readyz"
                 if metrics.enabled else "  http     disabled")
    lines.append(f"  logging  {config.logging.level}, {config.logging.format}")
    return lines

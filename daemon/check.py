"""``nfnet-daemon --check-config``: everything start-up would check, without starting the pipeline.

The model is opened and its metadata read, the engine choice is made and its requirements checked, the model is
run once on zeros: ONNX Runtime on the providers start-up would use, saying how many nodes each ran (a GPU provider
that takes none fails here as at start-up); MIGraphX, not compiled, through ONNX Runtime on the CPU, else its
reference target. A model that fails when run, or whose output does not fit its labels, fails here as at start-up.
File sources are opened and their first frame decoded, CURVE key files are read with their permission checks;
live sources are not contacted (a camera that is down at start-up does not stop the daemon either) and no
port is bound. Errors are raised as start-up would raise them; the return value is a summary a person can
read.
"""

from __future__ import annotations

from pathlib import Path

from daemon.config import DaemonConfig
from pipelines.engines import probe_engine, trial_run
from pipelines.model_info import model_id, read_model_info
from pipelines.publishers.curve_keys import authorized_key_files, load_secret_key
from pipelines.sources import create_source
from pipelines.sources.config import describe_source


def check_config(config: DaemonConfig, path: Path) -> list[str]:
    info = read_model_info(config.model.path)
    lines = [
        f"{path}: valid",
        f"  model    {model_id(config.model.path, info)} ({config.model.path}): input "
        f"{'x'.join(map(str, info.input_size))}, {info.num_classes} classes, weights {info.weights.describe()}",
        f"  engine   {probe_engine(config.engine, config.model.path, info)}",
        f"  run      {trial_run(config.engine, config.model.path, info)}",
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
        curve = "off"
        if zmq.curve is not None:
            load_secret_key(zmq.curve.server_secret_key)
            curve = f"on, {len(authorized_key_files(zmq.curve.authorized_keys_dir))} subscriber key(s) authorised"
        lines.append(f"  publish  zmq {zmq.endpoint} (send_hwm {zmq.send_hwm}, CURVE {curve})")
    if console.enabled:
        lines.append(f"  publish  console ({console.format})")
    metrics = config.metrics
    lines.append(f"  http     http://{metrics.host}:{metrics.port}/metrics, /healthz, /readyz"
                 if metrics.enabled else "  http     disabled")
    lines.append(f"  logging  {config.logging.level}, {config.logging.format}")
    return lines

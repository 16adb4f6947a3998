"""The daemon's configuration: one TOML file, validated strictly into one immutable model.

Each table is the sub-config of the component that uses it (``pipelines/*/config.py``); this module
only composes them and turns validation failures into messages that name the file and the key.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, model_validator

from pipelines.config_base import StrictModel
from pipelines.engines.config import EngineConfig
from pipelines.paths import ConfigPath
from pipelines.publishers.config import PublishConfig
from pipelines.runtime.config import PipelineConfig
from pipelines.sources.config import SOURCE_TYPES, SourceConfig


class ConfigError(ValueError):
    """The configuration file is missing, malformed or invalid."""


class ModelConfig(StrictModel):
    path: ConfigPath = Field(description="ONNX model exported by nfnet-export (relative to this file).")


class MetricsConfig(StrictModel):
    enabled: bool = True
    host: str = Field("127.0.0.1", description="Address of the Prometheus endpoint.")
    port: int = Field(9108, ge=0, le=65535, description="Port of the Prometheus endpoint (0: any free).")


class LoggingConfig(StrictModel):
    level: Literal["debug", "info", "warning", "error"] = "info"


class DaemonConfig(StrictModel):
    model: ModelConfig
    engine: EngineConfig = EngineConfig()
    pipeline: PipelineConfig = PipelineConfig()
    sources: list[SourceConfig] = Field(min_length=1)
    publish: PublishConfig = PublishConfig()
    metrics: MetricsConfig = MetricsConfig()
    logging: LoggingConfig = LoggingConfig()

    @model_validator(mode="after")
    def _unique_stream_ids(self) -> DaemonConfig:
        ids = [source.id for source in self.sources]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"source ids must be unique; repeated: {', '.join(duplicates)}")
        return self


def load_config(path: str | Path) -> DaemonConfig:
    """Read and validate a TOML config; raise :class:`ConfigError` with one line per problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    try:
        return DaemonConfig.model_validate(data, context={"base_dir": path.resolve().parent})
    except ValidationError as exc:
        problems = "\n".join(f"  {path}: {_describe(error)}" for error in exc.errors())
        raise ConfigError(f"{path}: invalid configuration\n{problems}") from None


def _describe(error: dict) -> str:
    location = _location(error["loc"])
    if error["type"] == "extra_forbidden":
        return f"{location}: unknown key"
    if error["type"] == "missing":
        return f"{location}: required key is missing"
    where = f"{location}: " if location else ""
    return f"{where}{error['msg']} (got {error['input']!r})"


def _location(loc: tuple) -> str:
    text = ""
    previous: object = None
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif not (isinstance(previous, int) and part in SOURCE_TYPES):  # a list item's union tag adds nothing
            text += f".{part}" if text else str(part)
        previous = part
    return text

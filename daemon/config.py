"""The daemon's configuration: one TOML file, validated strictly into one immutable model.

Each table is the sub-config of the component that uses it (``pipelines/*/config.py``); this module
only composes them and turns validation failures into messages that name the file and the key.

Environment variables override the file, so that secrets (a camera URL with credentials, key files) and
site paths need not be written into it: ``NFNET_<TABLE>__<KEY>`` with ``__`` between levels and list
items by index, e.g. ``NFNET_MODEL__PATH``, ``NFNET_SOURCES__0__URL``, ``NFNET_LOGGING__LEVEL``. Values are
parsed as TOML values where they can be (numbers, booleans, arrays), else taken as strings.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from daemon.config_lines import key_line
from pipelines.config_base import StrictModel
from pipelines.engines.config import EngineConfig
from pipelines.paths import ConfigPath
from pipelines.publishers.config import PublishConfig
from pipelines.redact import mask_credentials
from pipelines.runtime.config import PipelineConfig
from pipelines.sources.config import SOURCE_TYPES, SourceConfig


class ConfigError(ValueError):
    """The configuration file is missing, malformed or invalid. Its message quotes values (a stream's URL
    among them): URL passwords are masked."""

    def __init__(self, message: str) -> None:
        super().__init__(mask_credentials(message))


class ModelConfig(StrictModel):
    path: ConfigPath = Field(description="ONNX model exported by nfnet-export (relative to this file).")


class MetricsConfig(StrictModel):
    enabled: bool = True
    host: str = Field("127.0.0.1", description="Address of the Prometheus endpoint.")
    # 9612: free in Prometheus' list of default exporter ports (9108, the default before, is graphite_exporter's).
    port: int = Field(9612, ge=0, le=65535, description="Port of the Prometheus endpoint (0: any free).")


class LoggingConfig(StrictModel):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = Field(
        "text", description="text: human-readable lines; json: one JSON object a line (journald, log shippers).")


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


ENV_PREFIX = "NFNET_"


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> DaemonConfig:
    """Read and validate a TOML config, with ``NFNET_*`` overrides from ``environ`` (default: the process
    environment); raise :class:`ConfigError` with one line per problem."""
    path = Path(path)
    try:
        return _load(path, os.environ if environ is None else environ)
    except RecursionError:  # tomllib and pydantic recurse per level of nesting
        raise ConfigError(f"{path}: nested too deeply to read (arrays or tables hundreds of levels deep, in the "
                          f"file or an {ENV_PREFIX}* variable)") from None


def _load(path: Path, environ: Mapping[str, str]) -> DaemonConfig:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 (byte {raw[exc.start]:#04x}); TOML files are UTF-8") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    overrides = apply_env_overrides(data, environ)
    try:
        return DaemonConfig.model_validate(data, context={"base_dir": path.resolve().parent})
    except ValidationError as exc:
        # One line, every problem on it: the CLI prints one "error:" line per failure.
        raise ConfigError("; ".join(f"{_where(path, text, error['loc'], overrides)}: {_describe(error, overrides)}"
                                    for error in exc.errors())) from None


def apply_env_overrides(data: dict[str, Any], environ: Mapping[str, str]) -> dict[tuple[str | int, ...], str]:
    """Write every ``NFNET_A__B__C`` variable into ``data`` at ``a.b.c``; return {location: variable}."""
    applied: dict[tuple[str | int, ...], str] = {}
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        location = tuple(int(part) if part.isdigit() else part.lower()
                         for part in name[len(ENV_PREFIX):].split("__"))
        if "" in location:
            raise ConfigError(f"{name}: empty key in the variable's name")
        _set(data, location, _env_value(environ[name]), name)
        applied[location] = name
    return applied


def _env_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _set(data: dict[str, Any], location: tuple[str | int, ...], value: Any, name: str) -> None:
    node: Any = data
    for depth, part in enumerate(location):
        if isinstance(part, int):
            if not isinstance(node, list) or part >= len(node):
                raise ConfigError(f"{name}: there is no item {part} at {_location(location[:depth]) or 'the top'}")
        elif not isinstance(node, dict):
            raise ConfigError(f"{name}: {_location(location[:depth])} is not a table")
        if depth == len(location) - 1:
            node[part] = value
        else:
            node = node[part] if isinstance(part, int) else node.setdefault(part, {})


def _describe(error: dict, overrides: Mapping[tuple[str | int, ...], str]) -> str:
    location = _location(error["loc"])
    source = overrides.get(_key(error["loc"]))
    if source is not None:
        location = f"{location} (from {source})"
    if error["type"] == "extra_forbidden":
        return f"{location}: unknown key"
    if error["type"] == "missing":
        return f"{location}: required key is missing"
    where = f"{location}: " if location else ""
    return f"{where}{error['msg']} (got {error['input']!r})"


def _where(path: Path, text: str, loc: tuple, overrides: Mapping[tuple[str | int, ...], str]) -> str:
    """``file:line`` of the key, or of its nearest table (a missing key's), when the file sets it (not the
    environment); else ``file``."""
    key = _key(loc)
    if key in overrides:
        return str(path)
    line = next((found for depth in range(len(key), 0, -1) if (found := key_line(text, key[:depth]))), None)
    return f"{path}:{line}" if line else str(path)


def _key(loc: tuple) -> tuple[str | int, ...]:
    """A validation error's location as the file spells it: a list item's union tag adds nothing."""
    parts: list[str | int] = []
    for part in loc:
        if not (parts and isinstance(parts[-1], int) and part in SOURCE_TYPES):
            parts.append(part)
    return tuple(parts)


def _location(loc: tuple) -> str:
    text = ""
    for part in _key(loc):
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text

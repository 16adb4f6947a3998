"""SIGHUP: which changes of a reloaded configuration take effect at once, and which need a restart.

Live: ``pipeline.top_k``, each source's ``smoothing``, ``publish``, ``heartbeat_s`` and ``min_score``
(matched by position, when the list of source ids is unchanged), and ``logging``. Everything else (the
model, the engine, the sources themselves, endpoints, buffers) is built at start-up: such a change is
reported and left for a restart, and the running daemon keeps the value it started with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from daemon.config import DaemonConfig

LIVE_SOURCE_FIELDS = ("smoothing", "publish", "heartbeat_s", "min_score")


@dataclass(frozen=True)
class ReloadPlan:
    effective: DaemonConfig  # the running configuration with the live changes applied
    applied: list[str]  # "key: old -> new"
    needs_restart: list[str]  # keys whose new value waits for a restart


def plan_reload(current: DaemonConfig, new: DaemonConfig) -> ReloadPlan:
    same_streams = [s.id for s in current.sources] == [s.id for s in new.sources]
    sources = [
        running.model_copy(update={field: getattr(wanted, field) for field in LIVE_SOURCE_FIELDS})
        for running, wanted in zip(current.sources, new.sources, strict=True)
    ] if same_streams else current.sources
    effective = current.model_copy(update={
        "pipeline": current.pipeline.model_copy(update={"top_k": new.pipeline.top_k}),
        "logging": new.logging,
        "sources": sources,
    })
    applied = [f"{key}: {change}" for key, change in _changes(current, effective).items()]
    needs_restart = [f"{key}: {change}" for key, change in _changes(effective, new).items()]
    if not same_streams:
        needs_restart = [key for key in needs_restart if not key.startswith("sources[")]
        needs_restart.append("sources (added, removed or reordered: "
                             f"{', '.join(s.id for s in current.sources)} -> {', '.join(s.id for s in new.sources)})")
    return ReloadPlan(effective, applied, needs_restart)


def _changes(old: DaemonConfig, new: DaemonConfig) -> dict[str, str]:
    before, after = _flatten(old.model_dump(mode="json")), _flatten(new.model_dump(mode="json"))
    return {key: f"{before.get(key)!r} -> {after.get(key)!r}"
            for key in sorted(before.keys() | after.keys()) if before.get(key) != after.get(key)}


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        items = {f"{prefix}.{key}" if prefix else key: item for key, item in value.items()}
    elif isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
        items = {f"{prefix}[{index}]": item for index, item in enumerate(value)}
    else:
        return {prefix: value}
    flat: dict[str, Any] = {}
    for key, item in items.items():
        flat.update(_flatten(item, key))
    return flat

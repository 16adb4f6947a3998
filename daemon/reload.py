"""SIGHUP: what a reloaded configuration changes in the running daemon, and what waits for a restart.

Live: ``logging``, ``pipeline.top_k``, and the sources, matched by id (their order is no change):

- a new id is a stream added, a missing one a stream removed (drained: what it read is published);
- a stream whose only changes are :data:`IN_PLACE_SOURCE_KEYS` (or its ``roi``) is updated in place: it
  goes on reading, nothing is lost;
- any other change (what is opened: ``type``, ``path``, ``url``, ``device``, ``pipeline``, ``width``,
  ``height``, ``pace``, ``open_timeout_s``, ``reconnect.stall_timeout_s``) restarts that stream alone, as does
  any change to a stream that has failed (there is nothing left to update in place).

Everything else (the model, the engine and its batch size, the other ``pipeline`` keys, ``publish``,
``metrics``) is built at start-up: such a change is reported and left for a restart, and the running
daemon keeps the value it started with.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from daemon.config import DaemonConfig
from pipelines.sources import SourceConfig

# Source settings a running stream takes without reopening its source.
IN_PLACE_SOURCE_KEYS = frozenset({
    "fps_cap", "interval", "buffer_frames", "max_frame_age_ms", "reconnect.base_s", "reconnect.cap_s",
    "reconnect.max_attempts", "smoothing", "publish", "heartbeat_s", "min_score",
})
IN_PLACE_SOURCE_PREFIX = "roi"  # roi, roi.x, roi.width, ...


@dataclass(frozen=True)
class SourceChanges:
    added: list[SourceConfig]
    removed: list[str]
    restarted: list[SourceConfig]  # to reopen with these settings
    updated: list[SourceConfig]  # to apply in place

    @property
    def to_open(self) -> list[SourceConfig]:
        """The sources a reload opens (added and restarted streams)."""
        return [*self.added, *self.restarted]


@dataclass(frozen=True)
class ReloadPlan:
    effective: DaemonConfig  # the running configuration with the live changes applied
    applied: list[str]  # "key: old -> new", "sources[id]: added", ...
    needs_restart: list[str]  # keys whose new value waits for a restart
    sources: SourceChanges


def plan_reload(current: DaemonConfig, new: DaemonConfig, failed: Collection[str] = ()) -> ReloadPlan:
    """What reloading ``new`` over ``current`` does; ``failed``: the streams that have failed."""
    before = {source.id: source for source in current.sources}
    after = {source.id: source for source in new.sources}
    changes = SourceChanges(added=[s for s in new.sources if s.id not in before],
                            removed=[s.id for s in current.sources if s.id not in after],
                            restarted=[], updated=[])
    applied = [f"sources[{s.id}]: added" for s in changes.added] + [f"sources[{s}]: removed" for s in changes.removed]
    for stream in [s.id for s in new.sources if s.id in before]:
        differences = _changes(before[stream].model_dump(mode="json"), after[stream].model_dump(mode="json"))
        if not differences:
            continue
        in_place = all(key in IN_PLACE_SOURCE_KEYS or key.split(".")[0] == IN_PLACE_SOURCE_PREFIX
                       for key in differences)
        restart = not in_place or stream in failed
        (changes.restarted if restart else changes.updated).append(after[stream])
        said = "; ".join(f"{key}: {change}" for key, change in differences.items())
        applied.append(f"sources[{stream}] {'restarted' if restart else 'updated'}: {said}")
    effective = current.model_copy(update={
        "pipeline": current.pipeline.model_copy(update={"top_k": new.pipeline.top_k}),
        "logging": new.logging,
        "sources": new.sources,
    })
    others = {key: change for key, change in _changes(current.model_dump(mode="json"),
                                                       effective.model_dump(mode="json")).items()
              if not key.startswith("sources")}
    applied = [f"{key}: {change}" for key, change in others.items()] + applied
    needs_restart = [f"{key}: {change}" for key, change in _changes(effective.model_dump(mode="json"),
                                                                    new.model_dump(mode="json")).items()]
    return ReloadPlan(effective, applied, needs_restart, changes)


def _changes(old: dict[str, Any], new: dict[str, Any]) -> dict[str, str]:
    before, after = _flatten(old), _flatten(new)
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

"""Metrics recorded a batch at a time read exactly as prometheus_client's own would; latency buckets fine
enough for GPU and CPU engines alike; no ``_created`` series from the daemon's registry, and nothing global
changed for other registries."""

from __future__ import annotations

import itertools

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from pipelines.runtime.metrics import LATENCY_BUCKETS, BatchHistogram, CreatedFreeRegistry


def samples(registry: CollectorRegistry) -> list[str]:
    return [line for line in generate_latest(registry).decode().splitlines()
            if line.startswith("latency_seconds") and "_created" not in line]


def test_a_batch_histogram_exposes_what_a_histogram_fed_one_value_at_a_time_does() -> None:
    values = [0.0004, 0.0005, 0.0011, 0.02, 0.02, 3.0, 50.0]  # on a bound, between bounds, past the last
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    batched = BatchHistogram("latency_seconds", "Latency.", ["stage"], LATENCY_BUCKETS, ours)
    batched.labels(stage="inference").observe_many(values[:3])
    batched.labels(stage="inference").observe_many(values[3:])
    batched.labels(stage="capture")  # a series exists, empty, as soon as it is named
    reference = Histogram("latency_seconds", "Latency.", ["stage"], buckets=LATENCY_BUCKETS, registry=theirs)
    for value in values:
        reference.labels(stage="inference").observe(value)
    reference.labels(stage="capture")
    assert sorted(samples(ours)) == sorted(samples(theirs))
    assert 'latency_seconds_bucket{le="0.0005",stage="inference"} 2.0' in samples(ours)


def test_latency_buckets_resolve_half_a_millisecond_to_ten_seconds_within_28_percent() -> None:
    """An interpolated quantile shares its bucket with the true one: the bucket ratio bounds the error."""
    assert (LATENCY_BUCKETS[0], LATENCY_BUCKETS[-1]) == (0.0005, 10.0)
    ratios = [upper / lower for lower, upper in itertools.pairwise(LATENCY_BUCKETS)]
    assert min(ratios) >= 1.25 and max(ratios) <= 1.28


def exposed(registry: CollectorRegistry | CreatedFreeRegistry, names: list[str] | None = None) -> set[str]:
    """The sample names a scrape shows (all, or those ``/metrics?name[]=...`` asks for)."""
    source = registry if names is None else registry.restricted_registry(names)
    return {line.split("{")[0].split(" ")[0] for line in generate_latest(source).decode().splitlines()
            if not line.startswith("#")}


def test_the_daemons_registry_leaves_out_created_series_and_no_other_registry_does() -> None:
    ours, plain = CreatedFreeRegistry(), CollectorRegistry()
    for registry in (ours, plain):
        Counter("frames", "Frames.", ["stream"], registry=registry).labels(stream="a").inc()
        Histogram("batch_frames", "Frames a batch.", buckets=(1, 2), registry=registry).observe(1)
    assert exposed(ours) == {"frames_total", "batch_frames_bucket", "batch_frames_count", "batch_frames_sum"}
    assert exposed(ours, ["frames_total", "frames_created"]) == {"frames_total"}
    assert {"frames_created", "batch_frames_created"} <= exposed(plain)

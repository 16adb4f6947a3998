"""Softmax/top-k, temporal smoothing and the on_change publish mode."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.postprocess import StreamPostprocess, softmax, top_k
from pipelines.sources.config import FileSourceConfig

LABELS = ("a", "b", "c")


def stream(**settings: object) -> StreamPostprocess:
    return StreamPostprocess(FileSourceConfig(id="s", path="x.mp4", **settings))


def test_softmax_rows_sum_to_one_and_top_k_ranks_with_stable_ties() -> None:
    probs = softmax(np.array([[1.0, 3.0, 3.0], [1000.0, 0.0, -1000.0]], dtype=np.float32))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    ranked = top_k(probs, LABELS, 3)
    assert [p.label for p in ranked[0]] == ["b", "c", "a"]
    assert ranked[1][0].score == pytest.approx(1.0) and [p.index for p in ranked[1]] == [0, 1, 2]
    assert [len(row) for row in top_k(probs, LABELS, 1)] == [1, 1]
    with pytest.raises(ValueError, match="do not match"):
        top_k(probs[:, :2], LABELS, 1)


def test_smoothing_is_an_exponential_moving_average() -> None:
    smoother = stream(smoothing=0.75)
    first, second = np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])
    np.testing.assert_allclose(smoother.smooth(first), first)
    np.testing.assert_allclose(smoother.smooth(second), [0.75, 0.25, 0.0])
    np.testing.assert_allclose(smoother.smooth(second), [0.5625, 0.4375, 0.0])
    assert stream().smooth(second) is second, "smoothing 0 is off"


def test_on_change_publishes_changes_and_heartbeats_only() -> None:
    gate = stream(publish="on_change", heartbeat_s=5.0)
    decisions = [gate.should_publish(label, 0.9, now) for label, now in
                 [(0, 0.0), (0, 1.0), (0, 4.9), (1, 5.0), (1, 6.0), (1, 10.1), (1, 10.2)]]
    assert decisions == [True, False, False, True, False, True, False]
    every = stream()
    assert all(every.should_publish(0, 0.9, t) for t in (0.0, 0.1, 0.2))


def test_frames_below_the_minimum_score_are_not_published() -> None:
    gate = stream(min_score=0.6, publish="on_change", heartbeat_s=5.0)
    decisions = [gate.should_publish(label, score, now) for label, score, now in
                 [(0, 0.5, 0.0), (0, 0.7, 1.0), (1, 0.59, 2.0), (1, 0.61, 3.0), (1, 0.9, 4.0)]]
    assert decisions == [False, True, False, True, False]


def test_settings_can_change_while_the_average_carries_on() -> None:
    smoother = stream(smoothing=0.5)
    smoother.smooth(np.array([1.0, 0.0, 0.0]))
    smoother.configure(FileSourceConfig(id="s", path="x.mp4", smoothing=0.75, min_score=0.2))
    np.testing.assert_allclose(smoother.smooth(np.array([0.0, 1.0, 0.0])), [0.75, 0.25, 0.0])
    assert not smoother.should_publish(0, 0.1, 0.0)

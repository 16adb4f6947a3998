"""The engine clock: when a batch handed on now would reach the engine, so live frames are taken just in time."""

from __future__ import annotations

import pytest

from pipelines.runtime.engine_clock import EngineClock, FillTimer


def run_batches(clock: EngineClock, turn_s: float, count: int, start: float = 100.0) -> float:
    """``count`` batches back to back on a one-at-a-time engine; return when the last one finished."""
    now = start
    for _ in range(count):
        clock.handed_on()
        clock.submitted(now)
        now += turn_s
        clock.collected(now)
    return now


def test_an_idle_engine_takes_a_batch_at_once() -> None:
    clock = EngineClock(max_in_flight=1)
    assert clock.accepts_at() == 0.0
    run_batches(clock, 0.1, 3)
    assert clock.accepts_at() == 0.0, "nothing outstanding: no wait"


def test_a_busy_engine_takes_the_next_batch_when_the_running_one_is_expected_to_finish() -> None:
    clock = EngineClock(max_in_flight=1)
    end = run_batches(clock, 0.1, 5)
    clock.handed_on()
    clock.submitted(end)
    assert clock.accepts_at() == pytest.approx(end + 0.1)
    clock.handed_on()  # a second one queued behind it: the next would wait two turns
    assert clock.accepts_at() == pytest.approx(end + 0.2)


def test_a_double_buffered_engine_takes_a_second_batch_at_once() -> None:
    clock = EngineClock(max_in_flight=2)
    end = run_batches(clock, 0.1, 5)
    clock.handed_on()
    clock.submitted(end)
    assert clock.accepts_at() == 0.0
    clock.handed_on()
    clock.submitted(end + 0.01)
    assert clock.accepts_at() == pytest.approx(end + 0.1)


def test_turn_time_follows_a_slower_engine() -> None:
    clock = EngineClock(max_in_flight=1)
    end = run_batches(clock, 0.1, 5)
    end = run_batches(clock, 0.3, 20, start=end)
    clock.handed_on()
    clock.submitted(end)
    assert clock.accepts_at() == pytest.approx(end + 0.3, rel=0.01)


def test_fill_lead_scales_with_the_batch() -> None:
    fill = FillTimer()
    assert fill.lead_s(4) == 0.0, "no estimate yet: start at once"
    for _ in range(3):
        fill.observe(0.002)
    assert fill.lead_s(4) == pytest.approx(0.008)

"""The MIGraphX engine on the test doubles of ``migraphx`` and HIP (tests/doubles): the compiled-program
cache, errors a user can act on, copy/compute overlap, and other threads running while the GPU computes."""

from __future__ import annotations

import builtins
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from pipelines.engines import EngineConfig, EngineError, migraphx_unavailable
from pipelines.engines.config import MigraphxOptions
from pipelines.engines.migraphx_engine import MigraphxEngine, import_migraphx
from pipelines.model_info import read_model_info
from tests.conftest import SHAPES_MODEL
from tests.double_fixtures import Doubles, use_doubles
from tests.doubles.device import DEVICE
from tests.onnx_models import colour_model

INFO = read_model_info(SHAPES_MODEL)


def build(doubles: Doubles, cache: Path, model: Path = SHAPES_MODEL, **options: object) -> MigraphxEngine:
    config = EngineConfig(type="migraphx", batch_size=4,
                          migraphx=MigraphxOptions(cache_dir=cache, hip_library=doubles.hip_library, **options))
    return MigraphxEngine(model, read_model_info(model), config, migraphx=doubles.migraphx)


def counting(module: ModuleType, name: str, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count calls of ``module.name``."""
    calls: list[int] = []
    original = getattr(module, name)

    def wrapper(*args: object, **kwargs: object) -> object:
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)
    return calls


def test_second_start_loads_the_compiled_program(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    doubles = use_doubles()
    compiles = counting(doubles.migraphx, "parse_onnx", monkeypatch)
    first = build(doubles, tmp_path)
    assert first.build_report is not None and first.build_report.cache == "miss" and compiles == [1]
    (buffer,) = first.input_buffers(1)
    buffer[:] = 0.5
    expected = first.infer(buffer, 4)
    first.close()

    second = build(doubles, tmp_path)
    assert second.build_report is not None and second.build_report.cache == "hit"
    assert second.build_report.compile_seconds == 0.0 and compiles == [1], "a hit must not parse or compile"
    (buffer,) = second.input_buffers(1)
    buffer[:] = 0.5
    np.testing.assert_array_equal(second.infer(buffer, 4), expected)
    assert second.describe()["cache"] == "hit"
    second.close()
    assert not DEVICE.leaks()


def test_corrupt_cache_entry_is_rebuilt_not_fatal(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    doubles = use_doubles()
    build(doubles, tmp_path).close()
    (entry,) = tmp_path.glob("*.mxr")
    entry.write_bytes(entry.read_bytes()[:40])  # truncated, as by a full disk or a crash elsewhere
    with caplog.at_level(logging.WARNING):
        engine = build(doubles, tmp_path)
    assert engine.build_report is not None and engine.build_report.cache == "rebuilt"
    assert "cannot be loaded" in caplog.text
    engine.close()


def test_fp16_and_batch_get_their_own_cache_entries(tmp_path: Path) -> None:
    doubles = use_doubles()
    for options, outcome in (({}, "miss"), ({"fp16": True}, "miss"), ({}, "hit"), ({"fp16": True}, "hit")):
        engine = build(doubles, tmp_path, **options)
        assert engine.build_report is not None and engine.build_report.cache == outcome, options
        engine.close()
    assert len(list(tmp_path.glob("*.mxr"))) == 2


def test_no_gpu_visible(tmp_path: Path) -> None:
    doubles = use_doubles(device_count=0)
    with pytest.raises(EngineError, match=r"no GPU visible to HIP: .*/dev/kfd.*'video' and 'render'"):
        build(doubles, tmp_path)
    assert migraphx_unavailable(MigraphxOptions(hip_library=doubles.hip_library)) is not None


def test_missing_migraphx_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_migraphx(name: str, *args: object, **kwargs: object) -> object:
        if name == "migraphx":
            raise ModuleNotFoundError("No module named 'migraphx'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_migraphx)
    with pytest.raises(EngineError, match=r"not importable .*ROCm's packages.*/opt/rocm/lib.*PYTHONPATH"):
        import_migraphx()


def test_pypi_placeholder_is_recognised(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(__import__("sys").modules, "migraphx", ModuleType("migraphx"))
    with pytest.raises(EngineError, match=r"is not MIGraphX.*empty placeholder"):
        import_migraphx()


def test_compile_failure_is_an_engine_error(tmp_path: Path) -> None:
    doubles = use_doubles()
    model = colour_model(tmp_path / "dynamic_pad.onnx", shape_derived_pad=True)
    with pytest.raises(EngineError, match=r"MIGraphX cannot compile .*dynamic_pad.onnx: .*PARSE_PAD"):
        build(doubles, tmp_path / "cache", model=model)


def test_out_of_gpu_memory_is_an_engine_error(tmp_path: Path) -> None:
    doubles = use_doubles(device_memory_bytes=4096)
    engine = build(doubles, tmp_path)
    with pytest.raises(EngineError, match="cannot allocate GPU buffers"):
        engine.input_buffers(2)
    engine.close()


def test_submit_needs_the_engines_own_pinned_buffers(tmp_path: Path) -> None:
    doubles = use_doubles()
    engine = build(doubles, tmp_path)
    with pytest.raises(EngineError, match="input_buffers"):
        engine.submit(np.zeros((4, 3, 64, 64), np.float32), 4)
    engine.close()


def timed_operations(monkeypatch: pytest.MonkeyPatch, delay_s: float) -> list[tuple[int, float, float]]:
    """Make every device operation take ``delay_s`` and log (stream, start, end) of each."""
    log: list[tuple[int, float, float]] = []
    original = DEVICE.enqueue

    def enqueue(stream, operation: Callable[[], None]):
        def timed() -> None:
            start = time.monotonic()
            time.sleep(delay_s)
            operation()
            log.append((stream.handle, start, time.monotonic()))
        return original(stream, timed)

    monkeypatch.setattr(DEVICE, "enqueue", enqueue)
    return log


def test_next_batch_is_copied_while_this_one_computes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    doubles = use_doubles()
    engine = build(doubles, tmp_path)
    buffers = engine.input_buffers(2)
    log = timed_operations(monkeypatch, delay_s=0.2)
    first, second = engine.submit(buffers[0], 4), engine.submit(buffers[1], 4)
    engine.result(first), engine.result(second)
    engine.close()
    log.sort(key=lambda entry: entry[1])
    copy_stream = log[0][0]  # the first operation is batch 1's upload
    copies = [(start, end) for stream, start, end in log if stream == copy_stream]
    computes = [(start, end) for stream, start, end in log if stream != copy_stream]
    assert len({stream for stream, _, _ in log}) == 2, "one copy stream and one compute stream"
    assert len(copies) == 2 and len(computes) == 4  # per batch: H2D | kernel, D2H
    first_kernel, second_copy = computes[0], copies[1]
    assert second_copy[0] < first_kernel[1], "batch 2's upload must start while batch 1 computes"
    assert computes[2][0] >= second_copy[1], "batch 2's kernel must wait for its upload"


def test_other_threads_run_while_the_engine_waits_for_the_gpu(tmp_path: Path) -> None:
    """The wait is hipEventSynchronize through ctypes, which releases the GIL: a pure-Python thread (like
    the capture and preprocess stages' Python code) keeps running for the whole inference."""
    doubles = use_doubles(op_delay_s=0.3)
    engine = build(doubles, tmp_path)
    (buffer,) = engine.input_buffers(1)
    ticks: list[float] = []
    stop = threading.Event()

    def busy_python() -> None:
        while not stop.is_set():
            ticks.append(time.monotonic())
            time.sleep(0.001)

    thread = threading.Thread(target=busy_python)
    thread.start()
    start = time.monotonic()
    engine.infer(buffer, 4)
    end = time.monotonic()
    stop.set()
    thread.join()
    engine.close()
    assert end - start >= 0.9, "three device operations of 0.3 s each"
    during = [t for t in ticks if start <= t <= end]
    assert len(during) >= 100, f"only {len(during)} ticks in {end - start:.2f}s: the wait blocked other threads"
    assert max(np.diff(during)) < 0.2, "no long freeze while the GPU computed"

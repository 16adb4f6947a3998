"""The MIGraphX engine on the test doubles of ``migraphx`` and HIP (tests/doubles): the compiled-program
cache, errors a user can act on, copy/compute overlap, and other threads running while the GPU computes."""

from __future__ import annotations

import builtins
import json
import logging
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from pipelines.engines import EngineConfig, EngineError, migraphx_engine, migraphx_identity, migraphx_unavailable
from pipelines.engines.config import MigraphxOptions
from pipelines.engines.migraphx_engine import MigraphxEngine, import_migraphx
from pipelines.model_info import model_sha256, read_model_info
from tests.conftest import SHAPES_MODEL
from tests.double_fixtures import Doubles, use_doubles
from tests.doubles.device import DEVICE
from tests.elf_files import write_elf
from tests.onnx_models import colour_model, sidecar_twins
from tests.test_migraphx_identity import FACTS_VARIABLES

INFO = read_model_info(SHAPES_MODEL)


def build(doubles: Doubles, cache: Path, model: Path = SHAPES_MODEL, **options: Any) -> MigraphxEngine:
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
    compiles = counting(migraphx_engine, "compile_in_child", monkeypatch)
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


def program_device_bytes(tmp_path: Path) -> int:
    """Device memory that the compiled shapes model holds (weights and scratch) on the double."""
    engine = build(use_doubles(), tmp_path)
    in_use = DEVICE.device_bytes_in_use
    engine.close()
    return in_use


def test_out_of_gpu_memory_is_an_engine_error_and_leaks_nothing(tmp_path: Path) -> None:
    """Room for the program and one buffer set: the second set fails half-way, and what it had already
    allocated (pinned host buffers) is released, not leaked."""
    input_bytes, output_bytes = 4 * 3 * 64 * 64 * 4, 4 * INFO.num_classes * 4
    limit = program_device_bytes(tmp_path / "probe") + input_bytes + output_bytes + input_bytes // 2
    doubles = use_doubles(device_memory_bytes=limit)
    engine = build(doubles, tmp_path / "cache")
    engine.input_buffers(1)
    with pytest.raises(EngineError, match="cannot allocate GPU buffers: hipMalloc failed: out of memory"):
        engine.input_buffers(1)
    engine.close()
    assert not DEVICE.leaks(), DEVICE.leaks()


def test_a_program_that_does_not_fit_the_device_memory_is_an_engine_error(tmp_path: Path) -> None:
    """MIGraphX 2.15 loads it into host memory without a word (the double does too); the engine says so."""
    doubles = use_doubles(device_memory_bytes=4096)
    with pytest.raises(EngineError) as raised:
        build(doubles, tmp_path)
    assert re.fullmatch(
        r"the compiled program does not fit in GPU 0's memory: it needs at least 0\.3 MiB \(its weights, its "
        r"scratch on top\) and 0\.0 MiB of 0\.0 MiB were free, so MIGraphX put it in host memory \(it "
        r"took 0\.0 MiB of the GPU's\), where every inference runs many times slower; lower engine\.batch_size, "
        r"set engine\.migraphx\.fp16 = true, or stop the other processes using the GPU \(rocm-smi --showpids\); "
        r"engine\.migraphx\.allow_host_memory = true runs it anyway", str(raised.value)), str(raised.value)


def test_allow_host_memory_runs_a_program_that_does_not_fit_with_a_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    expected = build(use_doubles(), tmp_path / "probe")
    (buffer,) = expected.input_buffers(1)
    buffer[:] = 0.25
    logits = expected.infer(buffer, 4)
    expected.close()
    doubles = use_doubles(device_memory_bytes=1 << 20)
    with caplog.at_level(logging.WARNING, logger="pipelines.engines.migraphx_engine"):
        engine = build(doubles, tmp_path / "cache", allow_host_memory=True)
    assert any("MIGraphX put it in host memory" in r.getMessage() and "allow_host_memory = true" in r.getMessage()
               for r in caplog.records), caplog.text
    (buffer,) = engine.input_buffers(1)
    buffer[:] = 0.25
    np.testing.assert_allclose(engine.infer(buffer, 4), logits, rtol=1e-6)
    memory = engine.device_memory()
    assert memory is not None and memory.ours == DEVICE.device_bytes_in_use  # the buffers only
    engine.close()
    assert not DEVICE.leaks() and not DEVICE.leaks("migraphx")


def test_device_memory_is_the_gpus_and_ours(tmp_path: Path) -> None:
    doubles = use_doubles(device_memory_bytes=1 << 30)
    engine = build(doubles, tmp_path)
    engine.input_buffers(2)
    memory = engine.device_memory()
    assert memory is not None
    assert (memory.total, memory.used, memory.ours) == (1 << 30, DEVICE.device_bytes_in_use, DEVICE.device_bytes_in_use)
    buffers = 2 * (4 * 3 * 64 * 64 * 4 + 4 * INFO.num_classes * 4)
    assert memory.ours > buffers  # the program too
    engine.close()
    assert engine.device_memory() is None


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

    def enqueue(stream, operation: Callable[[], None], *args: object, **kwargs: object):
        def timed() -> None:
            start = time.monotonic()
            time.sleep(delay_s)
            operation()
            log.append((stream.handle, start, time.monotonic()))
        return original(stream, timed, *args, **kwargs)

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


def test_waiting_for_a_result_sleeps_instead_of_spinning_a_core(tmp_path: Path) -> None:
    """ROCm busy-waits in hipEventSynchronize unless the event has hipEventBlockingSync (and so does the
    double): the collect thread would burn a core for the whole inference, taking it from capture and
    preprocessing. The wait for 0.9 s of GPU work must sleep: every event it waits on has BlockingSync, and
    none spun, as the double records (the thread's CPU time would measure the machine as well)."""
    doubles = use_doubles(op_delay_s=0.3)
    engine = build(doubles, tmp_path)
    (buffer,) = engine.input_buffers(1)
    handle = engine.submit(buffer, 4)
    start = time.monotonic()
    engine.result(handle)
    wall = time.monotonic() - start
    engine.close()
    assert wall >= 0.8, "three device operations of 0.3 s each"
    waits = doubles.device.event_waits
    assert any(wait.pending for wait in waits), f"the result waited for no GPU work: {waits}"
    assert [wait for wait in waits if not wait.blocking_sync or wait.spins] == []


def cache_keys(cache: Path) -> list[dict[str, object]]:
    return [json.loads(path.read_text()) for path in sorted(cache.glob("*.json"))]


def test_the_cache_key_is_the_device_hip_reports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """HSA_XNACK changes the ISA MIGraphX compiles for (gfx90a:sramecc+:xnack- vs xnack+): each setting
    gets its own program, and switching back is a hit, not a failed load and a recompile every time."""
    doubles = use_doubles(compute_units=110, runtime_version=70253211)
    outcomes = []
    for xnack in ("0", "1", "0", "1"):
        monkeypatch.setenv("HSA_XNACK", xnack)
        engine = build(doubles, tmp_path)
        assert engine.build_report is not None
        outcomes.append(engine.build_report.cache)
        engine.close()
    assert outcomes == ["miss", "miss", "hit", "hit"]
    keys = cache_keys(tmp_path)
    assert {key["device_arch"] for key in keys} == {"gfx90a:sramecc+:xnack-", "gfx90a:sramecc+:xnack+"}
    assert {(key["compute_units"], key["hip_runtime_version"]) for key in keys} == {(110, 70253211)}
    assert {key["migraphx_version"] for key in keys} == {"2.15.0-double"}
    assert {(key["offload_copy"], key["fast_math"], key["exhaustive_tune"]) for key in keys} == {(False, True, False)}


def test_a_model_whose_only_change_is_its_sidecar_gets_its_own_program(tmp_path: Path) -> None:
    """The same graph bytes with other weights in its sidecar: a program compiled from the old weights must
    not be loaded for it."""
    doubles = use_doubles()
    models, scores = sidecar_twins(tmp_path / "models"), []
    for model in models:
        engine = build(doubles, tmp_path / "cache", model)
        assert engine.build_report is not None and engine.build_report.cache == "miss"
        (buffer,) = engine.input_buffers(1)
        buffer[:] = 0.0
        buffer[:, 0] = 1.0  # red
        scores.append(engine.infer(buffer, 4))
        engine.close()
    assert [score.argmax(axis=1).tolist() for score in scores] == [[0] * 4, [1] * 4]
    assert sorted(key["model_sha256"] for key in cache_keys(tmp_path / "cache")) == sorted(map(model_sha256, models))


def test_the_device_used_is_the_one_in_the_key_and_the_one_compiled_for(tmp_path: Path) -> None:
    """HIP numbers devices after HIP_VISIBLE_DEVICES (the kernel's KFD node order is another numbering):
    device 1 here is a gfx1100, and the program must be keyed on, and compiled for, that one."""
    doubles = use_doubles(device_count=2, arch=("gfx90a:sramecc+:xnack-", "gfx1100"))
    engine = build(doubles, tmp_path, device=1)
    (buffer,) = engine.input_buffers(1)
    buffer[:] = 0.5
    engine.infer(buffer, 4)
    engine.close()
    assert [key["device_arch"] for key in cache_keys(tmp_path)] == ["gfx1100"]


def test_a_cached_program_that_does_not_fit_is_rebuilt(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """An entry whose program lacks main:#output_0 (compiled with offload_copy=True, e.g. by an older
    build) is stale: rebuilt, never a crash at the first batch."""
    doubles = use_doubles()
    build(doubles, tmp_path).close()
    (entry,) = tmp_path.glob("*.mxr")
    program = doubles.migraphx.parse_onnx(str(SHAPES_MODEL), map_input_dims={"input": [4, 3, 64, 64]})
    program.compile(doubles.migraphx.get_target("gpu"), offload_copy=True)
    doubles.migraphx.save(program, str(entry), format="msgpack")
    del program
    with caplog.at_level(logging.WARNING):
        engine = build(doubles, tmp_path)
    assert engine.build_report is not None and engine.build_report.cache == "rebuilt"
    assert "main:#output_0" in caplog.text
    (buffer,) = engine.input_buffers(1)
    assert engine.infer(buffer, 4).shape == (4, INFO.num_classes)
    engine.close()


def test_a_program_with_a_half_input_is_refused(tmp_path: Path) -> None:
    """The engine feeds float32: a program whose input is half_type would read the bytes as halves."""
    doubles = use_doubles()
    model = colour_model(tmp_path / "half.onnx", half_input=True)
    with pytest.raises(EngineError, match=r"input of the compiled program does not fit: type half_type, "
                                          r"expected float_type"):
        build(doubles, tmp_path / "cache", model=model)
    assert not list((tmp_path / "cache").glob("*.mxr")), "a program that does not fit is not kept"


def test_close_frees_the_program_on_the_device(tmp_path: Path) -> None:
    """The compiled program's weights and scratch are device memory until the program is destroyed:
    close() must drop it, not leave it to the garbage collector."""
    doubles = use_doubles()
    engine = build(doubles, tmp_path)
    engine.input_buffers(2)
    assert DEVICE.leaks(owner="migraphx").device_allocations, "the program holds device memory"
    engine.close()
    assert not DEVICE.leaks(owner="migraphx") and not DEVICE.leaks()
    assert DEVICE.device_bytes_in_use == 0


def test_a_buffer_still_in_flight_cannot_be_submitted_again(tmp_path: Path) -> None:
    """Its upload would overwrite the device input that the GPU may still be reading, and its result()
    would then wait for the second run: refused with a clear error, and the first result is intact."""
    doubles = use_doubles(op_delay_s=0.1)
    engine = build(doubles, tmp_path)
    (buffer,) = engine.input_buffers(1)
    buffer[:] = 0.25
    handle = engine.submit(buffer, 4)
    with pytest.raises(EngineError, match="still in flight: collect its result"):
        engine.submit(buffer, 4)
    first = engine.result(handle)
    np.testing.assert_array_equal(engine.infer(buffer, 4), first)
    engine.close()


def test_each_codegen_variable_gets_its_own_program(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A program compiled with MLIR off, CK on, another GEMM provider... carries that: a start with another
    setting compiles its own, and the variables recorded are the ones the compile saw; a trace variable
    changes nothing."""
    doubles = use_doubles()
    for name in FACTS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("MIGRAPHX_TRACE_COMPILE", raising=False)
    outcomes = [outcome_of(build(doubles, tmp_path))]
    for name in FACTS_VARIABLES:
        monkeypatch.setenv(name, "1")
        outcomes.append(outcome_of(build(doubles, tmp_path)))
        monkeypatch.delenv(name)
    monkeypatch.setenv("MIGRAPHX_TRACE_COMPILE", "1")
    outcomes.append(outcome_of(build(doubles, tmp_path)))
    assert outcomes == ["miss"] + ["miss"] * len(FACTS_VARIABLES) + ["hit"]
    assert sorted(tuple(map(tuple, key["environment"])) for key in cache_keys(tmp_path)) == sorted(
        [(), *(((name, "1"),) for name in FACTS_VARIABLES)])


def test_another_miopen_build_gets_its_own_program(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """MIGraphX 2.15.0 stays 2.15.0 across five releases; the libraries' build ids do not."""
    doubles = use_doubles()
    maps, miopen = tmp_path / "maps", tmp_path / "lib" / "libMIOpen.so.1"
    miopen.parent.mkdir()
    maps.write_text(f"7f0000000000-7f0000001000 r-xp 00000000 08:01 42   {miopen}\n")
    monkeypatch.setattr(migraphx_identity, "PROC_MAPS", maps)
    outcomes = []
    for build_id in (b"\x01" * 20, b"\x01" * 20, b"\x02" * 20, b"\x01" * 20):
        write_elf(miopen, build_id)
        outcomes.append(outcome_of(build(doubles, tmp_path / "cache")))
    assert outcomes == ["miss", "hit", "miss", "hit"]
    assert sorted(dict(map(tuple, key["libraries"]))["libMIOpen.so.1"] for key in cache_keys(tmp_path / "cache")) == [
        "build-id:" + "01" * 20, "build-id:" + "02" * 20]


def outcome_of(engine: MigraphxEngine) -> str:
    engine.close()
    assert engine.build_report is not None
    return engine.build_report.cache


@pytest.mark.parametrize(("weights", "free_before", "free_after", "in_host"), [
    (300 << 20, 8 << 30, (8 << 30) - (400 << 20), False),  # weights and scratch on the device
    (300 << 20, 100 << 20, 100 << 20, True),  # nothing fitted: all in host memory
    (300 << 20, 200 << 20, 40 << 20, False),  # 160 MiB on the device: at least half the weights, not flagged
    (300 << 20, 120 << 20, 20 << 20, True),  # part of the weights fell back
    (36, 64 << 30, (64 << 30) - 180, False),  # a tiny model whose program is mostly code: not a false alarm
])
def test_a_program_is_in_host_memory_when_its_load_took_less_than_half_its_weights(
        weights: int, free_before: int, free_after: int, in_host: bool) -> None:
    placement = migraphx_engine.ProgramPlacement(weights, free_before, free_after, 64 << 30)
    assert placement.in_host_memory is in_host
    if in_host:
        with pytest.raises(EngineError, match="allow_host_memory = true runs it anyway"):
            migraphx_engine.check_placement(placement, 0, allow_host_memory=False)
    migraphx_engine.check_placement(placement, 0, allow_host_memory=True)  # a warning at most

"""The test doubles of the HIP runtime and of ``migraphx`` are strict where the real ones are.

Each test shows one rule failing as documented in ``tests/doubles`` (or one behaviour the engine relies
on, such as real asynchrony), so that an engine bug fails here rather than on a customer's GPU.
"""

from __future__ import annotations

import ctypes
import importlib
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from ctypes import POINTER, byref, c_char_p, c_int, c_size_t, c_uint, c_void_p, pointer
from pathlib import Path
from types import ModuleType

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from tests.conftest import SHAPES_MODEL
from tests.doubles import hip_runtime
from tests.doubles.device import DEVICE, DataRace, DeviceFault, EventWait, HipError
from tests.onnx_models import colour_model, colour_model_info

DOUBLES = Path(__file__).resolve().parent / "doubles"
DELAY = 0.2
H2D, D2H = hip_runtime.HIP_MEMCPY_HOST_TO_DEVICE, hip_runtime.HIP_MEMCPY_DEVICE_TO_HOST

SIGNATURES = {
    "hipGetDeviceCount": ([POINTER(c_int)], c_int),
    "hipSetDevice": ([c_int], c_int),
    "hipSetDeviceFlags": ([c_uint], c_int),
    "hipGetErrorString": ([c_int], c_char_p),
    "hipMalloc": ([POINTER(c_void_p), c_size_t], c_int),
    "hipFree": ([c_void_p], c_int),
    "hipMemGetInfo": ([POINTER(c_size_t), POINTER(c_size_t)], c_int),
    "hipHostMalloc": ([POINTER(c_void_p), c_size_t, c_uint], c_int),
    "hipHostFree": ([c_void_p], c_int),
    "hipMemcpyAsync": ([c_void_p, c_void_p, c_size_t, c_int, c_void_p], c_int),
    "hipStreamCreateWithFlags": ([POINTER(c_void_p), c_uint], c_int),
    "hipStreamDestroy": ([c_void_p], c_int),
    "hipStreamSynchronize": ([c_void_p], c_int),
    "hipEventCreateWithFlags": ([POINTER(c_void_p), c_uint], c_int),
    "hipEventRecord": ([c_void_p, c_void_p], c_int),
    "hipStreamWaitEvent": ([c_void_p, c_void_p, c_uint], c_int),
    "hipEventSynchronize": ([c_void_p], c_int),
    "hipEventQuery": ([c_void_p], c_int),
    "hipEventDestroy": ([c_void_p], c_int),
}


class Hip:
    """A minimal declared wrapper over the double, as the engine's bindings use it."""

    def __init__(self) -> None:
        self.lib = hip_runtime.HipLibrary()
        for name, (argtypes, restype) in SIGNATURES.items():
            function = getattr(self.lib, name)
            function.argtypes, function.restype = argtypes, restype

    def out(self, name: str, *args: object) -> int:
        value = c_void_p()
        assert getattr(self.lib, name)(pointer(value), *args) == 0
        return value.value or 0

    def malloc(self, nbytes: int) -> int:
        return self.out("hipMalloc", nbytes)

    def host_malloc(self, nbytes: int) -> int:
        return self.out("hipHostMalloc", nbytes, 0)

    def stream(self) -> int:
        return self.out("hipStreamCreateWithFlags", hip_runtime.HIP_STREAM_NON_BLOCKING)

    def event(self) -> int:
        return self.out("hipEventCreateWithFlags", hip_runtime.HIP_EVENT_DISABLE_TIMING)

    def copy(self, dst: int, src: int, nbytes: int, kind: int, stream: int) -> None:
        assert self.lib.hipMemcpyAsync(dst, src, nbytes, kind, stream) == 0

    def sync(self, stream: int) -> None:
        assert self.lib.hipStreamSynchronize(stream) == 0


def host_array(address: int, shape: tuple[int, ...]) -> np.ndarray:
    """A float32 numpy view of host memory at ``address`` (e.g. a hipHostMalloc buffer)."""
    count = int(np.prod(shape))
    return np.ctypeslib.as_array((ctypes.c_float * count).from_address(address)).reshape(shape)


@pytest.fixture(autouse=True)
def fresh_device() -> Iterator[None]:
    DEVICE.reset()
    yield
    DEVICE.reset()


@pytest.fixture
def hip() -> Hip:
    return Hip()


@pytest.fixture(scope="module")
def migraphx() -> Iterator[ModuleType]:
    """The migraphx double, imported as ``migraphx`` only for this module's tests."""
    sys.path.insert(0, str(DOUBLES))
    try:
        module = importlib.import_module("migraphx")
    finally:
        sys.path.remove(str(DOUBLES))
    assert "tests/doubles" in module.__file__
    yield module
    sys.modules.pop("migraphx", None)


@pytest.fixture(scope="module")
def colour(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return colour_model(tmp_path_factory.mktemp("model") / "colour.onnx", colour_model_info((8, 8)))


def reference(model: Path, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]


def frames(batch: int, seed: int, hw: tuple[int, int] = (8, 8)) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, 3, *hw)).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------
# HIP: declaring and calling functions


def test_calling_without_argtypes_raises() -> None:
    lib = hip_runtime.HipLibrary()
    with pytest.raises(TypeError, match="argtypes not declared"):
        lib.hipFree(0)


def test_argtypes_narrower_than_the_c_parameter_are_refused() -> None:
    lib = hip_runtime.HipLibrary()
    lib.hipFree.argtypes = [c_int]  # a 64-bit pointer passed as a C int
    with pytest.raises(TypeError, match="parameter 1 is a pointer"):
        lib.hipFree(0)
    lib.hipMalloc.argtypes = [POINTER(c_void_p), c_int]  # size_t declared as int
    with pytest.raises(TypeError, match="size_t"):
        lib.hipMalloc(pointer(c_void_p()), 16)


def test_arguments_are_converted_as_ctypes_does(hip: Hip) -> None:
    with pytest.raises(ctypes.ArgumentError, match="argument 2"):
        hip.lib.hipMalloc(pointer(c_void_p()), 1.5)
    with pytest.raises(ctypes.ArgumentError, match="argument 1"):
        hip.lib.hipMalloc(pointer(c_int()), 16)  # int* where void** is declared
    with pytest.raises(TypeError, match="takes 2 arguments"):
        hip.lib.hipMalloc(pointer(c_void_p()))
    out = c_void_p()
    assert hip.lib.hipMalloc(byref(out), 16) == 0 and out.value  # byref is accepted
    assert hip.lib.hipFree(out) == 0  # so is a c_void_p instance


def test_an_out_parameter_too_small_for_the_result_is_refused() -> None:
    lib = hip_runtime.HipLibrary()
    lib.hipMalloc.argtypes, lib.hipMalloc.restype = [c_void_p, c_size_t], c_int
    with pytest.raises(TypeError, match="points at 4 bytes; the function writes 8"):
        lib.hipMalloc(byref(c_int()), 16)


def test_error_string_needs_a_char_pointer_restype() -> None:
    lib = hip_runtime.HipLibrary()
    lib.hipGetErrorString.argtypes = [c_int]
    with pytest.raises(TypeError, match="const char"):
        lib.hipGetErrorString(1)  # restype left at c_int would truncate the pointer
    lib.hipGetErrorString.restype = c_char_p
    assert lib.hipGetErrorString(1) == b"invalid argument"
    assert lib.hipGetErrorString(400) == b"invalid resource handle"


def test_unknown_symbols_are_attribute_errors() -> None:
    with pytest.raises(AttributeError, match="undefined symbol: hipLaunchKernel"):
        hip_runtime.library.hipLaunchKernel  # noqa: B018


# ---------------------------------------------------------------------------------------------------------
# HIP: error codes and configuration


def test_no_device_visible(hip: Hip) -> None:
    DEVICE.reset(device_count=0)
    count = pointer(c_int(7))
    assert hip.lib.hipGetDeviceCount(count) == HipError.hipErrorNoDevice
    assert count.contents.value == 0
    assert hip.lib.hipMalloc(pointer(c_void_p()), 16) == HipError.hipErrorNoDevice


def test_device_count_and_set_device(hip: Hip) -> None:
    count = pointer(c_int())
    assert hip.lib.hipGetDeviceCount(count) == 0 and count.contents.value == 1
    assert hip.lib.hipSetDevice(0) == 0
    assert hip.lib.hipSetDevice(1) == HipError.hipErrorInvalidDevice


def test_set_device_flags_records_one_scheduling_mode_per_device(hip: Hip) -> None:
    DEVICE.reset(device_count=2)
    assert hip.lib.hipSetDeviceFlags(3) == HipError.hipErrorInvalidValue  # Spin | Yield: two scheduling modes
    assert hip.lib.hipSetDeviceFlags(0x20) == HipError.hipErrorInvalidValue  # no such flag
    assert hip.lib.hipSetDevice(1) == 0
    assert hip.lib.hipSetDeviceFlags(4 | 8) == 0  # BlockingSync | MapHost
    assert DEVICE.device_flags == {1: 12}


def test_out_of_memory_after_the_configured_bytes(hip: Hip) -> None:
    DEVICE.reset(device_memory_bytes=1000)
    first = hip.malloc(600)
    assert hip.lib.hipMalloc(pointer(c_void_p()), 600) == HipError.hipErrorOutOfMemory
    assert hip.lib.hipFree(first) == 0
    assert hip.lib.hipFree(hip.malloc(600)) == 0


def memory_info(hip: Hip) -> tuple[int, int]:
    free, total = c_size_t(), c_size_t()
    assert hip.lib.hipMemGetInfo(byref(free), byref(total)) == 0
    return free.value, total.value


def test_mem_get_info_follows_the_simulated_device_memory(hip: Hip) -> None:
    DEVICE.reset(device_memory_bytes=1000)
    assert memory_info(hip) == (1000, 1000)
    first = hip.malloc(600)
    hip.host_malloc(4096)  # pinned host memory is not device memory
    assert memory_info(hip) == (400, 1000)
    assert hip.lib.hipFree(first) == 0
    assert memory_info(hip) == (1000, 1000)
    DEVICE.reset()
    assert memory_info(hip) == (64 << 30, 64 << 30)  # unlimited: an MI210's 64 GiB
    assert hip.lib.hipMemGetInfo(None, byref(c_size_t())) == HipError.hipErrorInvalidValue


def test_freeing_with_the_wrong_function_fails(hip: Hip) -> None:
    device, pinned = hip.malloc(64), hip.host_malloc(64)
    assert hip.lib.hipFree(pinned) == HipError.hipErrorInvalidDevicePointer
    assert hip.lib.hipHostFree(device) == HipError.hipErrorInvalidValue
    assert hip.lib.hipFree(device) == 0 and hip.lib.hipHostFree(pinned) == 0
    assert hip.lib.hipFree(device) == HipError.hipErrorInvalidDevicePointer  # double free
    other = hip.malloc(64)
    assert hip.lib.hipMemcpyAsync(other, pinned, 64, H2D, hip.stream()) == HipError.hipErrorInvalidValue  # freed
    assert hip.lib.hipFree(None) == 0  # NULL is fine


def test_memcpy_checks_sides_ranges_kind_and_stream(hip: Hip) -> None:
    device, pinned, stream = hip.malloc(64), hip.host_malloc(64), hip.stream()
    copy = hip.lib.hipMemcpyAsync
    assert copy(device, pinned, 65, H2D, stream) == HipError.hipErrorInvalidValue  # past the device allocation
    assert copy(device + 8, pinned, 64, H2D, stream) == HipError.hipErrorInvalidValue
    assert copy(pinned, device, 64, H2D, stream) == HipError.hipErrorInvalidValue  # the kind lies
    assert copy(device, device, 64, H2D, stream) == HipError.hipErrorInvalidValue  # device memory as the host side
    assert copy(device, pinned, 64, 9, stream) == HipError.hipErrorInvalidMemcpyDirection
    assert copy(device, pinned, 64, H2D, device) == HipError.hipErrorInvalidHandle  # not a stream
    assert copy(device, pinned, 64, H2D, stream) == 0
    assert hip.lib.hipStreamDestroy(stream) == 0
    assert copy(device, pinned, 64, H2D, stream) == HipError.hipErrorInvalidHandle  # destroyed
    with pytest.raises(NotImplementedError, match="null stream"):
        copy(device, pinned, 64, H2D, None)


def test_device_memory_is_not_host_addressable_and_starts_as_nan(hip: Hip) -> None:
    device, stream = hip.malloc(16), hip.stream()
    out = np.zeros(4, dtype=np.float32)
    hip.copy(out.ctypes.data, device, 16, D2H, stream)
    assert np.isnan(out).all()  # uninitialised device memory, like hipMalloc's
    assert DEVICE.region(device, 16).kind.value == "device"


def test_faults_are_sticky(hip: Hip) -> None:
    stream = hip.stream()

    def fault() -> None:
        raise DeviceFault(HipError.hipErrorIllegalAddress, "test")

    DEVICE.enqueue(DEVICE.stream(stream), fault)
    assert hip.lib.hipStreamSynchronize(stream) == HipError.hipErrorIllegalAddress
    assert hip.lib.hipMalloc(pointer(c_void_p()), 16) == HipError.hipErrorIllegalAddress


# ---------------------------------------------------------------------------------------------------------
# HIP: asynchrony and ordering


def test_pinned_copies_are_asynchronous_and_read_the_source_when_they_execute(hip: Hip) -> None:
    DEVICE.reset(op_delay_s=DELAY)
    device, pinned, stream = hip.malloc(16), hip.host_malloc(16), hip.stream()
    source = host_array(pinned, (4,))
    source[:] = 1.0
    started = time.perf_counter()
    hip.copy(device, pinned, 16, H2D, stream)
    assert time.perf_counter() - started < DELAY / 2  # returned before the copy ran
    source[:] = 2.0  # still queued: the copy will read this
    out = host_array(hip.host_malloc(16), (4,))
    hip.copy(out.ctypes.data, device, 16, D2H, stream)
    assert hip.lib.hipStreamSynchronize(stream) == 0
    assert (out == 2.0).all()
    assert DEVICE.pageable_copies == 0


def test_pageable_copies_are_synchronous_as_hip_documents(hip: Hip) -> None:
    device, stream = hip.malloc(16), hip.stream()
    source = np.ones(4, dtype=np.float32)
    hip.copy(device, source.ctypes.data, 16, H2D, stream)
    source[:] = 2.0  # the pageable source was staged at the call
    out = np.zeros(4, dtype=np.float32)
    hip.copy(out.ctypes.data, device, 16, D2H, stream)  # returns when done
    assert (out == 1.0).all()
    assert DEVICE.pageable_copies == 2


def test_events_order_work_across_streams(hip: Hip) -> None:
    DEVICE.reset(op_delay_s=DELAY)
    device, pinned = hip.malloc(16), hip.host_malloc(16)
    copy_stream, compute_stream, event = hip.stream(), hip.stream(), hip.event()
    host_array(pinned, (4,))[:] = 5.0
    out = host_array(hip.host_malloc(16), (4,))
    assert hip.lib.hipEventQuery(event) == 0  # never recorded: complete
    hip.copy(device, pinned, 16, H2D, copy_stream)
    assert hip.lib.hipEventRecord(event, copy_stream) == 0
    assert hip.lib.hipEventQuery(event) == HipError.hipErrorNotReady
    assert hip.lib.hipStreamWaitEvent(compute_stream, event, 1) == HipError.hipErrorInvalidValue  # flags must be 0
    assert hip.lib.hipStreamWaitEvent(compute_stream, event, 0) == 0
    hip.copy(out.ctypes.data, device, 16, D2H, compute_stream)
    assert hip.lib.hipStreamSynchronize(compute_stream) == 0
    assert (out == 5.0).all()  # the read on the second stream waited for the first stream's write
    assert hip.lib.hipEventSynchronize(event) == 0 and hip.lib.hipEventQuery(event) == 0


def test_other_threads_progress_while_the_caller_waits(hip: Hip) -> None:
    DEVICE.reset(op_delay_s=DELAY)
    device, pinned, stream = hip.malloc(16), hip.host_malloc(16), hip.stream()
    ticks = 0
    stop = threading.Event()

    def count() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            time.sleep(0.001)

    counter = threading.Thread(target=count)
    counter.start()
    hip.copy(device, pinned, 16, H2D, stream)
    hip.sync(stream)
    stop.set()
    counter.join()
    assert ticks > 10


def test_leaks_list_what_was_not_released(hip: Hip) -> None:
    device, pinned, stream, event = hip.malloc(8), hip.host_malloc(8), hip.stream(), hip.event()
    leaks = DEVICE.leaks()
    assert leaks.device_allocations == [device] and leaks.pinned_allocations == [pinned]
    assert leaks.streams == [stream] and leaks.events == [event]
    assert hip.lib.hipFree(device) == 0 and hip.lib.hipHostFree(pinned) == 0
    assert hip.lib.hipStreamDestroy(stream) == 0 and hip.lib.hipEventDestroy(event) == 0
    assert not DEVICE.leaks()
    assert hip.lib.hipEventDestroy(event) == HipError.hipErrorInvalidHandle


READ_AFTER_HOST_FREE = """
from ctypes import POINTER, c_float, c_size_t, c_uint, c_void_p, pointer
import numpy as np
from tests.doubles.hip_runtime import library as hip
hip.hipHostMalloc.argtypes, hip.hipHostFree.argtypes = [POINTER(c_void_p), c_size_t, c_uint], [c_void_p]
address = c_void_p()
assert hip.hipHostMalloc(pointer(address), 64, 0) == 0
view = np.ctypeslib.as_array((c_float * 16).from_address(address.value))
view[:] = 1.0
print("readable", view.sum(), flush=True)
assert hip.hipHostFree(address) == 0
print("freed", flush=True)
print(view.sum(), flush=True)
"""


def test_pinned_memory_freed_under_a_view_is_unreadable() -> None:
    """As on ROCm: hipHostFree unmaps the memory, and a numpy array still viewing it segfaults when read
    (before, the double kept freed pinned memory readable, so a use after free went unseen)."""
    result = subprocess.run([sys.executable, "-c", READ_AFTER_HOST_FREE], capture_output=True, text=True,
                            timeout=60, cwd=Path(__file__).resolve().parent.parent)
    assert result.stdout.split() == ["readable", "16.0", "freed"], result.stderr
    assert result.returncode == -signal.SIGSEGV, result.stderr


def test_freed_pinned_addresses_are_never_handed_out_again(hip: Hip) -> None:
    freed = hip.host_malloc(1 << 16)
    assert hip.lib.hipHostFree(freed) == 0
    assert all(hip.host_malloc(1 << 16) != freed for _ in range(8))
    assert hip.lib.hipMemcpyAsync(hip.malloc(64), freed, 64, H2D, hip.stream()) == HipError.hipErrorInvalidValue


def test_destroying_an_event_another_thread_waits_on_fails_loudly(hip: Hip) -> None:
    """ROCm frees the event under the waiting thread (a crash); the double refuses and records it."""
    DEVICE.reset(op_delay_s=1.0)
    device, pinned, stream = hip.malloc(16), hip.host_malloc(16), hip.stream()
    event = hip.out("hipEventCreateWithFlags", hip_runtime.HIP_EVENT_BLOCKING_SYNC)
    hip.copy(device, pinned, 16, H2D, stream)
    assert hip.lib.hipEventRecord(event, stream) == 0
    codes: list[int] = []
    waiter = threading.Thread(target=lambda: codes.append(hip.lib.hipEventSynchronize(event)))
    waiter.start()
    time.sleep(0.2)  # the copy takes 1 s: the waiter is inside hipEventSynchronize
    assert hip.lib.hipEventDestroy(event) == HipError.hipErrorInvalidHandle
    assert len(DEVICE.violations) == 1 and "while 1 host thread(s) wait on it" in DEVICE.violations[0]
    waiter.join()
    assert codes == [0], "the waiter is not harmed"
    assert hip.lib.hipEventDestroy(event) == 0  # once nobody waits


# ---------------------------------------------------------------------------------------------------------
# migraphx: parsing, targets, shapes


def test_parse_fixes_the_batch(migraphx: ModuleType, colour: Path) -> None:
    def batch(**options: object) -> int:
        return migraphx.parse_onnx(str(colour), **options).get_parameter_shapes()["input"].lens()[0]

    assert batch() == 1
    assert batch(default_dim_value=4) == 4
    assert batch(map_input_dims={"input": [3, 3, 8, 8]}) == 3
    fixed = colour_model(colour.parent / "fixed.onnx", colour_model_info((8, 8), batch=2))
    assert migraphx.parse_onnx(str(fixed)).get_output_shapes()[0].lens() == [2, 3]
    overridden = migraphx.parse_onnx(str(fixed), map_input_dims={"input": [5, 3, 8, 8]})
    assert overridden.get_output_shapes()[0].lens() == [5, 3]
    dyn = migraphx.shape.dynamic_dimension(1, 4)
    with pytest.raises(RuntimeError, match="both default_dim_value and default_dyn_dim_value"):
        migraphx.parse_onnx(str(colour), default_dim_value=2, default_dyn_dim_value=dyn)
    with pytest.raises(RuntimeError, match="both map_input_dims and map_dyn_input_dims"):
        migraphx.parse_onnx(str(colour), map_input_dims={"input": [1, 3, 8, 8]}, map_dyn_input_dims={"input": [dyn]})


def test_targets(migraphx: ModuleType, colour: Path) -> None:
    with pytest.raises(RuntimeError, match="libmigraphx_cpu"):
        migraphx.get_target("cpu")
    DEVICE.reset(device_count=0)
    with pytest.raises(RuntimeError, match="no ROCm-capable device"):
        migraphx.parse_onnx(str(colour)).compile(migraphx.get_target("gpu"))


def test_compile_and_parameters(migraphx: ModuleType, colour: Path) -> None:
    prog = migraphx.parse_onnx(str(colour), default_dim_value=2)
    assert not prog.is_compiled()
    assert prog.compile(migraphx.get_target("gpu"), offload_copy=False) is None
    assert prog.is_compiled()
    shapes = prog.get_parameter_shapes()
    assert set(shapes) == set(prog.get_parameter_names()) == {"input", "main:#output_0"}
    assert shapes["main:#output_0"] == prog.get_output_shapes()[0]
    assert shapes["input"].lens() == [2, 3, 8, 8] and shapes["input"].type_string() == "float_type"
    assert shapes["input"].strides() == [192, 64, 8, 1] and shapes["input"].elements() == 384
    assert shapes["input"].bytes() == 384 * 4 and shapes["input"].type() == migraphx.shape.type_t.float_type
    with pytest.raises(RuntimeError, match="already compiled"):
        prog.compile(migraphx.get_target("gpu"))


def test_arguments_keep_dtype_and_shape(migraphx: ModuleType) -> None:
    for dtype in (np.float32, np.float16, np.int64, np.bool_):
        array = np.arange(6).reshape(2, 3).astype(dtype)
        back = np.array(migraphx.argument(array))
        assert back.dtype == dtype and back.shape == (2, 3) and (back == array).all()
    with pytest.raises(RuntimeError, match="Unsupported data type"):
        migraphx.argument(np.zeros(2, dtype=np.complex64))
    s = migraphx.shape(type="float_type", lens=[2, 2])
    array = np.arange(4, dtype=np.float32).reshape(2, 2)
    assert (np.asarray(migraphx.argument_from_pointer(s, array.ctypes.data)) == array).all()


# ---------------------------------------------------------------------------------------------------------
# migraphx: run


@pytest.mark.parametrize("target", ["ref", "gpu"])
def test_run_matches_onnxruntime(migraphx: ModuleType, colour: Path, target: str) -> None:
    prog = migraphx.parse_onnx(str(colour), default_dim_value=2)
    prog.compile(migraphx.get_target(target))
    x = frames(2, seed=1)
    np.testing.assert_allclose(np.array(prog.run({"input": x})[0]), reference(colour, x), rtol=1e-6, atol=1e-6)


def test_run_converts_nothing(migraphx: ModuleType, colour: Path) -> None:
    prog = migraphx.parse_onnx(str(colour), default_dim_value=2)
    prog.compile(migraphx.get_target("ref"))
    x = frames(2, seed=1)
    wrong = {
        "float64": x.astype(np.float64),
        "batch": frames(3, seed=1),
        "non-contiguous": np.ascontiguousarray(x.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2),
    }
    for array in wrong.values():
        with pytest.raises(RuntimeError, match=r"Incorrect shape \{.*\} for parameter: input should be: float_type"):
            prog.run({"input": array})
    with pytest.raises(RuntimeError, match="Parameter not found: input"):
        prog.run({"x": x})
    with pytest.raises(RuntimeError, match="Unable to cast"):
        prog.run({"input": x.tolist()})


def test_results_live_in_scratch_that_the_next_run_overwrites(migraphx: ModuleType, colour: Path) -> None:
    prog = migraphx.parse_onnx(str(colour), default_dim_value=2)
    prog.compile(migraphx.get_target("ref"))
    first = np.asarray(prog.run({"input": frames(2, seed=1)})[0])
    kept = first.copy()
    second = np.array(prog.run({"input": frames(2, seed=2)})[0])
    assert (first == second).all() and not (first == kept).all()


def test_arguments_do_not_keep_their_buffer_alive(migraphx: ModuleType, colour: Path) -> None:
    prog = migraphx.parse_onnx(str(colour), default_dim_value=2)
    prog.compile(migraphx.get_target("ref"))
    dangling = migraphx.argument(frames(2, seed=1))  # the array is freed right away
    with pytest.raises(RuntimeError, match="has been freed"):
        prog.run({"input": dangling})


def test_fp16_is_as_lossy_as_migraphx_half(migraphx: ModuleType) -> None:
    """A real MIGraphX 2.15's ref target gives 2.6e-2 scaled error on this model with seed 7 (its half
    truncates every conversion and product); rounding to nearest would give about 2e-3."""
    x = frames(4, seed=7, hw=(64, 64))
    results = []
    for fp16 in (False, True):
        prog = migraphx.parse_onnx(str(SHAPES_MODEL), map_input_dims={"input": [4, 3, 64, 64]})
        if fp16:
            migraphx.quantize_fp16(prog)
        prog.compile(migraphx.get_target("ref"))
        results.append(np.array(prog.run({"input": x})[0]))
    expected = reference(SHAPES_MODEL, x)
    np.testing.assert_allclose(results[0], expected, atol=1e-5)
    error = np.abs(results[1] - expected).max() / max(1.0, np.abs(expected).max())
    assert 1.5e-2 < error < 4e-2, f"scaled error {error:.2e}"
    assert (results[1].argmax(1) == expected.argmax(1)).all() and results[1].dtype == np.float32


def test_half_truncation_in_the_graph_matches_the_bits(migraphx: ModuleType) -> None:
    """The ONNX nodes that truncate activations agree with dropping the low 13 bits of a float32 (and the
    fixed 2**-24 spacing of subnormal halves), including at powers of two where log2 rounds."""
    rng = np.random.default_rng(0)
    powers = np.float32(2.0) ** np.arange(-26, 16, dtype=np.float32)
    scattered = rng.standard_normal(20000).astype(np.float32) * 10.0 ** rng.integers(-8, 4, 20000)
    edges = [powers, -powers, np.nextafter(powers, np.float32(0)), [0.0, -0.0, 65519.0]]
    values = np.concatenate([scattered, *edges]).astype(np.float32)
    constants = [onnx.numpy_helper.from_array(np.array(value, np.float32), name)
                 for name, value in migraphx._HALF_CONSTANTS.items()]
    graph = onnx.helper.make_graph(
        migraphx._truncation_nodes("x", "y"), "truncate",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [len(values)])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [len(values)])], initializer=constants)
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    model.ir_version = 8
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"x": values})
    np.testing.assert_array_equal(got, migraphx._truncate_to_half(values))
    assert migraphx._truncate_to_half(np.float32([1.00097, -3.3]))[0] == 1.0, "toward zero, not to nearest"


def test_save_and_load(migraphx: ModuleType, colour: Path, tmp_path: Path) -> None:
    prog = migraphx.parse_onnx(str(colour), default_dim_value=2)
    migraphx.quantize_fp16(prog)
    prog.compile(migraphx.get_target("gpu"), offload_copy=True)
    x = frames(2, seed=4)
    expected = np.array(prog.run({"input": x})[0])
    path = tmp_path / "colour.mxr"
    migraphx.save(prog, str(path))
    loaded = migraphx.load(str(path))
    assert loaded.is_compiled() and set(loaded.get_parameter_names()) == {"input"}
    np.testing.assert_array_equal(np.array(loaded.run({"input": x})[0]), expected)
    with pytest.raises(RuntimeError):
        migraphx.load(str(path), format="json")
    truncated = tmp_path / "truncated.mxr"
    truncated.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(RuntimeError):
        migraphx.load(str(truncated))
    migraphx.save(prog, str(tmp_path / "colour.json"), format="json")
    assert migraphx.load(str(tmp_path / "colour.json"), format="json").is_compiled()
    with pytest.raises(RuntimeError):
        migraphx.load(str(tmp_path / "colour.json"))


def test_gpu_helpers_copy_synchronously(migraphx: ModuleType) -> None:
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    on_gpu = migraphx.to_gpu(migraphx.argument(array))
    with pytest.raises(RuntimeError, match="device memory"):
        np.asarray(on_gpu)
    np.testing.assert_array_equal(np.array(migraphx.from_gpu(on_gpu)), array)
    with pytest.raises(RuntimeError, match="requires Src buffer to be on the GPU"):
        migraphx.from_gpu(migraphx.argument(array))


# ---------------------------------------------------------------------------------------------------------
# migraphx: offload_copy=False and run_async on the simulated device


class DevicePipeline:
    """Device buffers for one program compiled with offload_copy=False, and the HIP calls around it."""

    def __init__(self, migraphx: ModuleType, hip: Hip, model: Path, batch: int) -> None:
        self.prog = migraphx.parse_onnx(str(model), default_dim_value=batch)
        self.prog.compile(migraphx.get_target("gpu"), offload_copy=False)
        self.hip, self.migraphx = hip, migraphx
        shapes = self.prog.get_parameter_shapes()
        self.input_shape, self.output_shape = shapes["input"], shapes["main:#output_0"]
        self.d_input, self.d_output = hip.malloc(self.input_shape.bytes()), hip.malloc(self.output_shape.bytes())
        self.pinned_in = host_array(hip.host_malloc(self.input_shape.bytes()), tuple(self.input_shape.lens()))
        self.pinned_out = host_array(hip.host_malloc(self.output_shape.bytes()), tuple(self.output_shape.lens()))

    def params(self) -> dict[str, object]:
        pointer_to = self.migraphx.argument_from_pointer
        return {
            "input": pointer_to(self.input_shape, self.d_input),
            "main:#output_0": pointer_to(self.output_shape, self.d_output),
        }

    def run(self, x: np.ndarray, stream: int) -> list[object]:
        """Copy in, run, copy out, all queued on ``stream``."""
        self.pinned_in[:] = x
        self.hip.copy(self.d_input, self.pinned_in.ctypes.data, self.input_shape.bytes(), H2D, stream)
        results = self.prog.run_async(self.params(), stream, "ihipStream_t")
        self.hip.copy(self.pinned_out.ctypes.data, self.d_output, self.output_shape.bytes(), D2H, stream)
        return results


def test_offload_copy_false_demands_device_buffers(migraphx: ModuleType, hip: Hip, colour: Path) -> None:
    pipe = DevicePipeline(migraphx, hip, colour, batch=2)
    x = frames(2, seed=1)
    with pytest.raises(RuntimeError, match="Parameter not found: main:#output_0"):
        pipe.prog.run({"input": migraphx.argument_from_pointer(pipe.input_shape, pipe.d_input)})
    with pytest.raises(RuntimeError, match="offload_copy=False"):
        pipe.prog.run({**pipe.params(), "input": x})  # a host array where the GPU reads


def test_run_async_queues_on_the_callers_stream(migraphx: ModuleType, hip: Hip, colour: Path) -> None:
    DEVICE.reset(op_delay_s=DELAY)
    pipe = DevicePipeline(migraphx, hip, colour, batch=2)
    stream, x = hip.stream(), frames(2, seed=5)
    started = time.perf_counter()
    # The input reaches the device only when the queued copy runs: the program must read it then.
    results = pipe.run(x, stream)
    assert time.perf_counter() - started < DELAY  # nothing waited
    with pytest.raises(RuntimeError, match="device memory"):
        np.asarray(results[0])
    hip.sync(stream)
    np.testing.assert_allclose(pipe.pinned_out, reference(colour, x), rtol=1e-6, atol=1e-6)
    with pytest.raises(TypeError):
        pipe.prog.run_async(pipe.params(), stream)  # all three arguments are required
    with pytest.raises(RuntimeError, match="ihipStream_t"):
        pipe.prog.run_async(pipe.params(), stream, "hipStream_t")
    assert not DEVICE.faults


def test_overlapping_executions_of_one_program_are_refused(migraphx: ModuleType, hip: Hip, colour: Path) -> None:
    DEVICE.reset(op_delay_s=DELAY)
    pipe = DevicePipeline(migraphx, hip, colour, batch=2)
    first, second, event = hip.stream(), hip.stream(), hip.event()
    pipe.prog.run_async(pipe.params(), first, "ihipStream_t")
    with pytest.raises(RuntimeError, match="only one execution per program"):
        pipe.prog.run_async(pipe.params(), second, "ihipStream_t")
    assert hip.lib.hipEventRecord(event, first) == 0
    assert hip.lib.hipStreamWaitEvent(second, event, 0) == 0
    pipe.prog.run_async(pipe.params(), second, "ihipStream_t")  # ordered by the event
    hip.sync(second)
    pipe.prog.run_async(pipe.params(), first, "ihipStream_t")  # ordered: the host waited for it
    hip.sync(first)


def test_double_buffered_pipeline_matches_onnxruntime(migraphx: ModuleType, hip: Hip, colour: Path) -> None:
    DEVICE.reset(op_delay_s=0.01)
    pipe = DevicePipeline(migraphx, hip, colour, batch=2)
    stream = hip.stream()
    for seed in range(3):
        x = frames(2, seed=seed)
        pipe.run(x, stream)
        hip.sync(stream)
        np.testing.assert_allclose(pipe.pinned_out, reference(colour, x), rtol=1e-6, atol=1e-6)
    assert not DEVICE.faults and DEVICE.pageable_copies == 0


# ---------------------------------------------------------------------------------------------------------
# races, waiting, device identity, the GIL, program memory


def test_a_copy_over_an_input_a_kernel_may_still_read_is_a_data_race(migraphx: ModuleType, hip: Hip,
                                                                       colour: Path) -> None:
    """A buffer re-submitted while in flight: its upload on the copy stream overwrites the device input
    that the previous run on the compute stream may still be reading. A GPU would silently corrupt it."""
    DEVICE.reset(op_delay_s=DELAY)
    pipe = DevicePipeline(migraphx, hip, colour, batch=2)
    copy_stream, compute_stream, copied = hip.stream(), hip.stream(), hip.event()
    hip.copy(pipe.d_input, pipe.pinned_in.ctypes.data, pipe.input_shape.bytes(), H2D, copy_stream)
    assert hip.lib.hipEventRecord(copied, copy_stream) == 0
    assert hip.lib.hipStreamWaitEvent(compute_stream, copied, 0) == 0
    pipe.prog.run_async(pipe.params(), compute_stream, "ihipStream_t")
    with pytest.raises(DataRace, match="write-after-read race"):
        hip.lib.hipMemcpyAsync(pipe.d_input, pipe.pinned_in.ctypes.data, pipe.input_shape.bytes(), H2D, copy_stream)
    hip.sync(compute_stream)  # once the host has seen the run finish, the copy is ordered after it
    hip.copy(pipe.d_input, pipe.pinned_in.ctypes.data, pipe.input_shape.bytes(), H2D, copy_stream)
    hip.sync(copy_stream)


def test_a_kernel_that_does_not_wait_for_its_upload_is_a_data_race(migraphx: ModuleType, hip: Hip,
                                                                   colour: Path) -> None:
    DEVICE.reset(op_delay_s=DELAY)
    pipe = DevicePipeline(migraphx, hip, colour, batch=2)
    copy_stream, compute_stream = hip.stream(), hip.stream()
    hip.copy(pipe.d_input, pipe.pinned_in.ctypes.data, pipe.input_shape.bytes(), H2D, copy_stream)
    with pytest.raises(RuntimeError, match="read-after-write race"):  # no hipStreamWaitEvent in between
        pipe.prog.run_async(pipe.params(), compute_stream, "ihipStream_t")
    hip.sync(copy_stream)


@pytest.mark.parametrize("flags, busy", [(hip_runtime.HIP_EVENT_DISABLE_TIMING, True),
                                         (hip_runtime.HIP_EVENT_DISABLE_TIMING | hip_runtime.HIP_EVENT_BLOCKING_SYNC,
                                          False)])
def test_event_synchronize_spins_unless_blocking_sync(hip: Hip, flags: int, busy: bool) -> None:
    """As ROCm's runtime: without hipEventBlockingSync the waiting thread keeps a core busy (it hashes until the
    copy is done), with it the thread sleeps. Asserted on what the double records of the wait, not on the
    thread's share of a CPU, which a busy machine changes (0.14 s of CPU in a 0.41 s spin on one)."""
    DEVICE.reset(op_delay_s=0.4)
    stream, device, pinned = hip.stream(), hip.malloc(64), hip.host_malloc(64)
    event = hip.out("hipEventCreateWithFlags", flags)
    hip.copy(device, pinned, 64, H2D, stream)
    assert hip.lib.hipEventRecord(event, stream) == 0
    start = time.monotonic()
    assert hip.lib.hipEventSynchronize(event) == 0
    assert time.monotonic() - start >= 0.35, "the wait lasts until the copy is done"
    (wait,) = DEVICE.event_waits
    assert (wait.event, wait.blocking_sync, wait.pending) == (event, not busy, True)
    assert wait.spins > 0 if busy else wait.spins == 0, wait
    assert hip.lib.hipEventSynchronize(event) == 0  # done already: nothing to wait for, no spin either way
    assert DEVICE.event_waits[1:] == [EventWait(event, blocking_sync=not busy, pending=False, spins=0)]


class DeviceProp(ctypes.Structure):
    """Just the prefix of hipDeviceProp_tR0600 up to multiProcessorCount: too small to be written to."""

    _fields_ = [("name", ctypes.c_char * 256), ("rest", ctypes.c_char * 136)]


def test_device_properties_are_written_where_the_header_puts_them(monkeypatch: pytest.MonkeyPatch) -> None:
    DEVICE.reset(device_count=2, arch=("gfx90a:sramecc+:xnack-", "gfx1100"), compute_units=96)
    lib = hip_runtime.HipLibrary()
    get = lib.hipGetDevicePropertiesR0600
    get.argtypes, get.restype = [c_void_p, c_int], c_int
    buffer = ctypes.create_string_buffer(1472)
    assert get(buffer, 0) == 0
    assert buffer.raw[1160:1160 + 23] == b"gfx90a:sramecc+:xnack-\0"
    assert int.from_bytes(buffer.raw[388:392], "little") == 96
    monkeypatch.setenv("HSA_XNACK", "1")  # ROCm turns xnack on where the GPU supports it
    assert get(buffer, 0) == 0 and buffer.raw[1160:1182] == b"gfx90a:sramecc+:xnack+"
    assert get(buffer, 1) == 0 and buffer.raw[1160:1168] == b"gfx1100\0"
    assert get(buffer, 2) == HipError.hipErrorInvalidDevice
    with pytest.raises(TypeError, match="points at 392 bytes; the function writes 1472"):
        get(ctypes.byref(DeviceProp()), 0)
    version = lib.hipRuntimeGetVersion
    version.argtypes, version.restype = [POINTER(c_int)], c_int
    value = c_int()
    assert version(pointer(value)) == 0 and value.value == 70226015


def test_the_current_device_is_per_thread(hip: Hip) -> None:
    DEVICE.reset(device_count=2)
    assert hip.lib.hipSetDevice(1) == 0 and DEVICE.current() == 1
    seen = []
    thread = threading.Thread(target=lambda: seen.append(DEVICE.current()))
    thread.start()
    thread.join()
    assert seen == [0], "a new thread starts on device 0"


def test_child_processes_see_the_same_device(tmp_path: Path) -> None:
    DEVICE.reset(device_count=3, arch=("gfx942:sramecc+:xnack-",), compute_units=304)
    script = "from tests.doubles.device import DEVICE as D; print(D.device_count, D.settings.arch_of(2), " \
             "D.settings.compute_units)"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parent.parent).stdout
    assert out.split() == ["3", "gfx942:sramecc+:xnack-", "304"]


@pytest.mark.parametrize("step", ["parse", "compile", "load"])
def test_parse_compile_and_load_hold_the_gil(migraphx: ModuleType, colour: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch, step: str) -> None:
    """As the real bindings (no gil_scoped_release): no other Python thread runs meanwhile."""
    saved = tmp_path / "p.mxr"
    if step == "load":
        program = migraphx.parse_onnx(str(colour), default_dim_value=2)
        program.compile(migraphx.get_target("ref"))
        migraphx.save(program, str(saved))
    monkeypatch.setenv(f"MIGRAPHX_DOUBLE_{step.upper()}_S", "0.6")
    ticks: list[float] = []
    stop = threading.Event()

    def tick() -> None:
        while not stop.is_set():
            ticks.append(time.monotonic())
            time.sleep(0.005)

    thread = threading.Thread(target=tick)
    thread.start()
    time.sleep(0.05)
    if step == "load":
        migraphx.load(str(saved))
    else:
        program = migraphx.parse_onnx(str(colour), default_dim_value=2)
        if step == "compile":
            program.compile(migraphx.get_target("ref"))
    stop.set()
    thread.join()
    assert max(np.diff(ticks)) >= 0.55, "another thread ran while the bindings held the GIL"


def test_a_gpu_program_holds_device_memory_until_destroyed(migraphx: ModuleType, colour: Path,
                                                           tmp_path: Path) -> None:
    program = migraphx.parse_onnx(str(colour), default_dim_value=2)
    program.compile(migraphx.get_target("gpu"), offload_copy=False)
    weights = 3 * 3 * 4
    assert DEVICE.leaks(owner="migraphx").device_allocations and DEVICE.device_bytes_in_use > weights
    migraphx.save(program, str(tmp_path / "p.mxr"))
    del program
    assert DEVICE.device_bytes_in_use == 0
    loaded = migraphx.load(str(tmp_path / "p.mxr"))
    assert DEVICE.device_bytes_in_use > weights
    del loaded
    assert DEVICE.device_bytes_in_use == 0


def test_a_gpu_program_that_does_not_fit_falls_back_to_host_memory_and_runs_slowly(
        migraphx: ModuleType, colour: Path, tmp_path: Path) -> None:
    """MIGraphX 2.15's allocate_gpu: hipMalloc fails, hipHostMalloc succeeds, no error (MIGRAPHX_FACTS.md)."""
    def compiled_and_timed() -> tuple[object, float]:
        program = migraphx.parse_onnx(str(colour), default_dim_value=2)
        program.compile(migraphx.get_target("gpu"))
        x = frames(2, seed=1)
        started = time.perf_counter()
        result = np.array(program.run({"input": x})[0])
        np.testing.assert_allclose(result, reference(colour, x), rtol=1e-5)
        return program, time.perf_counter() - started

    on_device, fast = compiled_and_timed()
    del on_device
    DEVICE.reset(device_memory_bytes=16)
    in_host, slow = compiled_and_timed()
    assert DEVICE.device_bytes_in_use == 0 and DEVICE.leaks(owner="migraphx").pinned_allocations
    assert slow >= 0.05 and slow > fast, (fast, slow)  # at least the double's 50 ms per run in host memory
    migraphx.save(in_host, str(tmp_path / "p.mxr"))
    del in_host
    assert not DEVICE.leaks(owner="migraphx").pinned_allocations
    loaded = migraphx.load(str(tmp_path / "p.mxr"))
    assert DEVICE.device_bytes_in_use == 0 and DEVICE.leaks(owner="migraphx").pinned_allocations
    del loaded
    assert not DEVICE.leaks(owner="migraphx").pinned_allocations
    assert migraphx.allocate_gpu(migraphx.shape(type="float_type", lens=[64])) is not None  # the helper too


def test_a_program_compiled_for_another_isa_does_not_load(migraphx: ModuleType, colour: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    program = migraphx.parse_onnx(str(colour), default_dim_value=2)
    program.compile(migraphx.get_target("gpu"), offload_copy=False)
    migraphx.save(program, str(tmp_path / "p.mxr"))
    monkeypatch.setenv("HSA_XNACK", "1")
    with pytest.raises(RuntimeError, match=r"Failed to load module: code objects for gfx90a:sramecc\+:xnack-"):
        migraphx.load(str(tmp_path / "p.mxr"))

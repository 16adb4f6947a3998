"""The few HIP runtime calls the MIGraphX engine needs, through ctypes.

Why ctypes: a ctypes call into a shared library releases the GIL for its whole duration, so
``hipEventSynchronize`` waits for the GPU while the capture and preprocess threads keep running. (The
MIGraphX bindings never release the GIL; their ``run_async`` only enqueues, which is quick.) hip-python
would do the same but is one more ROCm-versioned package to install; these dozen calls are stable C API.
Every ``argtypes``/``restype`` is declared: without them ctypes would pass 64-bit pointers as C ints.
"""

from __future__ import annotations

import ctypes
import importlib
from ctypes import POINTER, c_char_p, c_int, c_size_t, c_uint, c_void_p
from dataclasses import dataclass
from typing import Any

from pipelines.engines import hip_device_prop
from pipelines.engines.hip_device_prop import HipDeviceProp

HIP_MEMCPY_HOST_TO_DEVICE = 1
HIP_MEMCPY_DEVICE_TO_HOST = 2
HIP_STREAM_NON_BLOCKING = 1
# Without BlockingSync, ROCm's hipEventSynchronize busy-waits (clr hip_event.cpp → rocdevice.cpp
# IsHwEventReady): the waiting thread would burn a whole core for the whole inference.
HIP_EVENT_BLOCKING_SYNC = 1
HIP_EVENT_DISABLE_TIMING = 2
HIP_HOST_MALLOC_DEFAULT = 0
# hipSetDeviceFlags: waits for the device sleep on an OS primitive instead of polling (hip_runtime_api.h)
HIP_DEVICE_SCHEDULE_BLOCKING_SYNC = 4
HIP_ERROR_NO_DEVICE = 100

_SIGNATURES: dict[str, tuple[list[Any], Any]] = {
    "hipGetDeviceCount": ([POINTER(c_int)], c_int),
    "hipSetDevice": ([c_int], c_int),
    "hipSetDeviceFlags": ([c_uint], c_int),
    "hipGetErrorString": ([c_int], c_char_p),
    "hipHostMalloc": ([POINTER(c_void_p), c_size_t, c_uint], c_int),
    "hipHostFree": ([c_void_p], c_int),
    "hipMalloc": ([POINTER(c_void_p), c_size_t], c_int),
    "hipFree": ([c_void_p], c_int),
    "hipMemGetInfo": ([POINTER(c_size_t), POINTER(c_size_t)], c_int),
    "hipMemcpyAsync": ([c_void_p, c_void_p, c_size_t, c_int, c_void_p], c_int),
    "hipStreamCreateWithFlags": ([POINTER(c_void_p), c_uint], c_int),
    "hipStreamDestroy": ([c_void_p], c_int),
    "hipEventCreateWithFlags": ([POINTER(c_void_p), c_uint], c_int),
    "hipEventRecord": ([c_void_p, c_void_p], c_int),
    "hipStreamWaitEvent": ([c_void_p, c_void_p, c_uint], c_int),
    "hipEventSynchronize": ([c_void_p], c_int),
    "hipEventDestroy": ([c_void_p], c_int),
    "hipRuntimeGetVersion": ([POINTER(c_int)], c_int),
    hip_device_prop.SYMBOL: ([POINTER(HipDeviceProp), c_int], c_int),
}


@dataclass(frozen=True)
class DeviceIdentity:
    """What a compiled MIGraphX program depends on, of the device and runtime it runs on."""

    name: str
    arch: str  # gcnArchName with its features, e.g. gfx90a:sramecc+:xnack- (HSA_XNACK changes it)
    compute_units: int  # MIGraphX bakes it into launch sizes
    runtime_version: int  # hipRuntimeGetVersion


@dataclass(frozen=True)
class MemoryInfo:
    """``hipMemGetInfo`` of the current device: what every process on it leaves free, and its size."""

    free: int
    total: int


class HipError(RuntimeError):
    """A HIP call failed; ``code`` is the hipError_t."""

    def __init__(self, call: str, code: int, text: str) -> None:
        super().__init__(f"{call} failed: {text} (hipError_t {code})")
        self.code = code


def load_library(name: str) -> Any:
    """``ctypes.CDLL(name)``, or ``python:MODULE``'s ``library`` object (a stand-in, e.g. a test double)."""
    if name.startswith("python:"):
        return importlib.import_module(name.removeprefix("python:")).library
    try:
        return ctypes.CDLL(name)
    except OSError:
        if "/" in name:
            raise
        return ctypes.CDLL(f"/opt/rocm/lib/{name}")  # ROCm's default prefix, when not on the loader path


class Hip:
    """Typed, checked wrappers; handles and addresses are plain ints."""

    def __init__(self, library: Any) -> None:
        self._lib = library
        for function, (argtypes, restype) in _SIGNATURES.items():
            getattr(library, function).argtypes = argtypes
            getattr(library, function).restype = restype

    def _check(self, call: str, code: int) -> None:
        if code != 0:
            text = self._lib.hipGetErrorString(code)
            raise HipError(call, code, text.decode() if isinstance(text, bytes) else str(text))

    def _out(self, call: str, *args: Any) -> int:
        """Call a function whose first parameter is an out-pointer; return what it wrote."""
        out = ctypes.pointer(c_void_p())
        self._check(call, getattr(self._lib, call)(out, *args))
        return out.contents.value or 0

    def device_count(self) -> int:
        count = ctypes.pointer(c_int(0))
        code = self._lib.hipGetDeviceCount(count)
        if code == HIP_ERROR_NO_DEVICE:
            return 0
        self._check("hipGetDeviceCount", code)
        return count.contents.value

    def set_device(self, device: int) -> None:
        self._check("hipSetDevice", self._lib.hipSetDevice(device))

    def set_device_flags(self, flags: int) -> None:
        """How the current device's host threads wait for it (``hipDeviceSchedule*``)."""
        self._check("hipSetDeviceFlags", self._lib.hipSetDeviceFlags(flags))

    def device_identity(self, device: int) -> DeviceIdentity:
        """HIP's own view of ``device`` (its index as HIP numbers them, after ``HIP_VISIBLE_DEVICES``)."""
        properties = HipDeviceProp()
        get_properties = getattr(self._lib, hip_device_prop.SYMBOL)
        self._check(hip_device_prop.SYMBOL, get_properties(ctypes.pointer(properties), device))
        version = c_int(0)
        self._check("hipRuntimeGetVersion", self._lib.hipRuntimeGetVersion(ctypes.pointer(version)))
        return DeviceIdentity(properties.name.decode(errors="replace"), properties.gcnArchName.decode(errors="replace"),
                              properties.multiProcessorCount, version.value)

    def memory_info(self) -> MemoryInfo:
        """Free and total memory of the calling thread's current device (all processes counted)."""
        free, total = c_size_t(0), c_size_t(0)
        self._check("hipMemGetInfo", self._lib.hipMemGetInfo(ctypes.pointer(free), ctypes.pointer(total)))
        return MemoryInfo(free.value, total.value)

    def host_malloc(self, nbytes: int) -> int:
        """Pinned (page-locked) host memory: what asynchronous host↔device copies need."""
        return self._out("hipHostMalloc", nbytes, HIP_HOST_MALLOC_DEFAULT)

    def host_free(self, address: int) -> None:
        self._check("hipHostFree", self._lib.hipHostFree(address))

    def malloc(self, nbytes: int) -> int:
        return self._out("hipMalloc", nbytes)

    def free(self, address: int) -> None:
        self._check("hipFree", self._lib.hipFree(address))

    def copy_to_device_async(self, device: int, host: int, nbytes: int, stream: int) -> None:
        self._check("hipMemcpyAsync",
                    self._lib.hipMemcpyAsync(device, host, nbytes, HIP_MEMCPY_HOST_TO_DEVICE, stream))

    def copy_to_host_async(self, host: int, device: int, nbytes: int, stream: int) -> None:
        self._check("hipMemcpyAsync",
                    self._lib.hipMemcpyAsync(host, device, nbytes, HIP_MEMCPY_DEVICE_TO_HOST, stream))

    def stream_create(self) -> int:
        return self._out("hipStreamCreateWithFlags", HIP_STREAM_NON_BLOCKING)

    def stream_destroy(self, stream: int) -> None:
        self._check("hipStreamDestroy", self._lib.hipStreamDestroy(stream))

    def event_create(self) -> int:
        """An event to wait on without spinning a core, and without timing (cheaper to record)."""
        return self._out("hipEventCreateWithFlags", HIP_EVENT_BLOCKING_SYNC | HIP_EVENT_DISABLE_TIMING)

    def event_record(self, event: int, stream: int) -> None:
        self._check("hipEventRecord", self._lib.hipEventRecord(event, stream))

    def stream_wait_event(self, stream: int, event: int) -> None:
        self._check("hipStreamWaitEvent", self._lib.hipStreamWaitEvent(stream, event, 0))

    def event_synchronize(self, event: int) -> None:
        """Block until the event's work is done; the GIL is released meanwhile (ctypes)."""
        self._check("hipEventSynchronize", self._lib.hipEventSynchronize(event))

    def event_destroy(self, event: int) -> None:
        self._check("hipEventDestroy", self._lib.hipEventDestroy(event))

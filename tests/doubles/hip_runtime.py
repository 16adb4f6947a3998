"""A test double of the HIP runtime library as ctypes sees it, on the simulated device.

``library`` stands in for ``ctypes.CDLL("libamdhip64.so")``: each function is an attribute with settable
``argtypes``, ``restype`` and ``errcheck`` that, when called, behaves like the HIP function and returns
its ``hipError_t`` as an ``int``. It is stricter than ctypes about how it is declared and called, where
ctypes would let a bug through silently:

- ``argtypes`` must be declared, with as many entries as the C prototype has parameters, each of the
  C parameter's size: undeclared, ctypes passes Python ints as 32-bit C ints and truncates 64-bit
  pointers and sizes (Python ``ctypes`` docs, "Specifying the required argument types").
- Arguments are converted exactly as ctypes would (``argtype.from_param``; ints wrap to the C width),
  and a wrong type raises ``ctypes.ArgumentError`` as ctypes does. Exactly as many arguments as
  parameters (ctypes would accept extra ones).
- An out-parameter must point at an object big enough for what the function writes (ctypes cannot
  know; C would overwrite the neighbouring memory).
- ``restype`` must read the C return type correctly: ``hipGetErrorString`` returns ``const char*``, so
  its ``restype`` must be ``c_char_p`` (or ``c_void_p``); left at ctypes' default ``c_int`` the pointer
  would be truncated.

Out-parameters may be ``ctypes.pointer(obj)`` or ``ctypes.byref(obj)`` (without an offset). The null
stream (stream 0 / None) is not modelled: passing it raises ``NotImplementedError``.
"""

from __future__ import annotations

import ctypes
import enum
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

try:  # one device per process, whichever way the doubles were imported (see device.py)
    from tests.doubles.device import (
        DEVICE,
        Event,
        EventWait,
        HipError,
        Mark,
        MemoryKind,
        OutOfDeviceMemory,
        Stream,
        error_string,
    )
except ImportError:
    from device import (  # type: ignore[no-redef]
        DEVICE,
        Event,
        EventWait,
        HipError,
        Mark,
        MemoryKind,
        OutOfDeviceMemory,
        Stream,
        error_string,
    )

HIP_MEMCPY_HOST_TO_DEVICE = 1
HIP_MEMCPY_DEVICE_TO_HOST = 2
_UNMODELLED_MEMCPY_KINDS = {0, 3, 4}  # HostToHost, DeviceToDevice, Default: valid in HIP, not modelled here
HIP_STREAM_NON_BLOCKING = 1
HIP_EVENT_BLOCKING_SYNC = 1
HIP_EVENT_DISABLE_TIMING = 2
_EVENT_INTERPROCESS = 4
# hipDeviceProp_tR0600 (hip_runtime_api.h, ROCm >= 6.0), as a C compiler lays it out on x86-64. Written
# at these offsets, independently of any ctypes structure a caller declares, so that a caller whose
# structure is laid out differently reads garbage here as it would from the real runtime.
_DEVICE_PROP_BYTES = 1472
_DEVICE_PROP_OFFSETS = {"name": 0, "multiProcessorCount": 388, "gcnArchName": 1160}
_BUSY_WAIT_BLOCK = bytes(1 << 16)  # hashed over and over by a spinning wait: CPU work without the GIL

# hipStreamCreateWithFlags: "The valid values are hipStreamDefault and hipStreamNonBlocking" (HIP docs).
_STREAM_FLAGS = 0 | HIP_STREAM_NON_BLOCKING
# hipEventCreateWithFlags (HIP docs, Event management): Default, BlockingSync 0x1, DisableTiming 0x2,
# Interprocess 0x4 (which requires DisableTiming), DisableSystemFence 0x20000000, and the release
# scopes 0x40000000 / 0x80000000.
_EVENT_FLAGS = 0x1 | HIP_EVENT_DISABLE_TIMING | _EVENT_INTERPROCESS | 0x20000000 | 0x40000000 | 0x80000000
_DEVICE_SCHEDULE_MASK = 0x7  # hipDeviceScheduleMask
_DEVICE_FLAGS = _DEVICE_SCHEDULE_MASK | 0x8 | 0x10  # | hipDeviceMapHost | hipDeviceLmemResizeToMax
# hipHostMalloc flags (hip_runtime_api.h): Portable 0x1, Mapped 0x2, WriteCombined 0x4, NumaUser
# 0x20000000, Coherent 0x40000000, NonCoherent 0x80000000, Uncached 0x10000000.
_HOST_MALLOC_FLAGS = 0x1 | 0x2 | 0x4 | 0x10000000 | 0x20000000 | 0x40000000 | 0x80000000
_COHERENT_AND_NONCOHERENT = 0x40000000 | 0x80000000


class _Param(enum.Enum):
    """What a C parameter is, which fixes which ctypes types may declare it."""

    POINTER = "a pointer or handle (8 bytes)"
    OUT_POINTER = "a void**/hipStream_t*/hipEvent_t* out-parameter (8 bytes written)"
    OUT_INT = "an int* out-parameter (4 bytes written)"
    OUT_SIZE_T = "a size_t* out-parameter (8 bytes written)"
    OUT_DEVICE_PROP = f"a hipDeviceProp_tR0600* out-parameter ({_DEVICE_PROP_BYTES} bytes written)"
    SIZE_T = "size_t (8 bytes)"
    INT = "int/unsigned/enum (4 bytes)"


_WRITTEN_BYTES = {_Param.OUT_POINTER: ctypes.sizeof(ctypes.c_void_p), _Param.OUT_INT: ctypes.sizeof(ctypes.c_int),
                  _Param.OUT_SIZE_T: ctypes.sizeof(ctypes.c_size_t), _Param.OUT_DEVICE_PROP: _DEVICE_PROP_BYTES}
_OUT_CTYPES = {_Param.OUT_POINTER: ctypes.c_void_p, _Param.OUT_SIZE_T: ctypes.c_size_t}


@dataclass(frozen=True)
class Out:
    """An out-parameter: where the function writes its result."""

    address: int
    param: _Param

    def write(self, value: int, offset: int = 0) -> None:
        ctype = _OUT_CTYPES.get(self.param, ctypes.c_int)
        ctype.from_address(self.address + offset).value = value

    def write_string(self, text: str, offset: int, capacity: int) -> None:
        """A NUL-terminated string into a ``char[capacity]`` field."""
        data = text.encode()[: capacity - 1] + b"\0"
        ctypes.memmove(self.address + offset, data, len(data))


def _is_pointer_type(t: type) -> bool:
    return t in (ctypes.c_void_p, ctypes.c_char_p) or issubclass(t, ctypes._Pointer)


def _is_integer_type(t: type, size: int) -> bool:
    return issubclass(t, ctypes._SimpleCData) and t._type_ in "bBhHiIlLqQ" and ctypes.sizeof(t) == size


def _declares(t: Any, param: _Param) -> bool:
    """Whether ctypes type ``t`` passes ``param`` with the right width (a C-ABI match)."""
    if not isinstance(t, type):
        return False
    if param is _Param.SIZE_T:
        return _is_integer_type(t, 8)
    if param is _Param.INT:
        return _is_integer_type(t, 4)
    return _is_pointer_type(t) or _is_integer_type(t, 8)


def _address(arg: Any) -> tuple[int, int | None]:
    """The address a pointer argument passes, and the size of the object it points at if known."""
    if arg is None:
        return 0, None
    if isinstance(arg, int):
        return arg, None
    if isinstance(arg, ctypes.c_void_p):
        return arg.value or 0, None
    if isinstance(arg, ctypes._Pointer):
        address = ctypes.cast(arg, ctypes.c_void_p).value or 0
        return address, ctypes.sizeof(arg._type_) if address else None
    if isinstance(arg, ctypes.Array):
        return ctypes.addressof(arg), ctypes.sizeof(arg)
    if type(arg).__name__ == "CArgObject":  # ctypes.byref(obj)
        return ctypes.addressof(arg._obj), ctypes.sizeof(arg._obj)
    raise NotImplementedError(f"the HIP double does not model passing {type(arg).__name__} as a pointer")


class CFunction:
    """One exported function, declared and called like a ctypes foreign function (see module doc)."""

    def __init__(
        self, name: str, params: Sequence[_Param], impl: Callable[..., int | bytes], returns_string: bool = False
    ) -> None:
        self.__name__ = name
        self.argtypes: Sequence[type] | None = None
        self.restype: type | None = ctypes.c_int
        self.errcheck: Callable[[Any, CFunction, tuple[Any, ...]], Any] | None = None
        self._params = tuple(params)
        self._impl = impl
        self._returns_string = returns_string
        self._strings: dict[bytes, ctypes.Array] = {}  # kept alive: C strings returned by address

    def __call__(self, *args: Any) -> Any:
        argtypes = self._checked_argtypes()
        if len(args) != len(self._params):
            raise TypeError(f"{self.__name__} takes {len(self._params)} arguments ({len(args)} given)")
        values = [
            self._convert(i, arg, t, param)
            for i, (arg, t, param) in enumerate(zip(args, argtypes, self._params, strict=True))
        ]
        result = self._result(self._impl(*values))
        return self.errcheck(result, self, args) if self.errcheck is not None else result

    def _checked_argtypes(self) -> Sequence[type]:
        if self.argtypes is None:
            raise TypeError(
                f"{self.__name__}: argtypes not declared; ctypes would pass Python ints as 32-bit C ints "
                "and truncate 64-bit pointers and sizes"
            )
        if len(self.argtypes) != len(self._params):
            raise TypeError(
                f"{self.__name__}: argtypes has {len(self.argtypes)} entries; "
                f"the C function has {len(self._params)} parameters"
            )
        for i, (t, param) in enumerate(zip(self.argtypes, self._params, strict=True)):
            if not _declares(t, param):
                raise TypeError(f"{self.__name__}: argtypes[{i}] is {t!r}, but parameter {i + 1} is {param.value}")
        return self.argtypes

    def _convert(self, index: int, arg: Any, t: type, param: _Param) -> int | Out:
        try:
            t.from_param(arg)  # the check ctypes itself makes
        except TypeError as exc:
            raise ctypes.ArgumentError(f"argument {index + 1}: TypeError: {exc}") from None
        if not _is_pointer_type(t):  # an integer type: wraps to the C width, as ctypes does
            value = arg.value if isinstance(arg, t) else t(arg).value
            return Out(ctypes.c_void_p(value).value or 0, param) if param in _WRITTEN_BYTES else value
        address, capacity = _address(arg)
        address = ctypes.c_void_p(address).value or 0
        if param not in _WRITTEN_BYTES:
            return address
        needed = _WRITTEN_BYTES[param]
        if capacity is not None and capacity < needed:
            raise TypeError(
                f"{self.__name__}: argument {index + 1} points at {capacity} bytes; the function writes {needed}"
            )
        return Out(address, param)

    def _result(self, value: int | bytes) -> Any:
        restype = self.restype
        if self._returns_string:
            assert isinstance(value, bytes)
            if restype is ctypes.c_char_p:
                return value
            if restype is ctypes.c_void_p:
                if value not in self._strings:
                    self._strings[value] = ctypes.create_string_buffer(value)
                return ctypes.addressof(self._strings[value])
            raise TypeError(
                f"{self.__name__} returns const char*; restype {restype!r} would misread the pointer (use c_char_p)"
            )
        if restype is None:
            return None
        if isinstance(restype, type) and issubclass(restype, ctypes._SimpleCData) and restype._type_ in "iIlLqQ":
            return restype(value).value
        raise TypeError(f"{self.__name__} returns hipError_t (int); restype {restype!r} would misread it")


class _HipRuntime:
    """The HIP functions, on ``DEVICE``. Each returns a hipError_t value."""

    def __init__(self) -> None:
        self.device = DEVICE

    # hipGetDeviceCount: "If no devices are found, returns hipErrorNoDevice" and sets the count to 0
    # (HIP docs, Device management; hipErrorNoDevice: "Call to hipGetDeviceCount returned 0 devices").
    def hipGetDeviceCount(self, count: Out) -> int:
        if not count.address:
            return HipError.hipErrorInvalidValue
        count.write(self.device.device_count)
        return HipError.hipErrorNoDevice if self.device.device_count == 0 else HipError.hipSuccess

    # hipSetDevice: per host thread (HIP docs, Device management: "sets device as the default device
    # for the calling host thread").
    def hipSetDevice(self, device_id: int) -> int:
        if not 0 <= device_id < self.device.device_count:
            return HipError.hipErrorInvalidDevice  # "invalid device ordinal"
        self.device.set_current(device_id)
        return HipError.hipSuccess

    # hipSetDeviceFlags (hip_runtime_api.h): the current device's hipDeviceSchedule* mode (Auto 0, Spin 1, Yield 2,
    # BlockingSync 4: one of them), hipDeviceMapHost 8, hipDeviceLmemResizeToMax 16; other bits, or two scheduling
    # modes, are hipErrorInvalidValue. Recorded in DEVICE.device_flags.
    def hipSetDeviceFlags(self, flags: int) -> int:
        schedule = flags & _DEVICE_SCHEDULE_MASK
        if flags & ~_DEVICE_FLAGS or schedule not in (0, 1, 2, 4):
            return HipError.hipErrorInvalidValue
        self.device.device_flags[self.device.current()] = flags
        return HipError.hipSuccess

    # hipGetDevicePropertiesR0600 (what hipGetDeviceProperties is since ROCm 6.0): the whole structure
    # is written; here the fields a program depends on, the rest zero.
    def hipGetDevicePropertiesR0600(self, prop: Out, device_id: int) -> int:
        if not prop.address:
            return HipError.hipErrorInvalidValue
        if not 0 <= device_id < self.device.device_count:
            return HipError.hipErrorInvalidDevice
        ctypes.memset(prop.address, 0, _DEVICE_PROP_BYTES)
        settings = self.device.settings
        prop.write_string("AMD Instinct MI210 (simulated)", _DEVICE_PROP_OFFSETS["name"], 256)
        prop.write(settings.compute_units, _DEVICE_PROP_OFFSETS["multiProcessorCount"])
        prop.write_string(settings.arch_of(device_id), _DEVICE_PROP_OFFSETS["gcnArchName"], 256)
        return HipError.hipSuccess

    def hipRuntimeGetVersion(self, version: Out) -> int:
        if not version.address:
            return HipError.hipErrorInvalidValue
        version.write(self.device.settings.runtime_version)
        return HipError.hipSuccess

    def hipGetErrorString(self, code: int) -> bytes:
        return error_string(code).encode()

    # hipMemGetInfo (HIP docs, Memory management): free and total memory of the current device. MIGraphX's
    # allocate_gpu no longer consults it (MIGRAPHX_FACTS.md): only a caller comparing it before and after
    # a load sees that a program went to host memory.
    def hipMemGetInfo(self, free: Out, total: Out) -> int:
        if not free.address or not total.address:
            return HipError.hipErrorInvalidValue
        free_bytes, total_bytes = self.device.memory_info()
        free.write(free_bytes)
        total.write(total_bytes)
        return HipError.hipSuccess

    # hipMalloc (HIP docs): size 0 sets *ptr to nullptr and succeeds; hipErrorOutOfMemory when full.
    def hipMalloc(self, ptr: Out, size: int) -> int:
        if not ptr.address:
            return HipError.hipErrorInvalidValue
        if size == 0:
            ptr.write(0)
            return HipError.hipSuccess
        try:
            ptr.write(self.device.allocate(MemoryKind.DEVICE, size, "hip"))
        except OutOfDeviceMemory:
            return HipError.hipErrorOutOfMemory
        return HipError.hipSuccess

    # hipFree (HIP docs): "performs an implicit hipDeviceSynchronize()"; NULL succeeds; an invalid
    # pointer, including one from hipHostMalloc, is hipErrorInvalidDevicePointer.
    def hipFree(self, ptr: int) -> int:
        if not ptr:
            return HipError.hipSuccess
        self.device.synchronize()
        freed = self.device.free(MemoryKind.DEVICE, ptr)
        return HipError.hipSuccess if freed else HipError.hipErrorInvalidDevicePointer

    # hipHostMalloc (HIP docs): size 0 sets *ptr to nullptr and succeeds; Coherent with NonCoherent,
    # or an unknown flag, is hipErrorInvalidValue.
    def hipHostMalloc(self, ptr: Out, size: int, flags: int) -> int:
        bad_flags = flags & ~_HOST_MALLOC_FLAGS or flags & _COHERENT_AND_NONCOHERENT == _COHERENT_AND_NONCOHERENT
        if not ptr.address or bad_flags:
            return HipError.hipErrorInvalidValue
        ptr.write(self.device.allocate(MemoryKind.PINNED, size, "hip") if size else 0)
        return HipError.hipSuccess

    # hipHostFree (HIP docs): implicit hipDeviceSynchronize(); NULL succeeds; an invalid pointer,
    # including a device pointer from hipMalloc, is hipErrorInvalidValue.
    def hipHostFree(self, ptr: int) -> int:
        if not ptr:
            return HipError.hipSuccess
        self.device.synchronize()
        freed = self.device.free(MemoryKind.PINNED, ptr)
        return HipError.hipSuccess if freed else HipError.hipErrorInvalidValue

    def hipMemcpyAsync(self, dst: int, src: int, nbytes: int, kind: int, stream_handle: int) -> int:
        if kind in _UNMODELLED_MEMCPY_KINDS:
            raise NotImplementedError(f"the HIP double models hipMemcpyAsync kinds 1 and 2 only, not {kind}")
        if kind not in (HIP_MEMCPY_HOST_TO_DEVICE, HIP_MEMCPY_DEVICE_TO_HOST):
            return HipError.hipErrorInvalidMemcpyDirection
        stream = self._stream(stream_handle)
        if stream is None:
            return HipError.hipErrorInvalidHandle
        if nbytes == 0:
            return HipError.hipSuccess
        to_device = kind == HIP_MEMCPY_HOST_TO_DEVICE
        device_side = self.device.region(dst if to_device else src, nbytes)
        host_side = self.device.region(src if to_device else dst, nbytes)
        # The kind must tell the truth: the device range inside one live hipMalloc allocation, the host
        # range host memory (inside its hipHostMalloc allocation if pinned). Otherwise the arguments
        # are "not in an acceptable range": hipErrorInvalidValue (HIP docs, hipError_t).
        if device_side is None or device_side.kind is not MemoryKind.DEVICE:
            return HipError.hipErrorInvalidValue
        if host_side is None or host_side.kind is MemoryKind.DEVICE:
            return HipError.hipErrorInvalidValue

        def copy(data: bytes | None = None) -> None:
            self.device.memory(dst, nbytes)[:] = data if data is not None else self.device.memory(src, nbytes)

        def enqueue(operation: Callable[[], None]) -> Mark:
            """Queue the copy, which writes (to device) or reads (to host) the device side: a race with
            a kernel on another stream is caught here (★ DataRace)."""
            what = "hipMemcpyAsync host-to-device" if to_device else "hipMemcpyAsync device-to-host"
            access = [(device_side.address, nbytes)]
            return self.device.enqueue(stream, operation, what, reads=() if to_device else access,
                                       writes=access if to_device else ())

        if host_side.kind is MemoryKind.PINNED:  # asynchronous: the source is read when the copy executes
            enqueue(copy)
            return HipError.hipSuccess
        # hipMemcpyAsync (HIP docs): "If host or dest are not pinned, the memory copy will be performed
        # synchronously": pageable sources are staged now, pageable destinations waited for.
        self.device.pageable_copies += 1
        if to_device:
            staged = bytes(self.device.memory(src, nbytes))
            enqueue(lambda: copy(staged))
        else:
            self.device.wait(enqueue(copy))
        return self.device.sticky_error

    def hipStreamCreateWithFlags(self, stream: Out, flags: int) -> int:
        if not stream.address or flags & ~_STREAM_FLAGS:
            return HipError.hipErrorInvalidValue
        stream.write(self.device.create_stream(flags, "hip").handle)
        return HipError.hipSuccess

    # hipStreamDestroy: an invalid handle is hipErrorInvalidHandle ("Resource handle (hipEvent_t or
    # hipStream_t) invalid"); work already queued still completes.
    def hipStreamDestroy(self, stream_handle: int) -> int:
        ok = stream_handle != 0 and self.device.destroy_stream(stream_handle)
        return HipError.hipSuccess if ok else HipError.hipErrorInvalidHandle

    def hipStreamSynchronize(self, stream_handle: int) -> int:
        stream = self._stream(stream_handle)
        if stream is None:
            return HipError.hipErrorInvalidHandle
        self.device.wait(self.device.record(stream))
        return self.device.sticky_error

    def hipEventCreateWithFlags(self, event: Out, flags: int) -> int:
        # hipEventInterprocess "also must" have hipEventDisableTiming (HIP docs, hipEventCreateWithFlags).
        interprocess_without_disable_timing = flags & _EVENT_INTERPROCESS and not flags & HIP_EVENT_DISABLE_TIMING
        if not event.address or flags & ~_EVENT_FLAGS or interprocess_without_disable_timing:
            return HipError.hipErrorInvalidValue
        event.write(self.device.create_event(flags, "hip").handle)
        return HipError.hipSuccess

    # hipEventRecord (HIP docs): the event completes when all work queued on the stream before it has
    # completed; recording again overwrites the previous state.
    def hipEventRecord(self, event_handle: int, stream_handle: int) -> int:
        event, stream = self.device.event(event_handle), self._stream(stream_handle)
        if event is None or stream is None:
            return HipError.hipErrorInvalidHandle
        event.mark = self.device.record(stream)
        return HipError.hipSuccess

    # hipStreamWaitEvent (HIP docs): "All future work submitted to stream will wait until event reports
    # completion"; flags "[must be 0]" (hipEventWaitExternal applies to stream capture only).
    def hipStreamWaitEvent(self, stream_handle: int, event_handle: int, flags: int) -> int:
        if flags != 0:
            return HipError.hipErrorInvalidValue
        stream, event = self._stream(stream_handle), self.device.event(event_handle)
        if stream is None or event is None:
            return HipError.hipErrorInvalidHandle
        if event.mark is not None:
            self.device.make_wait(stream, event.mark)
        return HipError.hipSuccess

    # hipEventSynchronize (HIP docs): blocks until the recorded work completes; "If hipEventRecord() has
    # not been called on event, this function returns hipSuccess". ROCm's runtime busy-waits unless the
    # event was created with hipEventBlockingSync (clr hip_event.cpp, rocdevice.cpp IsHwEventReady):
    # here too, the calling thread keeps a core busy for the whole wait (hashing, which releases the GIL
    # as the real wait inside a ctypes call does, so other Python threads still run). How it waited is
    # recorded in DEVICE.event_waits.
    def hipEventSynchronize(self, event_handle: int) -> int:
        event = self.device.event(event_handle)
        if event is None:
            return HipError.hipErrorInvalidHandle
        if event.mark is not None:
            with self.device.waiting_on(event):
                self.device.note_event_wait(self._wait(event))
        return self.device.sticky_error

    def _wait(self, event: Event) -> EventWait:
        """Wait for ``event``'s recorded work, sleeping or spinning as its flags say; how it waited."""
        assert event.mark is not None
        if event.flags & HIP_EVENT_BLOCKING_SYNC:
            wait = EventWait(event.handle, blocking_sync=True, pending=not self.device.query(event.mark), spins=0)
        else:
            spins = self._spin(event.mark)
            wait = EventWait(event.handle, blocking_sync=False, pending=spins > 0, spins=spins)
        self.device.wait(event.mark)
        return wait

    def _spin(self, mark: Mark) -> int:
        """Busy-wait until ``mark`` is reached; the number of turns (0: it already was)."""
        spins = 0
        while not self.device.query(mark):
            hashlib.sha256(_BUSY_WAIT_BLOCK)
            spins += 1
        return spins

    # hipEventQuery: hipSuccess when complete (or never recorded), hipErrorNotReady otherwise.
    def hipEventQuery(self, event_handle: int) -> int:
        event = self.device.event(event_handle)
        if event is None:
            return HipError.hipErrorInvalidHandle
        if event.mark is not None and not self.device.query(event.mark):
            return HipError.hipErrorNotReady
        return self.device.sticky_error

    # hipEventDestroy: an invalid handle is hipErrorInvalidHandle. ★ So is an event another host thread is
    # waiting on in hipEventSynchronize (recorded in DEVICE.violations): ROCm frees it under the waiter.
    def hipEventDestroy(self, event_handle: int) -> int:
        ok = self.device.destroy_event(event_handle)
        return HipError.hipSuccess if ok else HipError.hipErrorInvalidHandle

    def hipDeviceSynchronize(self) -> int:
        self.device.synchronize()
        return self.device.sticky_error

    def _stream(self, handle: int) -> Stream | None:
        if handle == 0:
            raise NotImplementedError("the HIP double does not model the null stream; create a stream")
        return self.device.stream(handle)


P = _Param
_SIGNATURES: dict[str, tuple[_Param, ...]] = {
    "hipGetDeviceCount": (P.OUT_INT,),
    "hipSetDevice": (P.INT,),
    "hipSetDeviceFlags": (P.INT,),
    "hipGetErrorString": (P.INT,),
    "hipMalloc": (P.OUT_POINTER, P.SIZE_T),
    "hipMemGetInfo": (P.OUT_SIZE_T, P.OUT_SIZE_T),
    "hipFree": (P.POINTER,),
    "hipHostMalloc": (P.OUT_POINTER, P.SIZE_T, P.INT),
    "hipHostFree": (P.POINTER,),
    "hipMemcpyAsync": (P.POINTER, P.POINTER, P.SIZE_T, P.INT, P.POINTER),
    "hipStreamCreateWithFlags": (P.OUT_POINTER, P.INT),
    "hipStreamDestroy": (P.POINTER,),
    "hipStreamSynchronize": (P.POINTER,),
    "hipEventCreateWithFlags": (P.OUT_POINTER, P.INT),
    "hipEventRecord": (P.POINTER, P.POINTER),
    "hipStreamWaitEvent": (P.POINTER, P.POINTER, P.INT),
    "hipEventSynchronize": (P.POINTER,),
    "hipEventQuery": (P.POINTER,),
    "hipEventDestroy": (P.POINTER,),
    "hipDeviceSynchronize": (),
    "hipGetDevicePropertiesR0600": (P.OUT_DEVICE_PROP, P.INT),
    "hipRuntimeGetVersion": (P.OUT_INT,),
}
# With no device visible every call but these fails with hipErrorNoDevice, and after a device fault
# every call reports the fault (sticky), as a real runtime does.
_UNGUARDED = {"hipGetDeviceCount", "hipGetErrorString", "hipRuntimeGetVersion"}


class HipLibrary:
    """Stands in for ``ctypes.CDLL("libamdhip64.so")``: functions are attributes, created once each."""

    _name = "libamdhip64.so"

    def __init__(self) -> None:
        runtime = _HipRuntime()
        self._functions = {
            name: CFunction(name, params, self._guard(name, getattr(runtime, name)), name == "hipGetErrorString")
            for name, params in _SIGNATURES.items()
        }

    def __getattr__(self, name: str) -> CFunction:
        try:
            return self._functions[name]
        except KeyError:
            raise AttributeError(f"{self._name}: undefined symbol: {name} (not modelled by the HIP double)") from None

    def __getitem__(self, name: str) -> CFunction:
        return self.__getattr__(name)

    @staticmethod
    def _guard(name: str, impl: Callable[..., Any]) -> Callable[..., Any]:
        if name in _UNGUARDED:
            return impl

        def guarded(*args: Any) -> Any:
            if DEVICE.device_count == 0:
                return HipError.hipErrorNoDevice
            return DEVICE.sticky_error or impl(*args)

        return guarded


library = HipLibrary()

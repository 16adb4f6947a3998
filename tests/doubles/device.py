"""The simulated GPU that the HIP runtime double and the migraphx double share.

One device per process (``DEVICE``), so that memory, streams and events made through the HIP double are
the ones the migraphx double reads and runs on. Import it as ``tests.doubles.device`` (the doubles do,
and fall back to the top-level ``device`` only when ``tests`` is not importable, e.g. in a subprocess
with ``PYTHONPATH=tests/doubles``).

What it models:

- **Device memory** lives at addresses inside a block of virtual address space reserved with
  ``PROT_NONE``: like a discrete GPU's pointers, they are real, unique 64-bit addresses that the host
  cannot dereference (touching one from Python segfaults instead of silently working). The bytes live
  in a host buffer behind each allocation. New allocations are filled with 0xFF (NaN as float32),
  because real ``hipMalloc`` memory is uninitialised, and freed addresses are never reused, so a stale
  pointer is always caught.
- **Pinned host memory** is host memory of its own mapping (an anonymous ``mmap``, page-aligned as
  ``hipHostMalloc``'s is) that the device tracks. ``hipHostFree`` unmaps it as ROCm does: its pages are
  replaced by a ``PROT_NONE`` reservation, so a numpy array that still views it segfaults when read or
  written (as on a real box), and the addresses are never handed out again (a stale pointer is never
  silently valid).
- **Streams** each run a worker thread executing operations in FIFO order, so work really is
  asynchronous. ``op_delay_s`` makes every copy and kernel take at least that long.
- **Marks** (a stream position plus a vector clock) record what is ordered before what: stream order,
  ``hipStreamWaitEvent`` edges, and host synchronisation. The migraphx double uses them to refuse two
  executions of one program that are not ordered.
- **Data races** on device memory: every copy and kernel declares what it reads and writes, and one
  that touches memory an earlier unordered operation on another stream writes (or, for a write, reads)
  raises :class:`DataRace` when it is queued. ★ Stricter than a GPU, which silently corrupts the data.
- ★ **Events destroyed under a waiter**: ``hipEventDestroy`` of an event that another host thread is
  waiting on in ``hipEventSynchronize`` is refused (``hipErrorInvalidHandle``) and recorded in
  ``violations``; ROCm frees the event under the waiting thread (a use after free, a crash).
- **Faults** raised by operations on a worker (an illegal address, a failed kernel) are sticky, as on a
  GPU: every later HIP call returns the fault's code.
- **The devices' identity** (``hipGetDevicePropertiesR0600``, ``hipRuntimeGetVersion``): an ISA name
  with features per device (``HSA_XNACK=1`` turns ``xnack-`` into ``xnack+``, as ROCm does on GPUs that
  support it), a compute-unit count and a HIP runtime version; and each thread's current device
  (``hipSetDevice`` is per thread, and a thread starts on device 0).

Configuration comes from ``reset(...)`` or, at import, from the environment: ``HIP_DOUBLE_DEVICE_COUNT``
(default 1), ``HIP_DOUBLE_DEVICE_MEMORY_BYTES`` (default unlimited: ``hipMemGetInfo``
then reports a 64 GiB device), ``HIP_DOUBLE_OP_DELAY_S`` (default 0),
``HIP_DOUBLE_ARCH`` (comma-separated, one per device, the last repeated; default
``gfx90a:sramecc+:xnack-``), ``HIP_DOUBLE_COMPUTE_UNITS`` (104), ``HIP_DOUBLE_RUNTIME_VERSION``
(70226015). ``reset`` writes its settings into ``os.environ`` too, so that child processes (the
engine's compile process) see the same simulated hardware, as they would see a real GPU.
"""

from __future__ import annotations

import ctypes
import enum
import mmap
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields

_RESERVED_BYTES = 1 << 36  # 64 GiB of address space; nothing is committed (MAP_NORESERVE, PROT_NONE)
_DEVICE_ALIGNMENT = 256  # hipMalloc returns at least 256-byte aligned pointers
_HANDLE_STRIDE = 64
_UNINITIALISED = 0xFF
_JOIN_TIMEOUT_S = 10.0
_PROT_NONE = 0
_MAP_NORESERVE = 0x4000  # Linux values; the mmap module exports neither
_MAP_FIXED = 0x10


UNLIMITED_DEVICE_MEMORY_BYTES = 64 << 30  # what hipMemGetInfo reports as total without a limit (an MI210's)


class HipError(enum.IntEnum):
    """The hipError_t values the doubles return (hip_runtime_api.h; HIP docs, "HIP error codes")."""

    hipSuccess = 0
    hipErrorInvalidValue = 1
    hipErrorOutOfMemory = 2
    hipErrorInvalidDevicePointer = 17
    hipErrorInvalidMemcpyDirection = 21
    hipErrorNoDevice = 100
    hipErrorInvalidDevice = 101
    hipErrorInvalidHandle = 400  # hipErrorInvalidResourceHandle is the same value
    hipErrorNotReady = 600
    hipErrorIllegalAddress = 700
    hipErrorLaunchFailure = 719


# ihipGetErrorString in ROCm clr hipamd/src/hip_error.cpp.
_ERROR_STRINGS = {
    HipError.hipSuccess: "no error",
    HipError.hipErrorInvalidValue: "invalid argument",
    HipError.hipErrorOutOfMemory: "out of memory",
    HipError.hipErrorInvalidDevicePointer: "invalid device pointer",
    HipError.hipErrorInvalidMemcpyDirection: "invalid copy direction for memcpy",
    HipError.hipErrorNoDevice: "no ROCm-capable device is detected",
    HipError.hipErrorInvalidDevice: "invalid device ordinal",
    HipError.hipErrorInvalidHandle: "invalid resource handle",
    HipError.hipErrorNotReady: "device not ready",
    HipError.hipErrorIllegalAddress: "an illegal memory access was encountered",
    HipError.hipErrorLaunchFailure: "unspecified launch failure",
}


def error_string(code: int) -> str:
    """What ``hipGetErrorString`` returns for ``code``."""
    return _ERROR_STRINGS.get(code, "unknown error")  # type: ignore[call-overload]


class DeviceFault(RuntimeError):
    """An error in work executing on the device; it makes the device's error state sticky."""

    def __init__(self, code: HipError, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code


class OutOfDeviceMemory(RuntimeError):
    """A device allocation would exceed the configured device memory."""


class DataRace(RuntimeError):
    """★ An operation queued on one stream touches device memory that an operation on another stream,
    not ordered before it, writes (or, if this one writes, reads). A GPU would not notice: it would read
    stale data or overwrite data still in use."""


@dataclass(frozen=True)
class DeviceSettings:
    """The simulated hardware; ``HIP_DOUBLE_*`` environment variables carry it into child processes."""

    device_count: int = 1
    device_memory_bytes: int | None = None
    op_delay_s: float = 0.0
    arch: tuple[str, ...] = ("gfx90a:sramecc+:xnack-",)  # per device; the last one repeats
    compute_units: int = 104  # an MI210's
    runtime_version: int = 70226015  # HIP 7.2.26015: major * 10^7 + minor * 10^5 + patch

    @classmethod
    def from_environment(cls) -> DeviceSettings:
        values: dict[str, object] = {}
        for setting in fields(cls):
            text = os.environ.get(f"HIP_DOUBLE_{setting.name.upper()}")
            if text is None or text == "":
                continue
            if setting.name == "arch":
                values["arch"] = tuple(text.split(","))
            else:
                values[setting.name] = float(text) if setting.name == "op_delay_s" else int(text)
        return cls(**values)  # type: ignore[arg-type]

    def export(self) -> None:
        """Into ``os.environ``, for the child processes this process starts."""
        for setting in fields(self):
            value = getattr(self, setting.name)
            text = "" if value is None else ",".join(value) if setting.name == "arch" else str(value)
            os.environ[f"HIP_DOUBLE_{setting.name.upper()}"] = text

    def arch_of(self, device: int) -> str:
        """Device ``device``'s gcnArchName; with ``HSA_XNACK=1`` xnack is on where the GPU can have it."""
        name = self.arch[min(device, len(self.arch) - 1)]
        return name.replace("xnack-", "xnack+") if os.environ.get("HSA_XNACK") == "1" else name


class MemoryKind(enum.Enum):
    DEVICE = "device"
    PINNED = "pinned"
    PAGEABLE = "pageable"  # any other host memory: the device cannot check it


@dataclass
class Allocation:
    address: int
    size: int
    kind: MemoryKind
    owner: str  # "hip" for the caller's allocations, "migraphx" for the migraphx double's own
    backing: ctypes.Array  # the bytes (for pinned memory, a view of its mapping)
    accesses: list[Access] = field(default_factory=list)  # device memory: operations that may still run


@dataclass(frozen=True)
class Region:
    """``nbytes`` at ``address``, resolved to the kind of memory holding them."""

    kind: MemoryKind
    address: int
    nbytes: int
    allocation: Allocation | None


@dataclass(frozen=True)
class Mark:
    """The first ``position`` operations of ``stream``, and (``clock``) everything they are ordered after.

    ``clock`` maps a stream handle to the number of that stream's operations known to precede the mark.
    """

    stream: Stream
    position: int
    clock: dict[int, int]


@dataclass(frozen=True)
class Access:
    """A queued operation's read or write of an allocation (``mark``: just after the operation)."""

    mark: Mark
    write: bool
    what: str


def _merge(into: dict[int, int], other: dict[int, int]) -> None:
    for handle, position in other.items():
        if into.get(handle, 0) < position:
            into[handle] = position


class Stream:
    """A queue of operations that one worker thread executes in order."""

    def __init__(self, handle: int, flags: int, owner: str, on_fault: Callable[[DeviceFault], None]) -> None:
        self.handle = handle
        self.flags = flags
        self.owner = owner
        self.clock: dict[int, int] = {}
        self._enqueued = 0
        self._done = 0
        self._condition = threading.Condition()
        self._operations: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._on_fault = on_fault
        self._thread = threading.Thread(target=self._work, name=f"simulated-stream-{handle:#x}", daemon=True)
        self._thread.start()

    @property
    def enqueued(self) -> int:
        return self._enqueued

    def submit(self, operation: Callable[[], None]) -> int:
        """Queue ``operation``; return its position (1-based)."""
        with self._condition:
            self._enqueued += 1
            self._operations.put(operation)
            return self._enqueued

    def wait_done(self, position: int, timeout: float | None = None) -> bool:
        """Block until the first ``position`` operations have executed."""
        with self._condition:
            return self._condition.wait_for(lambda: self._done >= position, timeout)

    def is_done(self, position: int) -> bool:
        with self._condition:
            return self._done >= position

    def close(self) -> None:
        """Let the worker finish what is queued, then exit."""
        self._operations.put(None)

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def _work(self) -> None:
        while (operation := self._operations.get()) is not None:
            try:
                operation()
            except DeviceFault as fault:
                self._on_fault(fault)
            except Exception as exc:  # a kernel that fails is a launch failure, not a crash of the worker
                self._on_fault(DeviceFault(HipError.hipErrorLaunchFailure, repr(exc)))
            with self._condition:
                self._done += 1
                self._condition.notify_all()


@dataclass
class Event:
    handle: int
    flags: int
    owner: str
    mark: Mark | None = None  # the last hipEventRecord; None if never recorded
    waiters: int = 0  # host threads inside hipEventSynchronize on it


@dataclass(frozen=True)
class EventWait:
    """How one hipEventSynchronize of a recorded event waited. Tests assert on this, not on the CPU time the
    wait took: a CPU share measures the machine too (a busy one starves a spinning thread, or stretches a
    sleeping one's wake-ups), where this is what the double did."""

    event: int  # the handle
    blocking_sync: bool  # the event has hipEventBlockingSync: the thread slept; otherwise it spun
    pending: bool  # the recorded work had not completed when the wait began (there was something to wait for)
    spins: int  # turns of the busy-wait, each hashing 64 KiB (GIL released): 0 with blocking_sync


@dataclass(frozen=True)
class Leaks:
    """Resources the caller created and did not release (handles and addresses)."""

    device_allocations: list[int] = field(default_factory=list)
    pinned_allocations: list[int] = field(default_factory=list)
    streams: list[int] = field(default_factory=list)
    events: list[int] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.device_allocations or self.pinned_allocations or self.streams or self.events)


_LIBC = ctypes.CDLL(None, use_errno=True)
_LIBC.mmap.restype = ctypes.c_void_p
_LIBC.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long)


def _map(size: int, prot: int, flags: int = 0, at: int | None = None) -> int:
    """An anonymous private mapping of ``size`` bytes (at ``at`` exactly, replacing what is there, if given)."""
    flags |= mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | (_MAP_FIXED if at is not None else 0)
    address = _LIBC.mmap(at, size, prot, flags, -1, 0)
    if address in (None, ctypes.c_void_p(-1).value):
        raise OSError(ctypes.get_errno(), f"mmap of {size} bytes for the simulated device failed")
    return address


def _reserve_address_space(size: int) -> int:
    """Reserve ``size`` bytes of address space that no allocation can get and the host cannot touch."""
    return _map(size, _PROT_NONE, _MAP_NORESERVE)


def _map_pinned(size: int) -> int:
    """Readable, writable host memory of its own mapping, as ``hipHostMalloc`` gives (page-aligned)."""
    return _map(size, mmap.PROT_READ | mmap.PROT_WRITE)


def _unmap_pinned(allocation: Allocation) -> None:
    """What ``hipHostFree`` does to the host: the pages are gone, and touching them segfaults. A
    ``PROT_NONE`` reservation takes their place (releasing the memory) so that no later mapping reuses the
    addresses: a view of freed pinned memory must crash, never read someone else's bytes."""
    _map(allocation.size, _PROT_NONE, _MAP_NORESERVE, at=allocation.address)


class SimulatedDevice:
    """The device: memory, streams, events, ordering and sticky faults. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._base = _reserve_address_space(_RESERVED_BYTES)
        self._next_address = self._base
        self._allocations: dict[int, Allocation] = {}
        self._streams: dict[int, Stream] = {}
        self._retired: list[Stream] = []  # destroyed, possibly still finishing queued work
        # Freed pinned memory: unmapped (its addresses reserved, never reused), and known here so that a
        # HIP call given such an address fails instead of taking it for pageable memory.
        self._freed_pinned: list[Allocation] = []
        self._events: dict[int, Event] = {}
        self._host_clock: dict[int, int] = {}
        self._threads = threading.local()  # each host thread's current device (hipSetDevice)
        self.faults: list[DeviceFault] = []
        self.pageable_copies = 0
        self.event_waits: list[EventWait] = []  # every hipEventSynchronize of a recorded event, in order
        self.violations: list[str] = []  # ★ uses after free the double refused (an event destroyed under a waiter)
        self.device_flags: dict[int, int] = {}  # hipSetDeviceFlags, by device
        self.settings = DeviceSettings.from_environment()

    @property
    def device_count(self) -> int:
        return self.settings.device_count

    @property
    def device_memory_bytes(self) -> int | None:
        return self.settings.device_memory_bytes

    @property
    def op_delay_s(self) -> float:
        return self.settings.op_delay_s

    # -- configuration and inspection -------------------------------------------------------------------

    def reset(self, **settings: object) -> None:
        """Drain and drop every stream, event, allocation and fault, then apply ``DeviceSettings(**settings)``
        (here and, through ``os.environ``, in child processes started from now on).

        Objects made before a reset (migraphx programs included) are unusable after it; pinned memory still
        allocated is unmapped, as freed memory is.
        """
        if isinstance(settings.get("arch"), str):
            settings["arch"] = (settings["arch"],)
        new_settings = DeviceSettings(**settings)  # type: ignore[arg-type]
        with self._lock:
            streams = [*self._streams.values(), *self._retired]
            self._streams.clear()
            self._retired.clear()
        for stream in streams:  # finish queued work first, so that none of it faults on cleared state
            stream.close()
        for stream in streams:
            stream.join(_JOIN_TIMEOUT_S)
        with self._lock:
            self._events.clear()
            for allocation in self._allocations.values():
                if allocation.kind is MemoryKind.PINNED:
                    _unmap_pinned(allocation)
            self._allocations.clear()
            self._freed_pinned.clear()
            self._host_clock.clear()
            self.faults.clear()
            self.pageable_copies = 0
            self.event_waits.clear()
            self.violations.clear()
            self.device_flags.clear()
            self.settings = new_settings
            self._threads = threading.local()
        new_settings.export()

    # -- the devices ------------------------------------------------------------------------------------

    def set_current(self, device: int) -> None:
        """hipSetDevice: the calling thread's current device."""
        self._threads.device = device

    def current(self) -> int:
        """The calling thread's current device (0 until it calls hipSetDevice)."""
        return getattr(self._threads, "device", 0)

    def leaks(self, owner: str = "hip") -> Leaks:
        """What ``owner`` allocated or created and has not released."""
        with self._lock:
            allocations = [a for a in self._allocations.values() if a.owner == owner]
            return Leaks(
                device_allocations=[a.address for a in allocations if a.kind is MemoryKind.DEVICE],
                pinned_allocations=[a.address for a in allocations if a.kind is MemoryKind.PINNED],
                streams=[s.handle for s in self._streams.values() if s.owner == owner],
                events=[e.handle for e in self._events.values() if e.owner == owner],
            )

    @property
    def sticky_error(self) -> HipError:
        """The first fault's code, which every later call reports; hipSuccess if none."""
        with self._lock:
            return self.faults[0].code if self.faults else HipError.hipSuccess

    def record_fault(self, fault: DeviceFault) -> None:
        with self._lock:
            self.faults.append(fault)

    def note_event_wait(self, wait: EventWait) -> None:
        with self._lock:
            self.event_waits.append(wait)

    @property
    def device_bytes_in_use(self) -> int:
        with self._lock:
            return sum(a.size for a in self._allocations.values() if a.kind is MemoryKind.DEVICE)

    def memory_info(self) -> tuple[int, int]:
        """hipMemGetInfo: (free, total) device bytes, consistent with what ``allocate`` refuses."""
        total = UNLIMITED_DEVICE_MEMORY_BYTES if self.device_memory_bytes is None else self.device_memory_bytes
        with self._lock:
            return max(total - self.device_bytes_in_use, 0), total

    # -- memory -----------------------------------------------------------------------------------------

    def allocate(self, kind: MemoryKind, size: int, owner: str) -> int:
        """A new allocation of ``size`` > 0 bytes, filled with 0xFF; its address."""
        with self._lock:
            limit = self.device_memory_bytes
            if kind is MemoryKind.DEVICE and limit is not None and self.device_bytes_in_use + size > limit:
                raise OutOfDeviceMemory(f"{size} bytes requested, {limit - self.device_bytes_in_use} free")
            if kind is MemoryKind.DEVICE:
                backing = (ctypes.c_char * size)()
                address = self._take_addresses(size, _DEVICE_ALIGNMENT)
            else:
                address = _map_pinned(size)
                backing = (ctypes.c_char * size).from_address(address)
            ctypes.memset(backing, _UNINITIALISED, size)
            self._allocations[address] = Allocation(address, size, kind, owner, backing)
            return address

    def free(self, kind: MemoryKind, address: int) -> bool:
        """Release the allocation starting exactly at ``address``; False if there is none of that kind."""
        with self._lock:
            allocation = self._allocations.get(address)
            if allocation is None or allocation.kind is not kind:
                return False
            del self._allocations[address]
            if kind is MemoryKind.PINNED:
                _unmap_pinned(allocation)
                self._freed_pinned.append(allocation)
            return True

    def region(self, address: int, nbytes: int) -> Region | None:
        """Where ``[address, address + nbytes)`` lives; None if it is not valid memory (as far as known):
        freed, straddling an allocation's end, or in device address space but not allocated."""
        if address <= 0:
            return None
        with self._lock:
            in_device_space = self._base <= address < self._base + _RESERVED_BYTES
            for allocation in (*self._allocations.values(), *self._freed_pinned):
                start, end = allocation.address, allocation.address + allocation.size
                if start <= address < end:
                    valid = address + nbytes <= end and allocation.address in self._allocations
                    return Region(allocation.kind, address, nbytes, allocation) if valid else None
        return None if in_device_space else Region(MemoryKind.PAGEABLE, address, nbytes, None)

    def memory(self, address: int, nbytes: int) -> memoryview:
        """The live bytes at ``address`` (device memory through its backing buffer), writable."""
        region = self.region(address, nbytes)
        if region is None:
            raise DeviceFault(HipError.hipErrorIllegalAddress, f"{nbytes} bytes at {address:#x} are not allocated")
        if region.kind is MemoryKind.DEVICE:
            assert region.allocation is not None
            offset = address - region.allocation.address
            return memoryview(region.allocation.backing).cast("B")[offset : offset + nbytes]
        return memoryview((ctypes.c_char * nbytes).from_address(address)).cast("B")

    def _take_addresses(self, size: int, alignment: int) -> int:
        address = -(-self._next_address // alignment) * alignment
        if address + size > self._base + _RESERVED_BYTES:
            raise OutOfDeviceMemory("the simulated device's address space is exhausted")
        self._next_address = address + max(size, 1)
        return address

    # -- streams and events -----------------------------------------------------------------------------

    def create_stream(self, flags: int, owner: str) -> Stream:
        with self._lock:
            stream = Stream(self._take_addresses(_HANDLE_STRIDE, _HANDLE_STRIDE), flags, owner, self.record_fault)
            self._streams[stream.handle] = stream
            return stream

    def stream(self, handle: int) -> Stream | None:
        with self._lock:
            return self._streams.get(handle)

    def destroy_stream(self, handle: int) -> bool:
        """Forget the stream; queued work still completes (then its worker exits)."""
        with self._lock:
            stream = self._streams.pop(handle, None)
            if stream is None:
                return False
            self._retired.append(stream)
        stream.close()
        return True

    def create_event(self, flags: int, owner: str) -> Event:
        with self._lock:
            event = Event(self._take_addresses(_HANDLE_STRIDE, _HANDLE_STRIDE), flags, owner)
            self._events[event.handle] = event
            return event

    def event(self, handle: int) -> Event | None:
        with self._lock:
            return self._events.get(handle)

    def destroy_event(self, handle: int) -> bool:
        """Forget the event; False if there is none. ★ Refused (False, and recorded in ``violations``) while a
        host thread waits on it: ROCm would free the event under that thread."""
        with self._lock:
            event = self._events.get(handle)
            if event is not None and event.waiters:
                self.violations.append(f"hipEventDestroy of event {handle:#x} while {event.waiters} host "
                                       "thread(s) wait on it in hipEventSynchronize (a use after free)")
                return False
            return self._events.pop(handle, None) is not None

    @contextmanager
    def waiting_on(self, event: Event) -> Iterator[None]:
        """A host thread waits on ``event`` meanwhile (see :meth:`destroy_event`)."""
        with self._lock:
            event.waiters += 1
        try:
            yield
        finally:
            with self._lock:
                event.waiters -= 1

    # -- work and ordering ------------------------------------------------------------------------------

    def enqueue(self, stream: Stream, operation: Callable[[], None], what: str = "an operation",
                reads: Iterable[tuple[int, int]] = (), writes: Iterable[tuple[int, int]] = ()) -> Mark:
        """Queue a copy or kernel (delayed by ``op_delay_s``) that reads and writes the given ``(address,
        nbytes)`` ranges; the mark just after it. Raises :class:`DataRace` (and queues nothing) if it
        would race with device-memory accesses already queued."""
        delay = self.op_delay_s

        def delayed() -> None:
            if delay:
                time.sleep(delay)
            operation()

        with self._lock:
            accesses = [(allocation, write) for ranges, write in ((reads, False), (writes, True))
                        for address, nbytes in ranges
                        if (allocation := self._device_allocation(address, nbytes)) is not None]
            for allocation, write in accesses:
                self._check_race(allocation, write, stream, what)
            mark = self._submit(stream, delayed)
            for allocation, write in accesses:
                self._note(allocation, Access(mark, write, what))
            return mark

    def _device_allocation(self, address: int, nbytes: int) -> Allocation | None:
        region = self.region(address, nbytes)
        return region.allocation if region is not None and region.kind is MemoryKind.DEVICE else None

    def _check_race(self, allocation: Allocation, write: bool, stream: Stream, what: str) -> None:
        for prior in allocation.accesses:
            if (prior.write or write) and not self.ordered_before(prior.mark, stream):
                hazard = "write-after-write" if prior.write and write else \
                    "read-after-write" if prior.write else "write-after-read"
                raise DataRace(
                    f"{what} on stream {stream.handle:#x} {'writes' if write else 'reads'} device memory at "
                    f"{allocation.address:#x} that {prior.what} on stream {prior.mark.stream.handle:#x} "
                    f"{'writes' if prior.write else 'reads'}, and is not ordered after it ({hazard} race; a GPU "
                    "would silently corrupt the data). Order them: hipEventRecord after the first, "
                    "hipStreamWaitEvent before the second, or synchronise first."
                )

    @staticmethod
    def _note(allocation: Allocation, access: Access) -> None:
        """Remember ``access``; forget earlier ones it makes redundant: everything ordered before a write,
        and reads ordered before a read (any later access that must wait for them waits for this one)."""

        def redundant(prior: Access) -> bool:
            ordered = access.mark.clock.get(prior.mark.stream.handle, 0) >= prior.mark.position
            return ordered and (access.write or not prior.write)

        allocation.accesses = [prior for prior in allocation.accesses if not redundant(prior)] + [access]

    def record(self, stream: Stream) -> Mark:
        """A mark after everything queued on ``stream`` so far (what hipEventRecord captures)."""
        with self._lock:
            _merge(stream.clock, self._host_clock)
            return Mark(stream, stream.enqueued, dict(stream.clock))

    def make_wait(self, stream: Stream, mark: Mark) -> None:
        """Make later work on ``stream`` wait for ``mark`` (hipStreamWaitEvent)."""
        with self._lock:
            _merge(stream.clock, mark.clock)
            self._submit(stream, lambda: mark.stream.wait_done(mark.position))

    def wait(self, mark: Mark) -> None:
        """Block the calling thread until ``mark`` is reached; the host is then ordered after it."""
        mark.stream.wait_done(mark.position)
        with self._lock:
            _merge(self._host_clock, mark.clock)

    def query(self, mark: Mark) -> bool:
        """Whether ``mark`` has been reached (if so, the host has observed it: ordered after it)."""
        if not mark.stream.is_done(mark.position):
            return False
        with self._lock:
            _merge(self._host_clock, mark.clock)
        return True

    def ordered_before(self, mark: Mark, stream: Stream) -> bool:
        """Whether work queued on ``stream`` now is certain to start after ``mark`` on any real GPU."""
        with self._lock:
            _merge(stream.clock, self._host_clock)
            return stream.clock.get(mark.stream.handle, 0) >= mark.position

    def synchronize(self) -> None:
        """Wait for all work on all streams (hipDeviceSynchronize)."""
        with self._lock:
            marks = [self.record(stream) for stream in self._streams.values()]
        for mark in marks:
            self.wait(mark)

    def _submit(self, stream: Stream, operation: Callable[[], None]) -> Mark:
        with self._lock:
            _merge(stream.clock, self._host_clock)
            position = stream.submit(operation)
            stream.clock[stream.handle] = position
            return Mark(stream, position, dict(stream.clock))


DEVICE = SimulatedDevice()

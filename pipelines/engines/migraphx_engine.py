"""AMD MIGraphX engine: compiled once (and cached), double-buffered on the GPU, never holding the GIL
while it waits.

On the ``gpu`` target the program is compiled with ``offload_copy=False``: the engine owns every device
buffer. For each host input buffer (pinned, handed to the preprocess stage) there is a device input and
output buffer and a pinned output buffer. A submission is, without any blocking call:

    copy stream:     H2D(input k) ─ record copied[k]
    compute stream:  wait copied[k] ─ run_async(program, input k → output k) ─ D2H(output k) ─ record done[k]

so batch N+1's copy overlaps batch N's compute, and executions of the program are serialised on the one
compute stream (MIGraphX allows only one run per program in flight: it has one scratch buffer). Waiting is
``hipEventSynchronize`` through ctypes, which releases the GIL, on events created with
``hipEventBlockingSync`` so that the waiting thread sleeps instead of spinning a core; MIGraphX's own
synchronous ``run`` would freeze every Python thread for the whole inference. A buffer is not submitted
again before its result is collected (its device input would be overwritten while the GPU reads it).

The program is compiled in a child process (``migraphx_compile``: the bindings hold the GIL for the whole
compile) into the cache, keyed by everything it depends on (``program_cache.CacheKey``); the daemon only
loads it, and checks that its parameters are what this engine feeds it (a program that does not fit is
stale: rebuilt). ``close()`` frees the program, its weights and scratch with it.

The ``ref`` target (MIGraphX's reference implementation, for debugging) runs synchronously on the host.
"""

from __future__ import annotations

import ctypes
import logging
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from pipelines.engines.base import BuildHooks, BuildReport, DeviceMemory, Engine, EngineError
from pipelines.engines.batching import resolve_batch
from pipelines.engines.config import EngineConfig
from pipelines.engines.hip import Hip, HipError, load_library
from pipelines.engines.migraphx_compile import CompileRequest, compile_in_child
from pipelines.engines.migraphx_identity import codegen_environment, library_identities
from pipelines.engines.program_cache import CacheKey, ProgramCache
from pipelines.model_info import ModelInfo, model_sha256

log = logging.getLogger(__name__)

OUTPUT_PARAMETER = "main:#output_0"  # how offload_copy=False programs name their first output
FLOAT_TYPE = "float_type"  # shape.type_string() of float32
INSTALL_HINT = (
    "install MIGraphX from ROCm's packages (e.g. 'apt install migraphx' on a ROCm box) and put /opt/rocm/lib "
    "on PYTHONPATH; PyPI's 'migraphx' is an empty placeholder"
)


def import_migraphx() -> ModuleType:
    """The real ``migraphx`` module, or an :class:`EngineError` saying how to get it."""
    try:
        import migraphx
    except ImportError as exc:
        raise EngineError(f"MIGraphX is not importable ({exc}): {INSTALL_HINT}") from exc
    if not hasattr(migraphx, "parse_onnx"):
        raise EngineError(f"the 'migraphx' module at {getattr(migraphx, '__file__', '?')} is not MIGraphX: "
                          + INSTALL_HINT)
    return migraphx


def open_gpu(hip_library: str, device: int) -> Hip:
    """The HIP runtime with ``device`` selected, or an :class:`EngineError` a user can act on."""
    try:
        hip = Hip(load_library(hip_library))
    except (OSError, ImportError, AttributeError) as exc:
        raise EngineError(f"cannot load the HIP runtime {hip_library!r} ({exc}); is ROCm installed?") from exc
    count = hip.device_count()
    if count == 0:
        raise EngineError("no GPU visible to HIP: check that /dev/kfd and /dev/dri exist, that this user is in "
                          "the 'video' and 'render' groups, and HIP_VISIBLE_DEVICES")
    if device >= count:
        raise EngineError(f"engine.migraphx.device = {device}, but HIP sees {count} GPU(s)")
    hip.set_device(device)
    return hip


@dataclass(eq=False)
class _Slot:
    """One host input buffer and the device memory and events that go with it."""

    host_in: int
    device_in: int
    device_out: int
    host_out: int
    copied: int
    done: int
    view_in: np.ndarray
    view_out: np.ndarray
    in_flight: bool = False


class MigraphxEngine(Engine):
    name = "migraphx"

    def __init__(self, model_path: Path, info: ModelInfo, config: EngineConfig,
                 migraphx: ModuleType | None = None, hooks: BuildHooks | None = None) -> None:
        self._mgx = migraphx or import_migraphx()
        self._info = info
        options = config.migraphx
        self._gpu = options.target == "gpu"
        self._device = options.device
        self.batch_size = resolve_batch(model_path, info.batch, config.batch_size)
        self.max_in_flight = 2 if self._gpu else 1
        self._hip = open_gpu(options.hip_library, options.device) if self._gpu else None
        self._thread_devices = threading.local()  # threads that made the engine's device their current one
        self._input_name = _graph_input_name(model_path, info)
        self._slots: dict[int, _Slot] = {}
        self._streams: list[int] = []
        self._precision = "fp16" if options.fp16 else "fp32"
        hooks = hooks or BuildHooks()
        request = CompileRequest(
            migraphx_module=self._mgx.__name__, hip_library=options.hip_library, model=str(model_path),
            input_name=self._input_name, input_dims=[self.batch_size, *info.input_size], fp16=options.fp16,
            target=options.target, device=options.device, offload_copy=not self._gpu, fast_math=True,
            exhaustive_tune=options.exhaustive_tune)
        key = self._cache_key(model_path, request)

        weight_bytes = _weight_bytes(model_path) // (2 if options.fp16 else 1)

        def load(path: Path) -> Any:
            hooks.step("loading the compiled program")
            if self._hip is None:
                program = self._mgx.load(str(path), format="msgpack")
            else:
                program, self._placement = measure_placement(
                    self._hip, weight_bytes, lambda: self._mgx.load(str(path), format="msgpack"))
            self._check_program(program, model_path)
            return program

        problem_cache = options.cache_dir / "tuning" / problem_cache_name(key)
        try:
            cache = ProgramCache(options.cache_dir, options.cache_max_bytes).load_or_build(
                key, load, lambda path: compile_in_child(request, path, hooks, problem_cache))
        except EngineError:
            raise
        except OSError as exc:
            raise EngineError(f"cannot compile {model_path} for MIGraphX: {exc}") from exc
        except RuntimeError as exc:  # the bindings raise RuntimeError with MIGraphX's message
            raise EngineError(f"MIGraphX cannot load the program compiled from {model_path}: {exc}") from exc
        self._program = cache.program
        self._cache_outcome = cache.outcome
        self.build_report = BuildReport(cache.outcome, cache.compile_seconds, cache.cache_bytes, cache.path)
        if self._gpu:
            assert self._hip is not None
            check_placement(self._placement, options.device, options.allow_host_memory)
            try:
                self._copy_stream, self._compute_stream = self._hip.stream_create(), self._hip.stream_create()
            except HipError as exc:
                raise EngineError(f"cannot create HIP streams: {exc}") from exc
            self._streams = [self._copy_stream, self._compute_stream]

    def _cache_key(self, model_path: Path, request: CompileRequest) -> CacheKey:
        """The key of the compiled program: the model, how it is compiled, and (on a GPU) the device as HIP
        sees it — the ISA with its features, the compute units, the HIP runtime — for the device used; the
        MIGraphX, MIOpen and rocBLAS builds, and the ``MIGRAPHX_*`` variables that the compile (a child with
        this environment) reads (``migraphx_identity``)."""
        identity = None
        if self._hip is not None:
            try:
                identity = self._hip.device_identity(request.device)
            except HipError as exc:
                raise EngineError(f"cannot read the properties of GPU {request.device}: {exc}") from exc
        return CacheKey(
            model_sha256=model_sha256(model_path), batch=self.batch_size, precision=self._precision,
            target=request.target, migraphx_version=str(getattr(self._mgx, "__version__", "unknown")),
            device_arch=identity.arch if identity else "host",
            compute_units=identity.compute_units if identity else 0,
            hip_runtime_version=identity.runtime_version if identity else 0,
            offload_copy=request.offload_copy, fast_math=request.fast_math,
            exhaustive_tune=request.exhaustive_tune, environment=codegen_environment(os.environ),
            libraries=library_identities(self._mgx),
        )

    def _check_program(self, program: Any, model_path: Path) -> None:
        """The program's parameters must be what :meth:`submit` feeds: standard float32 of the expected lens
        (a program that does not fit, e.g. a cache entry from another build, is an :class:`EngineError`)."""
        shapes = program.get_parameter_shapes()
        if self._input_name not in shapes:
            raise EngineError(f"{model_path}: compiled program has no parameter {self._input_name!r} "
                              f"(has {sorted(shapes)})")
        self._input_shape = shapes[self._input_name]
        _check_shape(self._input_shape, [self.batch_size, *self._info.input_size], f"{model_path}: input")
        if self._gpu and OUTPUT_PARAMETER not in shapes:
            raise EngineError(f"{model_path}: compiled program has no {OUTPUT_PARAMETER} parameter (not compiled "
                              f"with offload_copy=False; has {sorted(shapes)})")
        self._output_shape = shapes[OUTPUT_PARAMETER] if self._gpu else program.get_output_shapes()[0]
        _check_shape(self._output_shape, [self.batch_size, self._info.num_classes],
                     f"{model_path}: output (for {self._info.num_classes} labels)")

    @property
    def input_chw(self) -> tuple[int, int, int]:
        return self._info.input_size

    def input_buffers(self, count: int) -> list[np.ndarray]:
        if not self._gpu:
            return super().input_buffers(count)
        return [self._new_slot().view_in for _ in range(count)]

    def _new_slot(self) -> _Slot:
        """Pinned host and device buffers and two events for one input buffer; all or nothing."""
        assert self._hip is not None
        hip = self._hip
        in_bytes, out_bytes = self._input_shape.bytes(), self._output_shape.bytes()
        made: list[tuple[Any, int]] = []  # (release function, handle) of what exists so far

        def make(allocate: Any, release: Any, *args: int) -> int:
            handle = allocate(*args)
            made.append((release, handle))
            return handle

        try:
            host_in = make(hip.host_malloc, hip.host_free, in_bytes)
            host_out = make(hip.host_malloc, hip.host_free, out_bytes)
            device_in = make(hip.malloc, hip.free, in_bytes)
            device_out = make(hip.malloc, hip.free, out_bytes)
            copied = make(hip.event_create, hip.event_destroy)
            done = make(hip.event_create, hip.event_destroy)
        except HipError as exc:
            for release, handle in reversed(made):
                release(handle)
            raise EngineError(f"cannot allocate GPU buffers: {exc}") from exc
        slot = _Slot(host_in, device_in, device_out, host_out, copied, done,
                     _float32_view(host_in, (self.batch_size, *self._info.input_size)),
                     _float32_view(host_out, (self.batch_size, self._info.num_classes)))
        self._slots[slot.view_in.ctypes.data] = slot
        return slot

    def submit(self, inputs: np.ndarray, count: int) -> Any:
        if not self._gpu:
            result = self._program.run({self._input_name: self._mgx.argument(inputs)})
            return np.array(result[0])[:count]  # a copy: the program's scratch is reused by the next run
        slot = self._slots.get(inputs.ctypes.data)
        if slot is None:
            raise EngineError("submit() needs one of this engine's input_buffers (pinned host memory)")
        if slot.in_flight:  # its upload would overwrite the device input the GPU may still be reading
            raise EngineError("this input buffer's previous batch is still in flight: collect its result() "
                              "before submitting the buffer again")
        hip, mgx = self._hip, self._mgx
        assert hip is not None
        self._use_device_on_this_thread(hip)
        hip.copy_to_device_async(slot.device_in, slot.host_in, self._input_shape.bytes(), self._copy_stream)
        hip.event_record(slot.copied, self._copy_stream)
        hip.stream_wait_event(self._compute_stream, slot.copied)
        self._program.run_async(
            {self._input_name: mgx.argument_from_pointer(self._input_shape, slot.device_in),
             OUTPUT_PARAMETER: mgx.argument_from_pointer(self._output_shape, slot.device_out)},
            self._compute_stream, "ihipStream_t")
        hip.copy_to_host_async(slot.host_out, slot.device_out, self._output_shape.bytes(), self._compute_stream)
        hip.event_record(slot.done, self._compute_stream)
        slot.in_flight = True
        return slot, count

    def _use_device_on_this_thread(self, hip: Hip) -> None:
        """hipSetDevice is per thread, and MIGraphX launches on the calling thread's current device."""
        if getattr(self._thread_devices, "set", False):
            return
        hip.set_device(self._device)
        self._thread_devices.set = True

    def result(self, handle: Any) -> np.ndarray:
        if not self._gpu:
            return np.asarray(handle, dtype=np.float32)
        slot, count = handle
        assert self._hip is not None
        self._hip.event_synchronize(slot.done)
        logits = np.array(slot.view_out[:count], dtype=np.float32)
        slot.in_flight = False
        return logits

    def device_memory(self) -> DeviceMemory | None:
        """The GPU's memory now (``hipMemGetInfo``, cheap enough for every scrape), and this engine's share:
        the program as its load took it, and the buffers; None on the ``ref`` target, after ``close`` or
        when HIP fails (a sticky fault: start-up or the pipeline reports that)."""
        hip = self._hip
        if hip is None:
            return None
        try:
            self._use_device_on_this_thread(hip)
            info = hip.memory_info()
        except HipError:
            return None
        buffers = len(self._slots) * (self._input_shape.bytes() + self._output_shape.bytes())
        return DeviceMemory(info.total, info.total - info.free, self._placement.on_device + buffers)

    def describe(self) -> dict[str, str]:
        return {
            "engine": self.name,
            "provider": f"migraphx-{getattr(self._mgx, '__version__', 'unknown')}",
            "target": "gpu" if self._gpu else "ref",
            "batch": str(self.batch_size),
            "precision": self._precision,
            "cache": self._cache_outcome,
        }

    def close(self) -> None:
        """Wait for work in flight, then free the buffers, streams, events and the program (its weights and
        scratch are device memory until the program object is destroyed)."""
        hip = self._hip
        if hip is not None:
            for slot in self._slots.values():
                hip.event_synchronize(slot.done)  # nothing may still use the memory freed below
            for stream in self._streams:
                hip.stream_destroy(stream)
            self._streams = []
            for slot in self._slots.values():
                for event in (slot.copied, slot.done):
                    hip.event_destroy(event)
                for address in (slot.device_in, slot.device_out):
                    hip.free(address)
                for address in (slot.host_in, slot.host_out):
                    hip.host_free(address)
            self._slots.clear()
            self._hip = None
        self._program = None


@dataclass(frozen=True)
class ProgramPlacement:
    """Where a loaded program's memory went, from ``hipMemGetInfo`` before and after the load.

    MIGraphX 2.15 never says: when ``hipMalloc`` fails, ``allocate_gpu`` silently takes ``hipHostMalloc``
    (MIGRAPHX_FACTS.md), and the program runs many times slower over PCIe. The load puts the weights on the
    device (the scratch comes on top): a load that took less device memory than half of them left (at least
    part of) the program in host memory."""

    weight_bytes: int  # as compiled: halved by fp16
    free_before: int
    free_after: int
    total: int

    @property
    def on_device(self) -> int:
        """Device memory the load took."""
        return max(self.free_before - self.free_after, 0)

    @property
    def in_host_memory(self) -> bool:
        return self.on_device < self.weight_bytes // 2


def measure_placement(hip: Hip, weight_bytes: int, load: Callable[[], Any]) -> tuple[Any, ProgramPlacement]:
    """``load()`` the program and say where it went; on the calling thread's current device."""
    before = hip.memory_info()
    program = load()
    after = hip.memory_info()
    return program, ProgramPlacement(weight_bytes, before.free, after.free, before.total)


def check_placement(placement: ProgramPlacement, device: int, allow_host_memory: bool) -> None:
    """Refuse a program that went to host memory (an :class:`EngineError`: exit 3), unless allowed (a warning)."""
    if not placement.in_host_memory:
        return
    found = (f"the compiled program does not fit in GPU {device}'s memory: it needs at least "
             f"{_mib(placement.weight_bytes)} (its weights, its scratch on top) and "
             f"{_mib(placement.free_before)} of {_mib(placement.total)} were free, so MIGraphX put it in host memory "
             f"(it took {_mib(placement.on_device)} of the GPU's), where every inference runs many times slower")
    if allow_host_memory:
        log.warning("%s (engine.migraphx.allow_host_memory = true)", found)
        return
    raise EngineError(f"{found}; lower engine.batch_size, set engine.migraphx.fp16 = true, or stop the other "
                      "processes using the GPU (rocm-smi --showpids); engine.migraphx.allow_host_memory = true "
                      "runs it anyway")


def _mib(nbytes: int) -> str:
    return f"{nbytes / (1 << 20):.1f} MiB"


def problem_cache_name(key: CacheKey) -> str:
    """MIGraphX's tuning problem cache for the device of ``key`` (in a folder of its own, apart from the
    program cache's entries): one file per GPU model, since MIGraphX 2.15 keys its entries by the problem
    alone, and a tuning result is only the best on the GPU it was timed on."""
    device = re.sub(r"[^A-Za-z0-9+-]", "_", key.device_arch)
    return f"{device}-{key.compute_units}cu.json"


def _check_shape(shape: Any, lens: list[int], what: str) -> None:
    """A compiled parameter must be standard (C-contiguous) float32 of exactly ``lens``."""
    problems = []
    if list(shape.lens()) != lens:
        problems.append(f"lens {list(shape.lens())}, expected {lens}")
    if shape.type_string() != FLOAT_TYPE:
        problems.append(f"type {shape.type_string()}, expected {FLOAT_TYPE}")
    if not shape.standard():
        problems.append(f"strides {list(shape.strides())} are not standard")
    if problems:
        raise EngineError(f"{what} of the compiled program does not fit: {'; '.join(problems)}")


def _float32_view(address: int, shape: tuple[int, ...]) -> np.ndarray:
    """A numpy array over memory that HIP allocated (no copy; valid until that memory is freed)."""
    elements = int(np.prod(shape))
    return np.ctypeslib.as_array((ctypes.c_float * elements).from_address(address)).reshape(shape)


def _weight_bytes(model_path: Path) -> int:
    """The model's weights (initializers, embedded or external) in bytes, from their shapes and types."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    return sum(int(np.prod(init.dims)) * onnx.helper.tensor_dtype_to_np_dtype(init.data_type).itemsize
               for init in graph.initializer)


def _graph_input_name(model_path: Path, info: ModelInfo) -> str:
    """The graph's one input, after checking that its declared (C, H, W) is the metadata's.

    ``map_input_dims`` would silently override the graph's own dims, so the check has to come first.
    """
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    initializers = {init.name for init in graph.initializer}
    inputs = [value for value in graph.input if value.name not in initializers]
    if len(inputs) != 1:
        raise EngineError(f"{model_path}: expected one graph input, found {[v.name for v in inputs]}")
    dims = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in inputs[0].type.tensor_type.shape.dim]
    if dims[1:] != list(info.input_size):
        raise EngineError(f"{model_path}: graph input shape {dims} does not match the metadata's "
                          f"input_size {list(info.input_size)}")
    return inputs[0].name

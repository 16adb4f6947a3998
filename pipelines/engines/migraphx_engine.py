"""AMD MIGraphX engine: compiled once (and cached), double-buffered on the GPU, never holding the GIL
while it waits.

On the ``gpu`` target the program is compiled with ``offload_copy=False``: the engine owns every device
buffer. For each host input buffer (pinned, handed to the preprocess stage) there is a device input and
output buffer and a pinned output buffer. A submission is, without any blocking call:

    copy stream:     H2D(input k) ─ record copied[k]
    compute stream:  wait copied[k] ─ run_async(program, input k → output k) ─ D2H(output k) ─ record done[k]

so batch N+1's copy overlaps batch N's compute, and executions of the program are serialised on the one
compute stream (MIGraphX allows only one run per program in flight: it has one scratch buffer). Waiting is
``hipEventSynchronize`` through ctypes, which releases the GIL, whereas MIGraphX's own synchronous ``run``
would freeze every Python thread for the whole inference.

The ``ref`` target (MIGraphX's reference implementation, for debugging) runs synchronously on the host.
"""

from __future__ import annotations

import ctypes
import logging
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from pipelines.engines.base import BuildReport, Engine, EngineError
from pipelines.engines.batching import resolve_batch
from pipelines.engines.config import EngineConfig
from pipelines.engines.gpu_arch import gpu_architecture
from pipelines.engines.hip import Hip, HipError, load_library
from pipelines.engines.program_cache import CacheKey, CacheResult, ProgramCache
from pipelines.model_info import ModelInfo, file_sha256

log = logging.getLogger(__name__)

OUTPUT_PARAMETER = "main:#output_0"  # how offload_copy=False programs name their first output
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


class MigraphxEngine(Engine):
    name = "migraphx"

    def __init__(self, model_path: Path, info: ModelInfo, config: EngineConfig,
                 migraphx: ModuleType | None = None) -> None:
        self._mgx = migraphx or import_migraphx()
        self._info = info
        options = config.migraphx
        self._gpu = options.target == "gpu"
        self.batch_size = resolve_batch(model_path, info.batch, config.batch_size)
        self.max_in_flight = 2 if self._gpu else 1
        self._hip = open_gpu(options.hip_library, options.device) if self._gpu else None
        self._input_name = _graph_input_name(model_path, info)
        self._slots: dict[int, _Slot] = {}
        self._streams: list[int] = []

        key = CacheKey(
            model_sha256=file_sha256(model_path), batch=self.batch_size,
            precision="fp16" if options.fp16 else "fp32", target=options.target,
            compiler_version=str(getattr(self._mgx, "__version__", "unknown")),
            gpu_arch=gpu_architecture(options.device) if self._gpu else "host",
            exhaustive_tune=options.exhaustive_tune,
        )
        self._precision = key.precision
        try:
            self.cache: CacheResult[Any] = ProgramCache(options.cache_dir).load_or_build(
                key,
                load=lambda path: self._mgx.load(str(path), format="msgpack"),
                save=lambda program, path: self._mgx.save(program, str(path), format="msgpack"),
                build=lambda: self._compile(model_path, options.fp16, options.target, options.exhaustive_tune),
            )
        except EngineError:
            raise
        except Exception as exc:  # the bindings raise RuntimeError with MIGraphX's message
            raise EngineError(f"MIGraphX cannot compile {model_path}: {exc}") from exc
        self._program = self.cache.program
        self.build_report = BuildReport(self.cache.outcome, self.cache.compile_seconds)
        self._check_shapes(model_path)
        if self._gpu:
            assert self._hip is not None
            try:
                self._copy_stream, self._compute_stream = self._hip.stream_create(), self._hip.stream_create()
            except HipError as exc:
                raise EngineError(f"cannot create HIP streams: {exc}") from exc
            self._streams = [self._copy_stream, self._compute_stream]

    def _compile(self, model_path: Path, fp16: bool, target: str, exhaustive_tune: bool) -> Any:
        mgx = self._mgx
        log.info("compiling %s for MIGraphX %s (batch %d, %s); this can take minutes", model_path, target,
                 self.batch_size, "fp16" if fp16 else "fp32")
        program = mgx.parse_onnx(str(model_path),
                                 map_input_dims={self._input_name: [self.batch_size, *self._info.input_size]})
        if fp16:
            mgx.quantize_fp16(program)
        program.compile(mgx.get_target(target), offload_copy=not self._gpu, fast_math=True,
                        exhaustive_tune=exhaustive_tune)
        return program

    def _check_shapes(self, model_path: Path) -> None:
        shapes = self._program.get_parameter_shapes()
        if self._input_name not in shapes:
            raise EngineError(f"{model_path}: compiled program has no parameter {self._input_name!r} "
                              f"(has {sorted(shapes)})")
        self._input_shape = shapes[self._input_name]
        expected = [self.batch_size, *self._info.input_size]
        if list(self._input_shape.lens()) != expected:
            raise EngineError(f"{model_path}: compiled input shape {list(self._input_shape.lens())} is not "
                              f"the expected {expected}")
        output_shapes = self._program.get_output_shapes()
        self._output_shape = shapes[OUTPUT_PARAMETER] if self._gpu else output_shapes[0]
        if list(self._output_shape.lens()) != [self.batch_size, self._info.num_classes]:
            raise EngineError(f"{model_path}: output shape {list(self._output_shape.lens())} does not match "
                              f"{self._info.num_classes} labels at batch {self.batch_size}")

    @property
    def input_chw(self) -> tuple[int, int, int]:
        return self._info.input_size

    def input_buffers(self, count: int) -> list[np.ndarray]:
        if not self._gpu:
            return super().input_buffers(count)
        return [self._new_slot().view_in for _ in range(count)]

    def _new_slot(self) -> _Slot:
        assert self._hip is not None
        hip = self._hip
        in_bytes, out_bytes = self._input_shape.bytes(), self._output_shape.bytes()
        try:
            host_in, host_out = hip.host_malloc(in_bytes), hip.host_malloc(out_bytes)
            slot = _Slot(host_in, hip.malloc(in_bytes), hip.malloc(out_bytes), host_out,
                         hip.event_create(), hip.event_create(),
                         _float32_view(host_in, (self.batch_size, *self._info.input_size)),
                         _float32_view(host_out, (self.batch_size, self._info.num_classes)))
        except HipError as exc:
            raise EngineError(f"cannot allocate GPU buffers: {exc}") from exc
        self._slots[slot.view_in.ctypes.data] = slot
        return slot

    def submit(self, inputs: np.ndarray, count: int) -> Any:
        if not self._gpu:
            result = self._program.run({self._input_name: self._mgx.argument(inputs)})
            return np.array(result[0])[:count]  # a copy: the program's scratch is reused by the next run
        slot = self._slots.get(inputs.ctypes.data)
        if slot is None:
            raise EngineError("submit() needs one of this engine's input_buffers (pinned host memory)")
        hip, mgx = self._hip, self._mgx
        assert hip is not None
        hip.copy_to_device_async(slot.device_in, slot.host_in, self._input_shape.bytes(), self._copy_stream)
        hip.event_record(slot.copied, self._copy_stream)
        hip.stream_wait_event(self._compute_stream, slot.copied)
        self._program.run_async(
            {self._input_name: mgx.argument_from_pointer(self._input_shape, slot.device_in),
             OUTPUT_PARAMETER: mgx.argument_from_pointer(self._output_shape, slot.device_out)},
            self._compute_stream, "ihipStream_t")
        hip.copy_to_host_async(slot.host_out, slot.device_out, self._output_shape.bytes(), self._compute_stream)
        hip.event_record(slot.done, self._compute_stream)
        return slot, count

    def result(self, handle: Any) -> np.ndarray:
        if not self._gpu:
            return np.asarray(handle, dtype=np.float32)
        slot, count = handle
        assert self._hip is not None
        self._hip.event_synchronize(slot.done)
        return np.array(slot.view_out[:count], dtype=np.float32)

    def describe(self) -> dict[str, str]:
        return {
            "engine": self.name,
            "provider": f"migraphx-{getattr(self._mgx, '__version__', 'unknown')}",
            "target": "gpu" if self._gpu else "ref",
            "batch": str(self.batch_size),
            "precision": self._precision,
            "cache": self.cache.outcome,
        }

    def close(self) -> None:
        hip = self._hip
        if hip is None:
            return
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


def _float32_view(address: int, shape: tuple[int, ...]) -> np.ndarray:
    """A numpy array over memory that HIP allocated (no copy; valid until that memory is freed)."""
    elements = int(np.prod(shape))
    return np.ctypeslib.as_array((ctypes.c_float * elements).from_address(address)).reshape(shape)


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

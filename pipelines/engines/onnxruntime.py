"""ONNX Runtime engine: the portable default, on CPU here and on whatever providers a box has.

ONNX Runtime is an optional dependency (one flavour per environment: the extras ``onnxruntime`` for CPU,
``onnxruntime-gpu`` for NVIDIA, or ROCm's ``onnxruntime-migraphx`` wheel); nothing imports it before an
engine of this kind is probed or built.

Four things ONNX Runtime does quietly are made loud here:

- A provider that cannot be created (an unknown option, a missing device) makes ``InferenceSession`` retry with
  ``CPUExecutionProvider`` and say so only with ``print()`` (``InferenceSession.__init__`` in
  ``onnxruntime/capi/onnxruntime_inference_collection.py``, read at 1.18, 1.22, 1.23, 1.27 and 1.32). The session
  is asked for with ``enable_fallback=0``, which the wrapper reads from ``**kwargs`` since 1.23 and then raises
  the provider's error; older releases ignore the keyword, so what they print is captured and the provider in use
  is checked: start-up fails, naming ONNX Runtime's reason, unless the first configured provider is the one in
  use.
- Provider options were renamed between releases (``OPTION_RENAMES``); a stale name would make the provider fail
  and the session fall back, so it is an error naming its replacement, or translated where the installed release
  has a one-to-one equivalent.
- A compiling provider (MIGraphX, TensorRT) compiles one program per input shape, for minutes: it is always fed
  the full, padded batch, so the warm-up compiles the only shape that will ever run.
- A provider that is started may still take none of the graph: ONNX Runtime gives each node it does not claim to
  the CPU provider without a word. Where the nodes ran is read from ONNX Runtime's profile of the first run
  (:func:`read_placement`), logged, exported, and start-up refuses a GPU provider that took no node.

Why the profile of the one real session, and not a second session with ``session.disable_cpu_ep_fallback = 1``
(whose creation fails when any node would need the CPU provider): that second session would compile the whole
graph a second time on a compiling provider (minutes for MIGraphX EP), it says only "all or not all", and a graph
the GPU provider takes mostly (a shape op left on the CPU is common and harmless) would fail it. The profile
costs the first run's timing records, nothing after (``end_profiling`` stops the profiler), and names every
node's provider. What it counts is the nodes of the optimised graph as they ran: a compiling provider fuses the
nodes it claims into one node per subgraph (``MGXKernel_graph_...``), so its count is of subgraphs.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import shutil
import tempfile
import weakref
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from pipelines.engines.base import Engine, EngineError, Placement
from pipelines.engines.batching import resolve_batch
from pipelines.engines.config import EngineConfig, OnnxRuntimeOptions
from pipelines.engines.hip import HIP_DEVICE_SCHEDULE_BLOCKING_SYNC, Hip, HipError, load_library
from pipelines.model_info import ModelInfo

log = logging.getLogger(__name__)

INSTALL_HINT = (
    "install one ONNX Runtime flavour: pip install 'nfnet-stream[onnxruntime]' (CPU) or "
    "'nfnet-stream[onnxruntime-gpu]' (NVIDIA CUDA); on a ROCm box ROCm's onnxruntime-migraphx wheel, or no ONNX "
    "Runtime at all with engine.type = \"migraphx\""
)
CPU = "CPUExecutionProvider"
MIGRAPHX = "MIGraphXExecutionProvider"
# Preference order when no providers are configured. (The ROCm execution provider was removed in ONNX Runtime
# 1.23; with an older release it can still be configured by name.)
PREFERRED_PROVIDERS = (MIGRAPHX, "CUDAExecutionProvider", CPU)
GPU_PROVIDERS = frozenset({MIGRAPHX, "CUDAExecutionProvider"})
# Providers that compile a program for each new input shape (MIGraphX: one per shape unless
# migraphx_max_dynamic_batch is set; TensorRT: an engine per shape profile).
COMPILING_PROVIDERS = frozenset({MIGRAPHX, "TensorrtExecutionProvider"})


@dataclass(frozen=True)
class OptionRename:
    """Provider options that ONNX Runtime ``version`` replaced: ``old`` names before it, ``new`` from it on."""

    provider: str
    version: tuple[int, int]
    old: tuple[str, ...]
    new: str


# Read from the releases' own option parsers: up to 1.22 the Python bindings parsed MIGraphX's options
# (onnxruntime_pybind_state.cc, "Invalid MIGraphX EP option: "; the names are the strings of the 1.22.1
# onnxruntime_pybind11_state.so); from 1.23 the provider does (migraphx_execution_provider_info.h/.cc,
# ProviderOptionsParser, 'Unknown provider option: "NAME".'; the names are the strings of the 1.23.0 and 1.27.1
# libonnxruntime_providers_migraphx.so and upstream's migraphx_provider_option namespace).
OPTION_RENAMES = (
    OptionRename("MIGraphXExecutionProvider", (1, 23),
                 ("migraphx_save_compiled_model", "migraphx_save_model_path",
                  "migraphx_load_compiled_model", "migraphx_load_model_path"),
                 "migraphx_model_cache_dir"),
    OptionRename("MIGraphXExecutionProvider", (1, 23),
                 ("migraphx_use_native_calibration_table",), "migraphx_int8_use_native_calibration_table"),
)

_registered_plugins: dict[str, Path] = {}  # ONNX Runtime keeps a registration for the process's lifetime


def import_onnxruntime() -> ModuleType:
    """The ``onnxruntime`` module, or an :class:`EngineError` saying which package provides it."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise EngineError(f"ONNX Runtime is not importable ({exc}): {INSTALL_HINT}") from exc
    return onnxruntime


def release(version: str) -> tuple[int, int]:
    """(major, minor) of an ONNX Runtime version string such as ``1.22.2.post1``."""
    major, minor = version.split(".")[:2]
    return int(major), int(minor)


def installed_option_names(provider: str, options: dict[str, str], version: str) -> dict[str, str]:
    """``options`` with each name as ONNX Runtime ``version`` spells it. Raises :class:`EngineError` for a name
    that version replaced (naming the replacement) or one it does not have yet, with no one-to-one equivalent."""
    installed = release(version)
    named = dict(options)
    where = f"engine.onnxruntime.provider_options.{provider}"
    for rename in (r for r in OPTION_RENAMES if r.provider == provider):
        since = ".".join(map(str, rename.version))
        stale = [name for name in rename.old if name in named]
        if stale and installed >= rename.version:
            raise EngineError(f"{where}: {', '.join(stale)} replaced by {rename.new} in ONNX Runtime {since} "
                              f"(installed: {version})")
        if rename.new in named and installed < rename.version:
            if len(rename.old) > 1:
                raise EngineError(f"{where}: {rename.new} is new in ONNX Runtime {since} (installed: {version}, "
                                  f"which has {', '.join(rename.old)} instead)")
            named[rename.old[0]] = named.pop(rename.new)
    return named


def register_plugin_library(ort: ModuleType, name: str, path: Path) -> None:
    """Register a plugin execution provider library with ONNX Runtime under ``name`` (``onnxruntime/__init__.py``
    exports ``register_execution_provider_library`` from 1.23, not in 1.22)."""
    if not hasattr(ort, "register_execution_provider_library"):
        raise EngineError(f"engine.onnxruntime.plugin_libraries needs ONNX Runtime 1.23 or later "
                          f"(installed: {ort.__version__})")
    if not path.is_file():
        raise EngineError(f"engine.onnxruntime.plugin_libraries.{name}: no such file: {path}")
    try:
        ort.register_execution_provider_library(name, str(path))
    except Exception as exc:  # ONNX Runtime's exception types (Fail, ...) derive from Exception only
        raise EngineError(f"ONNX Runtime cannot register the plugin library {path}: {exc}") from exc
    _registered_plugins[name] = path


def register_plugin_libraries(ort: ModuleType, libraries: dict[str, Path]) -> None:
    """Register each plugin library (once per process: ONNX Runtime refuses a name twice) and check that it offers
    the provider it is listed under, with a device here; raise :class:`EngineError` naming what is wrong."""
    for name, path in libraries.items():
        if _registered_plugins.get(name) != path:
            register_plugin_library(ort, name, path)
        offered = sorted({device.ep_name for device in ort.get_ep_devices()})
        if name not in offered:
            raise EngineError(f"{path} offers no {name} on this machine (ONNX Runtime's providers with a "
                              f"device: {offered})")


def best_providers(available: list[str]) -> list[str]:
    """The preferred GPU provider that is available (if any), then CPU as the fallback."""
    chosen = [p for p in PREFERRED_PROVIDERS if p in available and p != CPU][:1]
    return [*chosen, CPU]


def resolve_providers(options: OnnxRuntimeOptions) -> list[tuple[str, dict[str, str]]]:
    """The providers a session will ask for, in order, each with its options as the installed ONNX Runtime names
    them; registers ``plugin_libraries`` first. Raises :class:`EngineError` if one is missing here,
    ``provider_options`` names one not in use, an option name does not fit the installed release, or a plugin
    provider is not first (followed by nothing but CPU)."""
    ort = import_onnxruntime()
    register_plugin_libraries(ort, options.plugin_libraries)
    available = [*ort.get_available_providers(), *options.plugin_libraries]
    providers = options.providers or best_providers(available)
    missing = [p for p in providers if p not in available]
    if missing:
        raise EngineError(
            f"ONNX Runtime providers {missing} are not available in this installation (available: {available})")
    unknown = sorted(set(options.provider_options) - set(providers))
    if unknown:
        raise EngineError(f"engine.onnxruntime.provider_options names providers not in use: {unknown}")
    plugins = [p for p in providers if p in options.plugin_libraries]
    if plugins and (plugins != providers[:1] or set(providers[1:]) - {CPU}):
        raise EngineError("engine.onnxruntime.providers: a plugin provider must come first, followed by nothing "
                          f"but {CPU} (got {providers})")
    return [(p, installed_option_names(p, options.provider_options.get(p, {}), ort.__version__)) for p in providers]


def output_device(provider: str, provider_options: dict[str, str]) -> tuple[str, int]:
    """Where a bound output is allocated: on the CUDA provider's own device (``device_id``); for every other
    provider on the host. ONNX Runtime's wrapper turns the device name "cuda" into an NVIDIA device
    (``OrtDevice.make`` with the vendor alias, read at 1.27 and 1.32), whose allocator an AMD MIGraphX session
    does not have; bound to the host, the output is copied back inside the run, the one copy it needs anyway."""
    if provider == "CUDAExecutionProvider":
        return "cuda", int(provider_options.get("device_id", "0"))
    return "cpu", 0


def fallback_reason(printed: str) -> str:
    """ONNX Runtime's reason, from what its wrapper printed when it fell back ("EP Error {e} when using ...")."""
    match = re.search(r"EP Error (.*) when using ", printed, re.DOTALL)
    return match.group(1).strip() if match else "ONNX Runtime gave no reason"


def read_placement(profile: Path, providers: list[str]) -> Placement:
    """Where the nodes ran, from an ONNX Runtime profile (``SessionOptions.enable_profiling``) of a session of
    ``providers``: each event of category "Node" that names a provider (a node's ``_kernel_time``; its fences name
    none) counts its node once."""
    ran_on: dict[str, tuple[str, str]] = {}  # node name -> (provider, op type)
    for event in json.loads(profile.read_text()):
        args = event.get("args", {})
        if event.get("cat") == "Node" and "provider" in args:
            ran_on[event["name"].removesuffix("_kernel_time")] = args["provider"], args.get("op_name", "?")
    ops: dict[str, Counter[str]] = {}
    for provider, op_type in ran_on.values():
        ops.setdefault(provider, Counter())[op_type] += 1
    return Placement(tuple(providers), ops)


def check_placement(placement: Placement) -> None:
    """Refuse a GPU provider that took no node: the model would run on the CPU, slowly, under a GPU's name."""
    if placement.provider in GPU_PROVIDERS and placement.nodes(placement.provider) == 0:
        raise EngineError(f"ONNX Runtime's {placement.provider} took none of the model's {placement.total} nodes: "
                          f"all would run on {CPU} ({placement.describe()})")


def block_while_waiting(hip_library: str, device: int) -> None:
    """``hipSetDeviceFlags(hipDeviceScheduleBlockingSync)`` on the provider's ``device``, before the MIGraphX
    provider starts on it, so that its waits for the GPU sleep instead of spinning a core (ROCm busy-waits by
    default). ONNX Runtime's MIGraphX build needs no HIP library of the daemon's: one that is missing is not an
    error."""
    try:
        hip = Hip(load_library(hip_library))
    except (OSError, ImportError) as exc:
        log.debug("onnxruntime: no HIP runtime to set blocking waits with (%s)", exc)
        return
    try:
        hip.set_device(device)  # the flags are the current device's
        hip.set_device_flags(HIP_DEVICE_SCHEDULE_BLOCKING_SYNC)
    except HipError as exc:  # the provider's own start-up then says what is wrong with the device
        log.warning("onnxruntime: %s: the provider's waits for the GPU may keep a core busy", exc)


def create_session(ort: ModuleType, model_path: Path, session_options: Any,
                   providers: list[tuple[str, dict[str, str]]], plugin: bool) -> Any:
    """An ``InferenceSession`` running on the first of ``providers``, or :class:`EngineError` with ONNX Runtime's
    reason. A plugin provider is added through the session options with its devices (``add_provider_for_devices``,
    the route ONNX Runtime documents for plugin libraries)."""
    first, first_options = providers[0]
    printed = io.StringIO()
    try:
        if plugin:
            session_options.add_provider_for_devices(
                [device for device in ort.get_ep_devices() if device.ep_name == first], first_options)
        with contextlib.redirect_stdout(printed):  # where ONNX Runtime < 1.23 says it fell back
            session = ort.InferenceSession(str(model_path), session_options, enable_fallback=0,
                                           **({} if plugin else {"providers": providers}))
    except Exception as exc:  # ORT raises its own exception types per failure
        raise EngineError(f"ONNX Runtime cannot load {model_path} with {first}: {exc}") from exc
    session.disable_fallback()  # and before 1.23, run() would still fall back to CPU on a provider failure
    in_use = session.get_providers()
    if in_use[0] != first:
        raise EngineError(f"ONNX Runtime could not start {first} (it fell back to {in_use}): "
                          f"{fallback_reason(printed.getvalue())}")
    return session


class OnnxRuntimeEngine(Engine):
    name = "onnxruntime"

    def __init__(self, model_path: Path, info: ModelInfo, config: EngineConfig) -> None:
        ort = import_onnxruntime()
        options = config.onnxruntime
        providers = resolve_providers(options)
        session_options = ort.SessionOptions()
        session_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session_options.intra_op_num_threads = options.intra_op_threads
        session_options.inter_op_num_threads = 1
        session_options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # For the first run only: where its nodes ran (read_placement). ONNX Runtime opens the file when the session
        # is created and writes it at end_profiling, or when the session is destroyed: a directory of the engine's
        # own, removed once read or when the engine goes, leaves nothing behind either way.
        profile_dir = tempfile.mkdtemp(prefix="nfnet-stream-profile-")
        self._remove_profile = weakref.finalize(self, shutil.rmtree, profile_dir, ignore_errors=True)
        session_options.enable_profiling = True
        session_options.profile_file_prefix = os.path.join(profile_dir, "placement")
        first, first_options = providers[0]
        if first == MIGRAPHX:
            block_while_waiting(config.migraphx.hip_library, int(first_options.get("device_id", "0")))
        self._session = create_session(ort, model_path, session_options, providers,
                                       plugin=first in options.plugin_libraries)

        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        if len(inputs) != 1:
            raise EngineError(f"{model_path}: expected one input, found {[i.name for i in inputs]}")
        model_input = inputs[0]
        if list(model_input.shape[1:]) != list(info.input_size):
            raise EngineError(
                f"{model_path}: graph input shape {model_input.shape} does not match the metadata's "
                f"input_size {list(info.input_size)}"
            )
        classes = outputs[0].shape[-1] if outputs[0].shape else None
        if isinstance(classes, int) and classes != info.num_classes:
            raise EngineError(f"{model_path}: the model outputs {classes} scores a frame, but its metadata lists "
                              f"{info.num_classes} labels: re-export it with labels that match")
        static_batch = model_input.shape[0] if isinstance(model_input.shape[0], int) else None
        self.batch_size = resolve_batch(model_path, static_batch, config.batch_size)
        self._provider, provider_options = providers[0]
        # A static batch must be fed whole; a compiling provider would recompile (minutes) for a partial one.
        self._full_batches = static_batch is not None or self._provider in COMPILING_PROVIDERS
        self._input_name = model_input.name
        self._input_dtype = np.float16 if model_input.type == "tensor(float16)" else np.float32
        self._output_name = outputs[0].name
        self._info = info
        use_binding = options.io_binding if options.io_binding is not None else self._provider in GPU_PROVIDERS
        self._binding = self._session.io_binding() if use_binding else None
        self._output_device = output_device(self._provider, provider_options)

    def _place(self) -> None:
        """After the first run: read where its nodes ran from the profile (then deleted with its directory); refuse
        a GPU provider that took none."""
        try:
            self.placement = read_placement(Path(self._session.end_profiling()), self._session.get_providers())
        finally:
            self._remove_profile()
        check_placement(self.placement)

    @property
    def input_chw(self) -> tuple[int, int, int]:
        return self._info.input_size

    def submit(self, inputs: np.ndarray, count: int) -> np.ndarray:
        """ONNX Runtime runs synchronously (releasing the GIL): the handle is the finished logits."""
        feed = inputs if self._full_batches else inputs[:count]
        if feed.dtype != self._input_dtype:
            feed = feed.astype(self._input_dtype)
        if self._binding is None:
            (logits,) = self._session.run([self._output_name], {self._input_name: feed})
        else:
            # Bound input: ONNX Runtime copies host → device once, with no intermediate copy; the output
            # stays on the provider's device until copied back.
            self._binding.bind_cpu_input(self._input_name, np.ascontiguousarray(feed))
            self._binding.bind_output(self._output_name, *self._output_device)
            self._session.run_with_iobinding(self._binding)
            (logits,) = self._binding.copy_outputs_to_cpu()
        if self.placement is None:
            self._place()
        return np.asarray(logits[:count], dtype=np.float32)

    def result(self, handle: np.ndarray) -> np.ndarray:
        return handle

    def close(self) -> None:
        """Drop the session (weights, arena) now rather than whenever the engine object is collected, and the
        profile's directory if no run read it."""
        self._remove_profile()
        self._binding = None
        self._session = None  # type: ignore[assignment]

    def describe(self) -> dict[str, str]:
        return {
            "engine": self.name,
            "provider": self._provider,
            "io_binding": str(self._binding is not None).lower(),
            "batch": str(self.batch_size),
            "precision": self._info.precision,
        }

"""A test double of ROCm's ``onnxruntime-migraphx`` build: the installed (CPU) ``onnxruntime`` plus a
``MIGraphXExecutionProvider`` that exists only here. Put it in place with
``monkeypatch.setitem(sys.modules, "onnxruntime", onnxruntime_migraphx())``.

Real: everything but the provider. ONNX Runtime's own Python wrapper runs (``InferenceSession.__init__`` with its
fallback to CPU and ``enable_fallback``, ``IOBinding``), and so do its sessions and kernels.

Stood in for: creating the provider, in ``InferenceSession._create_inference_session``
(``onnxruntime/capi/onnxruntime_inference_collection.py``; at 1.32 it sets ``self._fallback_providers`` first,
then ``sess.initialize_session(providers, provider_options, ...)`` hands the options to the provider). The
provider checks its option names as the release it stands for does, and raises what that release raises, as a
``RuntimeError`` (pybind11's translation of ``OnnxRuntimeException``, which the wrapper's
``except (ValueError, RuntimeError)`` falls back on):

- 1.23 and later: ``MIGraphXExecutionProviderInfo`` (``migraphx_execution_provider_info.cc``) parses them with
  ``ProviderOptionsParser`` (``provider_options_utils.h``): ``Unknown provider option: "NAME".``. Names: upstream
  ``migraphx_execution_provider_info.h`` (``migraphx_provider_option``); the 1.23.0 and 1.27.1 wheels have the
  same less ``migraphx_max_dynamic_batch`` and ``migraphx_max_compiled_models``.
- Before 1.23: the Python bindings parse them (``onnxruntime_pybind_state.cc``): ``Invalid MIGraphX EP option:
  NAME``. Names: the strings of the 1.22.1 wheel's ``onnxruntime_pybind11_state.so``. That release's wrapper reads
  no ``enable_fallback`` keyword (its ``__init__`` sets ``self._enable_fallback = True``), so the double drops it
  and the real wrapper falls back and prints exactly as 1.22 does (the same lines); nor does that release have
  ``register_execution_provider_library`` or ``get_ep_devices`` (1.22.0's ``onnxruntime/__init__.py``).

A created provider runs the session on ONNX Runtime's CPU provider and reports
``["MIGraphXExecutionProvider", "CPUExecutionProvider"]`` from ``get_providers()``, as the real one does. The double
records every batch run (``runs``: input shapes, each of which the real provider would compile for) and every
output binding (``output_devices``: ``(device_type, device_id)``; the output is bound to the host, as the CPU
build has no GPU allocator).

Which nodes the provider takes: those whose op type is in ``supported_ops`` (an argument, else the
``ORT_MIGRAPHX_DOUBLE_SUPPORTED_OPS`` environment variable, comma-separated, for a daemon in a subprocess; neither:
every op). The others go to ``CPUExecutionProvider``, as ONNX Runtime's partitioning gives it whatever the
provider's ``GetCapability`` does not claim, and the session is still created, with no word. Where they ran shows
where the real build shows it, in the profile (``SessionOptions.enable_profiling``): ``end_profiling()`` returns
ONNX Runtime's own JSON file (written by the real CPU session), rewritten as the provider's fusion makes it: each
run of claimed nodes in execution order is one fused node (``MIGraphXExecutionProvider_MGXKernel_graph_...``) run by
``MIGraphXExecutionProvider``, as ORT fuses each subgraph a compiling provider claims into one node.

``register_execution_provider_library`` records the library without loading it: it stands for a plugin library
that loads and offers no device on this machine (as the OpenVINO plugin 1.8.1 does on an AMD CPU).

Not modelled: the exact partitioning and fused names (the real provider's subgraphs follow the graph's
connections, with a hash in their names; here runs in execution order) and the graph it sees (here the CPU
session's optimised graph, NCHWc reorders included); compiling itself, ``device_id`` range checks
(``hipGetDeviceCount``), option values, plugin libraries that offer devices.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import onnxruntime as real

MIGRAPHX = "MIGraphXExecutionProvider"
CPU = "CPUExecutionProvider"
OPTIONS_SINCE_1_23 = frozenset({
    "device_id", "migraphx_fp16_enable", "migraphx_bf16_enable", "migraphx_fp8_enable", "migraphx_int8_enable",
    "migraphx_int8_calibration_table_name", "migraphx_int8_use_native_calibration_table", "migraphx_exhaustive_tune",
    "migraphx_mem_limit", "migraphx_arena_extend_strategy", "migraphx_external_alloc", "migraphx_external_free",
    "migraphx_external_empty_cache", "migraphx_model_cache_dir", "migraphx_max_dynamic_batch",
    "migraphx_max_compiled_models",
})
OPTIONS_BEFORE_1_23 = frozenset({
    "device_id", "migraphx_fp16_enable", "migraphx_int8_enable", "migraphx_int8_calibration_table_name",
    "migraphx_use_native_calibration_table", "migraphx_save_compiled_model", "migraphx_save_model_path",
    "migraphx_load_compiled_model", "migraphx_load_model_path", "migraphx_exhaustive_tune",
})
PLUGIN_API = frozenset({"register_execution_provider_library", "unregister_execution_provider_library",
                        "get_ep_devices"})


def _name(provider: str | tuple[str, dict[str, str]]) -> str:
    return provider[0] if isinstance(provider, tuple) else provider


SUPPORTED_OPS_VARIABLE = "ORT_MIGRAPHX_DOUBLE_SUPPORTED_OPS"


def supported_from_environment() -> frozenset[str] | None:
    """The op types ``ORT_MIGRAPHX_DOUBLE_SUPPORTED_OPS`` names (``""``: none); None (every op) when unset."""
    names = os.environ.get(SUPPORTED_OPS_VARIABLE)
    return None if names is None else frozenset(filter(None, (n.strip() for n in names.split(","))))


NODE_EVENT_SUFFIXES = ("_kernel_time", "_fence_before", "_fence_after")  # a node's events in a profile


def node_of(event: dict[str, Any]) -> tuple[str, str] | None:
    """(node name, suffix) of a profile event of category "Node"; None for other events."""
    if event.get("cat") != "Node":
        return None
    name = event["name"]
    return next(((name.removesuffix(s), s) for s in NODE_EVENT_SUFFIXES if name.endswith(s)), None)


def fused_groups(kernels: Iterable[tuple[str, str]], supported: frozenset[str] | None) -> dict[str, int]:
    """Node name → the fused subgraph it is part of, for ``kernels`` (node, op type) in execution order: each run of
    supported nodes is one subgraph, as the provider's GetCapability partitions the graph in topological order."""
    groups: dict[str, int] = {}
    group, previous_claimed = -1, False
    for node, op_type in kernels:
        claimed = supported is None or op_type in supported
        if claimed and not previous_claimed:
            group += 1
        if claimed:
            groups[node] = group
        previous_claimed = claimed
    return groups


def claim_in_profile(profile: str, supported: frozenset[str] | None) -> None:
    """Rewrite a CPU session's profile as the MIGraphX build's would read: each run of nodes of a supported op type
    is one fused node (``MIGraphXExecutionProvider_MGXKernel_graph_main_graph_N_N``, op ``MGXKernel_graph_...``)
    run by ``MIGraphXExecutionProvider``; the other nodes stay on ``CPUExecutionProvider``."""
    events = json.loads(Path(profile).read_text())
    kernels = dict.fromkeys((event["name"].removesuffix("_kernel_time"), event["args"]["op_name"])
                            for event in events if "provider" in event.get("args", {}) and node_of(event))
    groups = fused_groups(kernels, supported)
    for event in events:
        node = node_of(event)
        if node is None or node[0] not in groups:
            continue
        group, args = groups[node[0]], event["args"]
        args["op_name"] = f"MGXKernel_graph_main_graph_{group}"
        event["name"] = f"{MIGRAPHX}_{args['op_name']}_{group}{node[1]}"
        if "provider" in args:
            args["provider"] = MIGRAPHX
    Path(profile).write_text(json.dumps(events))


def onnxruntime_migraphx(version: str = real.__version__, supported_ops: Iterable[str] | None = None) -> ModuleType:
    """A fresh double (empty records) of the ``onnxruntime-migraphx`` build of ONNX Runtime ``version``, whose
    provider takes the nodes of ``supported_ops`` (None: ``ORT_MIGRAPHX_DOUBLE_SUPPORTED_OPS``, else every op)."""
    supported = frozenset(supported_ops) if supported_ops is not None else supported_from_environment()
    since_1_23 = tuple(map(int, version.split(".")[:2])) >= (1, 23)
    module = ModuleType("onnxruntime", __doc__)
    runs: list[tuple[int, ...]] = []
    output_devices: list[tuple[str, int]] = []
    plugin_libraries: dict[str, str] = {}

    def missing_or_real(name: str) -> Any:
        if name in PLUGIN_API and not since_1_23:
            raise AttributeError(f"module 'onnxruntime' has no attribute {name!r}")
        return getattr(real, name)

    class IOBinding(real.IOBinding):
        def bind_cpu_input(self, name: str, arr_on_cpu: np.ndarray) -> None:
            runs.append(arr_on_cpu.shape)
            super().bind_cpu_input(name, arr_on_cpu)

        def bind_output(self, name: str, device_type: str = "cpu", device_id: int = 0, *args: Any) -> None:
            output_devices.append((device_type, device_id))
            super().bind_output(name)

    class InferenceSession(real.InferenceSession):
        def __init__(self, path_or_bytes: Any, sess_options: Any = None, providers: Any = None,
                     provider_options: Any = None, **kwargs: Any) -> None:
            if not since_1_23:
                kwargs.pop("enable_fallback", None)
            super().__init__(path_or_bytes, sess_options, providers, provider_options, **kwargs)

        def _create_inference_session(self, providers: Sequence[Any] | None, provider_options: Any,
                                      disabled_optimizers: Any = None) -> None:
            if MIGRAPHX not in [_name(p) for p in providers or []]:
                super()._create_inference_session(providers, provider_options, disabled_optimizers)
                return
            self._fallback_providers = [CPU]
            options = next((p[1] for p in providers if isinstance(p, tuple) and p[0] == MIGRAPHX), {})
            known = OPTIONS_SINCE_1_23 if since_1_23 else OPTIONS_BEFORE_1_23
            for option in options:
                if option not in known:
                    raise RuntimeError(f'Unknown provider option: "{option}".' if since_1_23
                                       else f"Invalid MIGraphX EP option: {option}")
            others = [p for p in providers if _name(p) != MIGRAPHX]
            super()._create_inference_session(others, None, disabled_optimizers)
            self._providers = [MIGRAPHX, *self._providers]

        def end_profiling(self) -> str:
            profile = super().end_profiling()
            if profile and MIGRAPHX in self._providers:
                claim_in_profile(profile, supported)
            return profile

        def run(self, output_names: Any, input_feed: dict[str, np.ndarray], run_options: Any = None) -> Any:
            runs.extend(np.shape(value) for value in input_feed.values())
            return super().run(output_names, input_feed, run_options)

        def io_binding(self) -> IOBinding:
            return IOBinding(self)

    def register_execution_provider_library(registration_name: str, path: str) -> None:
        plugin_libraries[registration_name] = path

    module.__dict__.update(
        __getattr__=missing_or_real, __version__=version, InferenceSession=InferenceSession, IOBinding=IOBinding,
        get_available_providers=lambda: [MIGRAPHX, *real.get_available_providers()],
        runs=runs, output_devices=output_devices, plugin_libraries=plugin_libraries,
    )
    if since_1_23:
        module.register_execution_provider_library = register_execution_provider_library
    return module

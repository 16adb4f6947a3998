"""Engine configuration: which engine runs the model, and each engine's options."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field

from pipelines.config_base import StrictModel
from pipelines.paths import ConfigPath

DEFAULT_CACHE_MAX_BYTES = 8 << 30  # a few fp16 and fp32 NFNets (an F3's fp32 program is about 1 GiB)


def default_cache_dir() -> Path:
    """systemd's ``CacheDirectory=`` (``$CACHE_DIRECTORY``), else the user's XDG cache."""
    if os.environ.get("CACHE_DIRECTORY"):
        return Path(os.environ["CACHE_DIRECTORY"].split(":")[0]) / "migraphx"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "nfnet-stream" / "migraphx"


class OnnxRuntimeOptions(StrictModel):
    providers: list[str] | None = Field(
        None, min_length=1,
        description="Execution providers in order of preference; default: the best available of "
                    "MIGraphX, CUDA, CPU. Start-up fails unless the first one is the one in use.",
    )
    provider_options: dict[str, dict[str, str]] = Field(
        default_factory=dict,
        description="Options per provider, by their current names, e.g. {MIGraphXExecutionProvider = "
                    "{migraphx_fp16_enable = 'True', migraphx_model_cache_dir = '/var/cache/ort-migraphx'}}; "
                    "renamed ones are translated for the installed ONNX Runtime where it can be done.",
    )
    plugin_libraries: dict[str, ConfigPath] = Field(
        default_factory=dict,
        description="Plugin execution provider libraries to register (ONNX Runtime >= 1.23), by the name of the "
                    "provider each offers, e.g. {OpenVINOExecutionProvider = '/path/to/"
                    "libonnxruntime_providers_openvino_plugin.so'}; name it first in providers.",
    )
    intra_op_threads: int = Field(0, ge=0, le=1024, description="Intra-op threads (0: ONNX Runtime's default).")
    io_binding: bool | None = Field(
        None, description="Bind inputs/outputs explicitly (default: when the first provider is a GPU's).")


class MigraphxOptions(StrictModel):
    target: Literal["gpu", "ref"] = Field("gpu", description="'ref' is MIGraphX's reference target, for debugging.")
    fp16: bool = Field(False, description="quantize_fp16 before compiling (inputs and outputs stay float32).")
    exhaustive_tune: bool = Field(False, description="Slower compile, possibly faster kernels.")
    cache_dir: ConfigPath = Field(
        default_factory=default_cache_dir,
        description="Compiled programs, keyed by the model's hash, batch, precision, target, the GPU (ISA with "
                    "features, compute units), the HIP runtime, the MIGraphX, MIOpen and rocBLAS library builds, and "
                    "the MIGRAPHX_* environment variables that change what is compiled.",
    )
    cache_max_bytes: int = Field(
        DEFAULT_CACHE_MAX_BYTES, ge=0, le=1 << 50,
        description="The most the compiled programs in cache_dir may take (each holds all the model's weights): "
                    "beyond it the least recently used are removed at start-up, never the one in use "
                    "(0 keeps only that one). Default 8 GiB.",
    )
    device: int = Field(0, ge=0, le=255, description="HIP device index.")
    allow_host_memory: bool = Field(
        False,
        description="Start even when the compiled program does not fit in the GPU's free memory. MIGraphX then "
                    "puts it in host memory without an error (hipMalloc fails, it takes hipHostMalloc) and every "
                    "inference runs many times slower; by default start-up fails (exit 3) saying how much it "
                    "needs and how much was free.",
    )
    hip_library: str = Field(
        "libamdhip64.so",
        description="The HIP runtime for ctypes. 'python:MODULE' loads a Python stand-in instead "
                    "(used by the test double in tests/doubles).",
    )


class EngineConfig(StrictModel):
    type: Literal["auto", "migraphx", "onnxruntime"] = Field(
        "auto",
        description="auto: MIGraphX when it imports and a GPU is visible, else ONNX Runtime with the best "
                    "available provider.",
    )
    batch_size: int | None = Field(
        None, ge=1, le=256,
        description="Frames per inference. Models exported with a static batch use theirs; "
                    "dynamic-batch models default to 4.",
    )
    warmup_runs: int = Field(
        2, ge=0, le=100,
        description="Batches of zeros run before the daemon is ready; the first also checks the output (one finite "
                    "score per label), so that a model that does not fit fails at start-up (0: neither).")
    onnxruntime: OnnxRuntimeOptions = OnnxRuntimeOptions()
    migraphx: MigraphxOptions = MigraphxOptions()

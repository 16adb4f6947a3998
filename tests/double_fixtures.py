"""Selecting the MIGraphX and HIP test doubles (tests/doubles) for an engine built in this process."""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from tests.doubles.device import DEVICE, SimulatedDevice

HIP_LIBRARY = "python:tests.doubles.hip_runtime"
# For the daemon as a subprocess: `import migraphx` and `import hip_runtime` find the doubles.
DOUBLES_ENV = {"PYTHONPATH": str(Path(__file__).resolve().parent / "doubles")}


@dataclass(frozen=True)
class Doubles:
    migraphx: ModuleType
    hip_library: str
    device: SimulatedDevice


def use_doubles(**device_settings: object) -> Doubles:
    """A freshly reset simulated device (``device_count``, ``device_memory_bytes``, ``op_delay_s``)."""
    DEVICE.reset(**device_settings)
    return Doubles(importlib.import_module("tests.doubles.migraphx"), HIP_LIBRARY, DEVICE)


def migraphx_double_engine(cache_dir: Path, engine_type: str = "migraphx") -> str:
    """[engine] lines for MIGraphX on the test doubles (the subprocess gets PYTHONPATH=tests/doubles)."""
    return f'''type = "{engine_type}"
[engine.migraphx]
hip_library = "python:hip_runtime"
cache_dir = "{cache_dir}"
'''


def daemon_on_onnxruntime_migraphx(version: str, *args: str) -> list[str]:
    """An ``nfnet-daemon`` command line (run from the repository root) whose ``onnxruntime`` is the
    onnxruntime-migraphx double of ONNX Runtime ``version`` (tests/doubles/onnxruntime_migraphx.py)."""
    program = ("import sys; from tests.doubles.onnxruntime_migraphx import onnxruntime_migraphx; "
               f"sys.modules['onnxruntime'] = onnxruntime_migraphx({version!r}); "
               "from daemon.cli import main; sys.exit(main(sys.argv[1:]))")
    return [sys.executable, "-c", program, *args]

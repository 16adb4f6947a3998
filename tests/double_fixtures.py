"""Selecting the MIGraphX and HIP test doubles (tests/doubles) for an engine built in this process."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

from tests.doubles.device import DEVICE, SimulatedDevice

HIP_LIBRARY = "python:tests.doubles.hip_runtime"


@dataclass(frozen=True)
class Doubles:
    migraphx: ModuleType
    hip_library: str
    device: SimulatedDevice


def use_doubles(**device_settings: object) -> Doubles:
    """A freshly reset simulated device (``device_count``, ``device_memory_bytes``, ``op_delay_s``)."""
    DEVICE.reset(**device_settings)
    return Doubles(importlib.import_module("tests.doubles.migraphx"), HIP_LIBRARY, DEVICE)

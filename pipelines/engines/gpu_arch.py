"""The GPU architecture name (``gfx90a``, ``gfx1100``, ...) from the kernel's KFD topology.

Part of the compiled-program cache key: a program compiled for one architecture does not run on another.
Read from sysfs rather than ``hipGetDeviceProperties``, whose struct layout changes between ROCm releases.
"""

from __future__ import annotations

from pathlib import Path

KFD_NODES = Path("/sys/class/kfd/kfd/topology/nodes")


def gfx_name(target_version: int) -> str:
    """``gfx_target_version`` (major*10000 + minor*100 + stepping) → ``gfx<major><minor:x><stepping:x>``."""
    major, rest = divmod(target_version, 10000)
    minor, stepping = divmod(rest, 100)
    return f"gfx{major}{minor:x}{stepping:x}"


def gpu_architectures(nodes_dir: Path = KFD_NODES) -> list[str]:
    """Architectures of the GPU nodes in KFD order (HIP's device order unless HIP_VISIBLE_DEVICES)."""
    found: list[tuple[int, str]] = []
    for node in nodes_dir.glob("*"):
        try:
            properties = (node / "properties").read_text().split("\n")
        except OSError:
            continue
        values = dict(line.split(maxsplit=1) for line in properties if len(line.split(maxsplit=1)) == 2)
        version = int(values.get("gfx_target_version", "0"))
        if version and node.name.isdigit():
            found.append((int(node.name), gfx_name(version)))
    return [name for _, name in sorted(found)]


def gpu_architecture(device: int, nodes_dir: Path = KFD_NODES) -> str:
    architectures = gpu_architectures(nodes_dir)
    return architectures[device] if device < len(architectures) else "unknown"

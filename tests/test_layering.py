"""The daemon's run-time path needs neither torch nor timm (they are for tools/ only)."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO

PROBE = """
import importlib, pkgutil, sys
import daemon, pipelines
for package in (daemon, pipelines):
    for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        if module.name != "daemon.__main__":
            importlib.import_module(module.name)
heavy = sorted(name for name in ("torch", "timm", "torchvision") if name in sys.modules)
print(",".join(heavy) or "none")
"""


def test_daemon_and_pipelines_import_no_torch_or_timm() -> None:
    result = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "none"

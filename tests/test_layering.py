"""The daemon's run-time path needs neither torch nor timm (they are for tools/ only), nor ONNX Runtime unless its
engine runs (it is an extra, in one flavour per environment)."""

from __future__ import annotations

import subprocess
import sys
import tomllib

from tests.conftest import REPO, SHAPES_MODEL

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


WITHOUT_ONNXRUNTIME = """
import importlib, importlib.abc, pkgutil, sys
from pathlib import Path

class NotInstalled(importlib.abc.MetaPathFinder):
    asked = []

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "onnxruntime":
            self.asked.append(name)
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NotInstalled())
import daemon, pipelines
for package in (daemon, pipelines):
    for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        if module.name != "daemon.__main__":
            importlib.import_module(module.name)
print("imports asked for:", NotInstalled.asked)
from pipelines.engines import EngineConfig, EngineError, choose_engine, create_engine
from pipelines.model_info import read_model_info
print("engine.type = migraphx chooses", choose_engine(EngineConfig(type="migraphx"))[0])
model = Path(sys.argv[1])
for kind in ("onnxruntime", "auto"):
    try:
        create_engine(EngineConfig(type=kind), model, read_model_info(model))
    except EngineError as exc:
        print(kind, "->", exc)
"""


def test_without_onnx_runtime_the_daemon_imports_and_its_engine_says_what_to_install() -> None:
    result = subprocess.run([sys.executable, "-c", WITHOUT_ONNXRUNTIME, str(SHAPES_MODEL)], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:2] == ["imports asked for: []", "engine.type = migraphx chooses migraphx"]
    hint = "install one ONNX Runtime flavour: pip install 'nfnet-stream[onnxruntime]' (CPU)"
    assert [line.split(" -> ")[0] for line in lines[2:]] == ["onnxruntime", "auto"]
    assert all("ONNX Runtime is not importable" in line and hint in line for line in lines[2:])


def test_onnx_runtime_is_an_extra_in_one_flavour_and_the_tests_get_the_cpu_one() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert not [dep for dep in project["dependencies"] if dep.startswith("onnxruntime")]
    extras = project["optional-dependencies"]
    assert extras["onnxruntime"] == ["onnxruntime>=1.18"] and extras["onnxruntime-gpu"] == ["onnxruntime-gpu>=1.18"]
    own = {extra for dep in extras["test"] if dep.startswith("nfnet-stream[")
           for extra in dep.removeprefix("nfnet-stream[").removesuffix("]").split(",")}
    assert "onnxruntime" in own and "onnxruntime-gpu" not in own, "the tests get the CPU flavour"
    readme = (REPO / "README.md").read_text()
    assert "pip install -e '.[onnxruntime]' && .venv/bin/nfnet-daemon --config configs/demo.toml" in readme

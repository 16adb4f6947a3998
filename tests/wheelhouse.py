"""A directory of wheels for an offline ``pip install .``, repacked from the distributions installed in this
environment: what a box without PyPI is given (``PIP_NO_INDEX=1 PIP_FIND_LINKS=DIR``), made without a network.

A wheel is a zip of the files a distribution installs into site-packages plus its ``.dist-info`` (whose
``WHEEL`` file keeps the original tags), so the installed files, listed in ``RECORD``, are packed again under a
fresh ``RECORD``. Scripts outside site-packages are left out: pip writes them again from ``entry_points.txt``.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import re
import tomllib
import zipfile
from collections.abc import Iterable
from pathlib import Path

from packaging.requirements import Requirement

# Installer bookkeeping in .dist-info, written again by whoever installs the wheel.
INSTALLER_FILES = {"RECORD", "INSTALLER", "REQUESTED", "direct_url.json"}


class WheelhouseError(Exception):
    """A requirement this environment cannot supply as a wheel."""


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def project_requirements(pyproject: Path, extras: Iterable[str]) -> list[Requirement]:
    """What ``pip install '.[extras]'`` of ``pyproject`` needs to build and to run, the project's references to
    its own extras expanded."""
    data = tomllib.loads(pyproject.read_text())
    project = data["project"]
    name = canonical(project["name"])
    optional = project.get("optional-dependencies", {})
    requirements = [Requirement(text) for text in data["build-system"]["requires"]]
    wanted, seen = list(extras), set()
    runtime = [Requirement(text) for text in project.get("dependencies", [])]
    while wanted:
        extra = wanted.pop()
        if extra in seen:
            continue
        seen.add(extra)
        if extra not in optional:
            raise WheelhouseError(f"{pyproject} has no extra {extra!r}")
        for text in optional[extra]:
            requirement = Requirement(text)
            if canonical(requirement.name) == name:
                wanted.extend(requirement.extras)
            else:
                runtime.append(requirement)
    return requirements + runtime


def closure(requirements: Iterable[Requirement]) -> list[importlib.metadata.Distribution]:
    """The installed distributions that satisfy ``requirements`` and everything they require in turn."""
    found: dict[str, importlib.metadata.Distribution] = {}
    todo = [(requirement, "") for requirement in requirements]
    while todo:
        requirement, extra = todo.pop()
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": extra}):
            continue
        key = canonical(requirement.name)
        try:
            dist = found.get(key) or importlib.metadata.distribution(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            raise WheelhouseError(f"{requirement} is not installed here") from None
        if not requirement.specifier.contains(dist.version, prereleases=True):
            raise WheelhouseError(f"{requirement} is needed, {dist.metadata['Name']} {dist.version} is installed")
        first = key not in found
        found[key] = dist
        for text in dist.requires or []:
            for wanted_extra in ([""] if first else []) + sorted(requirement.extras):
                todo.append((Requirement(text), wanted_extra))
    return list(found.values())


def wheel_name(dist: importlib.metadata.Distribution) -> str:
    """``numpy-2.4.6-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl``: the tags from its WHEEL file."""
    wheel = dist.read_text("WHEEL")
    if wheel is None:
        raise WheelhouseError(f"{dist.metadata['Name']} was not installed from a wheel (no WHEEL file)")
    tags = [line.split(":", 1)[1].strip().split("-") for line in wheel.splitlines() if line.startswith("Tag:")]
    if not tags:
        raise WheelhouseError(f"{dist.metadata['Name']}'s WHEEL file names no tag")
    compressed = "-".join(".".join(dict.fromkeys(tag[i] for tag in tags)) for i in range(3))
    name = re.sub(r"[-_.]+", "_", dist.metadata["Name"])
    return f"{name}-{dist.version}-{compressed}.whl"


def repack(dist: importlib.metadata.Distribution, out_dir: Path) -> Path:
    """One installed distribution as a wheel in ``out_dir``."""
    files = [path for path in dist.files or [] if path.parts[0] != ".." and "__pycache__" not in path.parts
             and not (path.parts[0].endswith(".dist-info") and path.name in INSTALLER_FILES)]
    info_dirs = {path.parts[0] for path in files if path.parts[0].endswith(".dist-info")}
    if len(info_dirs) != 1:
        raise WheelhouseError(f"{dist.metadata['Name']}: cannot tell its .dist-info among {sorted(info_dirs)}")
    wheel = out_dir / wheel_name(dist)
    record = []
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_STORED) as archive:
        for path in files:
            data = Path(dist.locate_file(path)).read_bytes()
            archive.writestr(path.as_posix(), data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{path.as_posix()},sha256={digest},{len(data)}")
        record_path = f"{info_dirs.pop()}/RECORD"
        archive.writestr(record_path, "\n".join([*record, f"{record_path},,"]) + "\n")
    return wheel


def build_wheelhouse(pyproject: Path, extras: Iterable[str], out_dir: Path) -> list[Path]:
    """Wheels for everything an offline ``pip install '.[extras]'`` of ``pyproject`` needs, in ``out_dir``."""
    own = canonical(tomllib.loads(pyproject.read_text())["project"]["name"])
    dists = closure(project_requirements(pyproject, extras))
    return [repack(dist, out_dir) for dist in dists if canonical(dist.metadata["Name"]) != own]

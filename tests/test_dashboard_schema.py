"""The Grafana dashboard type-checks against Grafana's own schema: the ``Dashboard`` type of the npm package
``@grafana/schema`` (the JSON model Grafana imports), checked by the TypeScript compiler, both pinned in
tests/npm/ and installed once with ``npm ci`` into the git-ignored .npm-tools/.

The dashboard's JSON is pasted into a .ts file as an object literal typed as a ``Dashboard``, so that tsc
reports what Grafana's schema would refuse: a missing required property (a variable's ``current`` without
``text`` and ``value``), a property the schema does not have, a value outside an enum. Importing the .json
(``resolveJsonModule``) would not do: tsc widens its strings to ``string``, which no enum or union of strings
accepts. Grafana's string enums are ``enum``s in TypeScript, which no plain string matches either, so the
dashboard is checked against ``Json<Dashboard>``: the same type with each string enum spelled as its strings,
as they are in JSON.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.prometheus_server import DASHBOARD

PINNED = REPO / "tests" / "npm"  # package.json and package-lock.json
TOOLS = REPO / ".npm-tools"  # git-ignored: node_modules, and the stamp of what was installed
STAMP = TOOLS / "installed-from.sha256"
HEADER = """\
import type { Dashboard } from '@grafana/schema';

/** A type as JSON spells it: each string enum as its strings (JSON has no enums), the rest as it is. */
type Json<T> = T extends string ? `${T}`
    : T extends readonly (infer E)[] ? Json<E>[]
    : T extends object ? { [K in keyof T]: Json<T[K]> }
    : T;

export const dashboard: Json<Dashboard> = """
TSC_ERROR = re.compile(r"^dashboard\.ts\((?P<line>\d+),\d+\): (?P<message>.*)$")


def pinned_digest() -> str:
    return hashlib.sha256(b"".join((PINNED / name).read_bytes()
                                   for name in ("package.json", "package-lock.json"))).hexdigest()


@pytest.fixture(scope="session")
def tsc() -> Path:
    """The pinned TypeScript compiler, with @grafana/schema beside it; installed when tests/npm/ changed.

    Fails (never skips) without node, npm or the registry: the check is part of the suite, and CI has all three.
    """
    missing = [tool for tool in ("node", "npm") if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"{' and '.join(missing)} not found: tests/install-system-deps.sh installs Debian's nodejs and npm")
    digest = pinned_digest()
    if not (STAMP.is_file() and STAMP.read_text() == digest):
        install(digest)
    return TOOLS / "node_modules" / ".bin" / "tsc"


def install(digest: str) -> None:
    """``npm ci`` of tests/npm/ in .npm-tools/, stamped only once it succeeded (an interrupted install is redone)."""
    TOOLS.mkdir(exist_ok=True)
    STAMP.unlink(missing_ok=True)
    for name in ("package.json", "package-lock.json"):
        shutil.copyfile(PINNED / name, TOOLS / name)
    result = subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--ignore-scripts", "--loglevel=error",
                             "--fetch-retries=1", "--fetch-timeout=60000"],
                            cwd=TOOLS, capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        pytest.fail(f"npm ci of tests/npm/ failed (is the npm registry reachable?):\n{result.stdout}{result.stderr}")
    STAMP.write_text(digest)


def type_errors(tsc: Path, dashboard_json: str) -> list[str]:
    """tsc's errors for the dashboard, each at its line in the dashboard's JSON."""
    source = TOOLS / "dashboard.ts"  # beside node_modules, where the import of @grafana/schema resolves
    source.write_text(HEADER + dashboard_json.rstrip() + ";\n")
    result = subprocess.run([str(tsc), "--noEmit", "--strict", "--skipLibCheck", "--target", "es2022",
                             "--module", "nodenext", source.name], cwd=TOOLS, capture_output=True, text=True,
                            timeout=120)
    first_line = HEADER.count("\n") + 1  # the line of the .ts on which the JSON starts
    errors = []
    for line in result.stdout.splitlines():
        match = TSC_ERROR.match(line)
        errors.append(f"{DASHBOARD.name}:{int(match['line']) - first_line + 1}: {match['message']}" if match
                      else line)
    assert result.returncode == 0 or errors, result.stderr
    return errors


def test_the_dashboard_is_a_grafana_dashboard(tsc: Path) -> None:
    assert type_errors(tsc, DASHBOARD.read_text()) == []


def test_the_check_finds_what_grafana_would_refuse(tsc: Path) -> None:
    """A variable's ``current`` as ``{}``, a property the schema lacks and a value outside an enum are each
    reported, at their line."""
    dashboard = json.loads(DASHBOARD.read_text())
    dashboard["templating"]["list"][0]["current"] = {}
    dashboard["panels"][0]["gridPos"]["depth"] = 1
    dashboard["graphTooltip"] = 7
    text = json.dumps(dashboard, indent=2)
    errors = type_errors(tsc, text)
    assert len(errors) == 3, errors
    assert any("missing the following properties" in error and "text, value" in error for error in errors)
    assert any("Type '7' is not assignable to type 'DashboardCursorSync" in error for error in errors)
    depth_line = next(n for n, line in enumerate(text.splitlines(), 1) if '"depth"' in line)
    assert any(error.startswith(f"{DASHBOARD.name}:{depth_line}: ") and "'\"depth\"' does not exist" in error
               for error in errors), errors

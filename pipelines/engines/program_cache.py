"""A directory of compiled programs, so a restart does not recompile (MIGraphX takes minutes on NFNets).

An entry is ``<digest>.mxr`` (the program) and ``<digest>.json`` (the key it was built for), where the
digest hashes the key. The program is compiled into a temporary file beside the entry and renamed into
place, then the key file is written the same way, so a crash never leaves an entry that looks complete.
An entry that fails to load, or whose recorded key differs, is logged, removed and rebuilt; an unwritable
directory means compiling into a temporary file every time, with a warning, never a crash.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Generic, Literal, TypeVar

log = logging.getLogger(__name__)

P = TypeVar("P")
Outcome = Literal["hit", "miss", "rebuilt", "uncached"]
# Bump when what an entry holds, or what the key means, changes: older entries then miss and are rebuilt.
CACHE_FORMAT_VERSION = 3


@dataclass(frozen=True)
class CacheKey:
    """Everything a compiled program depends on. A field missing here is a program loaded where it does
    not fit: at best it fails to load (then it is rebuilt, each time the setting flips back), at worst it
    runs with the wrong launch sizes or the wrong weights."""

    model_sha256: str  # the graph and its external weight files
    batch: int
    precision: str
    target: str
    migraphx_version: str
    device_arch: str  # gcnArchName with features (gfx90a:sramecc+:xnack-); "host" off the GPU
    compute_units: int  # baked into launch sizes; 0 off the GPU
    hip_runtime_version: int  # 0 off the GPU
    offload_copy: bool
    fast_math: bool
    exhaustive_tune: bool
    # MIGRAPHX_* variables set that change what is compiled: (name, value), sorted (migraphx_identity)
    environment: tuple[tuple[str, str], ...]
    # (name, build id or hash) of the MIGraphX module and libraries, MIOpen, rocBLAS, hipBLASLt ("absent")
    libraries: tuple[tuple[str, str], ...]
    format_version: int = CACHE_FORMAT_VERSION

    def record(self) -> dict[str, object]:
        """The key as its entry's key file holds it (JSON: tuples become lists)."""
        recorded: dict[str, object] = json.loads(json.dumps(asdict(self)))
        return recorded

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.record(), sort_keys=True).encode()).hexdigest()[:32]


@dataclass(frozen=True)
class CacheResult(Generic[P]):
    program: P
    outcome: Outcome
    compile_seconds: float  # 0 on a hit
    path: Path | None


class ProgramCache:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def paths(self, key: CacheKey) -> tuple[Path, Path]:
        digest = key.digest()
        return self.directory / f"{digest}.mxr", self.directory / f"{digest}.json"

    def load_or_build(self, key: CacheKey, load: Callable[[Path], P], compile_to: Callable[[Path], None]
                      ) -> CacheResult[P]:
        """The program for ``key``: loaded from its entry, or compiled (``compile_to`` writes a program file
        at the path it is given) and loaded from there. ``load`` raises for a program that does not fit
        (a stale entry, then rebuilt); a freshly compiled program that fails to load raises to the caller.
        """
        program_path, key_path = self.paths(key)
        outcome: Outcome = "miss"
        if key_path.exists() or program_path.exists():
            problem = self._check_entry(key, program_path, key_path)
            if problem is None:
                try:
                    program = load(program_path)
                    log.info("compiled program cache hit: %s", program_path)
                    return CacheResult(program, "hit", 0.0, program_path)
                except Exception as exc:  # a corrupt or stale file can fail inside the loader in many ways
                    problem = f"cannot be loaded ({type(exc).__name__}: {exc})"
            log.warning("compiled program cache entry %s %s; rebuilding it", program_path, problem)
            self._remove(program_path, key_path)
            outcome = "rebuilt"
        temporary = self._temporary_in(self.directory, program_path.name)
        if temporary is None:
            return self._build_uncached(load, compile_to)
        started = time.perf_counter()
        try:
            compile_to(temporary)
            os.replace(temporary, program_path)
        finally:
            temporary.unlink(missing_ok=True)
        seconds = time.perf_counter() - started
        log.info("compiled in %.1fs", seconds)
        try:
            program = load(program_path)
        except BaseException:
            self._remove(program_path)  # never keep an entry that does not load
            raise
        try:
            self._write_key(key, key_path)
        except OSError as exc:
            log.warning("cannot write %s (%s); the next start compiles again", key_path, exc)
            self._remove(program_path)
            return CacheResult(program, "uncached", seconds, None)
        return CacheResult(program, outcome, seconds, program_path)

    def _build_uncached(self, load: Callable[[Path], P], compile_to: Callable[[Path], None]) -> CacheResult[P]:
        log.warning("cannot write the compiled program cache in %s; compiling into a temporary file (the next "
                    "start compiles again)", self.directory)
        temporary = self._temporary_in(Path(tempfile.gettempdir()), "program.mxr")
        if temporary is None:
            raise OSError(f"cannot create a temporary file in {tempfile.gettempdir()} for the compiled program")
        started = time.perf_counter()
        try:
            compile_to(temporary)
            seconds = time.perf_counter() - started
            log.info("compiled in %.1fs", seconds)
            return CacheResult(load(temporary), "uncached", seconds, None)
        finally:
            temporary.unlink(missing_ok=True)

    @staticmethod
    def _temporary_in(directory: Path, name: str) -> Path | None:
        """A new empty file in ``directory`` (created if need be), or None if that cannot be written."""
        try:
            directory.mkdir(parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
        except OSError:
            return None
        os.close(handle)
        return Path(temporary)

    @staticmethod
    def _check_entry(key: CacheKey, program_path: Path, key_path: Path) -> str | None:
        if not program_path.exists() or not key_path.exists():
            return "is incomplete"
        try:
            recorded = json.loads(key_path.read_text())
        except (OSError, ValueError) as exc:
            return f"has an unreadable key file ({exc})"
        if recorded != key.record():
            return "was built for another key (stale)"
        return None

    @staticmethod
    def _write_key(key: CacheKey, path: Path) -> None:
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(handle, "w") as file:
                file.write(json.dumps(key.record(), indent=1))
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    @staticmethod
    def _remove(*paths: Path) -> None:
        for path in paths:
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:
                log.warning("cannot remove %s: %s", path, exc)

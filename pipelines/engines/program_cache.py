"""A directory of compiled programs, so a restart does not recompile (MIGraphX takes minutes on NFNets).

An entry is ``<digest>.mxr`` (the program) and ``<digest>.json`` (the key it was built for), where the
digest hashes the key. Both are written to a temporary file and renamed into place, program first, so
a crash never leaves an entry that looks complete. An entry that fails to load, or whose recorded key
differs, is logged, removed and rebuilt; an unwritable directory means compiling every time, with a
warning, never a crash.
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


@dataclass(frozen=True)
class CacheKey:
    model_sha256: str
    batch: int
    precision: str
    target: str
    compiler_version: str
    gpu_arch: str
    exhaustive_tune: bool

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:32]


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

    def load_or_build(self, key: CacheKey, load: Callable[[Path], P], save: Callable[[P, Path], None],
                      build: Callable[[], P]) -> CacheResult[P]:
        program_path, key_path = self.paths(key)
        outcome: Outcome = "miss"
        if key_path.exists() or program_path.exists():
            problem = self._check_entry(key, program_path, key_path)
            if problem is None:
                try:
                    program = load(program_path)
                    log.info("compiled program cache hit: %s", program_path)
                    return CacheResult(program, "hit", 0.0, program_path)
                except Exception as exc:  # a corrupt file can fail inside the loader in many ways
                    problem = f"cannot be loaded ({type(exc).__name__}: {exc})"
            log.warning("compiled program cache entry %s %s; rebuilding it", program_path, problem)
            self._remove(program_path, key_path)
            outcome = "rebuilt"
        started = time.perf_counter()
        program = build()
        seconds = time.perf_counter() - started
        log.info("compiled in %.1fs", seconds)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._write_atomically(program_path, lambda tmp: save(program, tmp))
            self._write_atomically(key_path, lambda tmp: tmp.write_text(json.dumps(asdict(key), indent=1)))
        except OSError as exc:
            log.warning("cannot write the compiled program cache in %s (%s); the next start compiles again",
                        self.directory, exc)
            return CacheResult(program, "uncached", seconds, None)
        return CacheResult(program, outcome, seconds, program_path)

    @staticmethod
    def _check_entry(key: CacheKey, program_path: Path, key_path: Path) -> str | None:
        if not program_path.exists() or not key_path.exists():
            return "is incomplete"
        try:
            recorded = json.loads(key_path.read_text())
        except (OSError, ValueError) as exc:
            return f"has an unreadable key file ({exc})"
        if recorded != asdict(key):
            return "was built for another key (stale)"
        return None

    @staticmethod
    def _write_atomically(path: Path, write: Callable[[Path], object]) -> None:
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(handle)
        try:
            write(Path(temporary))
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

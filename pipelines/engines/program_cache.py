"""A directory of compiled programs, so a restart does not recompile (MIGraphX takes minutes on NFNets).

An entry is ``<digest>.mxr`` (the program) and ``<digest>.json`` (the key it was built for), where the
digest hashes the key. The program is compiled into a temporary file beside the entry and renamed into
place, then the key file is written the same way, so a crash never leaves an entry that looks complete.
An entry that fails to load, or whose recorded key differs, is logged, removed and rebuilt; an unwritable
directory means compiling into a temporary file every time, with a warning, never a crash.

Each entry holds all the model's weights (hundreds of MB for an NFNet), and every new model, batch, precision,
driver or MIGraphX update adds one: the cache is bounded (``max_bytes``). After each lookup the least recently
used entries (by the program file's modification time, set to now on each hit) are removed until the entries
fit, never the one just used; each removal is logged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Generic, Literal, TypeVar

log = logging.getLogger(__name__)

P = TypeVar("P")
Outcome = Literal["hit", "miss", "rebuilt", "uncached"]
# Bump when what an entry holds, or what the key means, changes: older entries then miss and are rebuilt.
CACHE_FORMAT_VERSION = 3
_DIGEST_LENGTH = 32
_DIGEST = re.compile(f"[0-9a-f]{{{_DIGEST_LENGTH}}}")  # an entry's file name, less .mxr or .json


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
        return hashlib.sha256(json.dumps(self.record(), sort_keys=True).encode()).hexdigest()[:_DIGEST_LENGTH]


@dataclass(frozen=True)
class CacheResult(Generic[P]):
    program: P
    outcome: Outcome
    compile_seconds: float  # 0 on a hit
    path: Path | None
    cache_bytes: int  # what the cache's entries take after the lookup (and any eviction)


@dataclass(frozen=True)
class _Entry:
    digest: str
    files: tuple[Path, ...]
    size: int
    last_used: float  # the latest modification time of its files (a hit sets the program file's)


class ProgramCache:
    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes

    def paths(self, key: CacheKey) -> tuple[Path, Path]:
        digest = key.digest()
        return self.directory / f"{digest}.mxr", self.directory / f"{digest}.json"

    def load_or_build(self, key: CacheKey, load: Callable[[Path], P], compile_to: Callable[[Path], None]
                      ) -> CacheResult[P]:
        """The program for ``key``: loaded from its entry, or compiled (``compile_to`` writes a program file
        at the path it is given) and loaded from there. ``load`` raises for a program that does not fit
        (a stale entry, then rebuilt); a freshly compiled program that fails to load raises to the caller.
        The cache is then brought under its bound (:meth:`evict`), keeping the entry just used.
        """
        result = self._load_or_build(key, load, compile_to)
        return replace(result, cache_bytes=self.evict(keep=key.digest()))

    def _load_or_build(self, key: CacheKey, load: Callable[[Path], P], compile_to: Callable[[Path], None]
                       ) -> CacheResult[P]:
        program_path, key_path = self.paths(key)
        outcome: Outcome = "miss"
        if key_path.exists() or program_path.exists():
            problem = self._check_entry(key, program_path, key_path)
            if problem is None:
                try:
                    program = load(program_path)
                    log.info("compiled program cache hit: %s", program_path)
                    self._mark_used(program_path)
                    return CacheResult(program, "hit", 0.0, program_path, 0)
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
            return CacheResult(program, "uncached", seconds, None, 0)
        return CacheResult(program, outcome, seconds, program_path, 0)

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
            return CacheResult(load(temporary), "uncached", seconds, None, 0)
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

    def evict(self, keep: str) -> int:
        """Remove the least recently used entries until the entries take at most ``max_bytes``, never the
        entry whose digest is ``keep`` (the one in use, which alone may exceed the bound); the bytes left."""
        entries = sorted(self._entries(), key=lambda entry: entry.last_used)
        total = sum(entry.size for entry in entries)
        for entry in entries:
            if total <= self.max_bytes:
                break
            if entry.digest == keep:
                continue
            log.info("evicted compiled program %s (%d bytes, last used %s): the cache held %d bytes, over its "
                     "bound of %d (engine.migraphx.cache_max_bytes)", entry.files[0], entry.size,
                     time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(entry.last_used)), total, self.max_bytes)
            self._remove(*entry.files)
            total -= entry.size
        if total > self.max_bytes:
            log.warning("the compiled program in use alone takes %d bytes, more than the cache's bound of %d "
                        "(engine.migraphx.cache_max_bytes); it is kept", total, self.max_bytes)
        return total

    def _entries(self) -> list[_Entry]:
        """The entries in the directory, complete or not: files named as this cache names them (a digest and
        .mxr or .json), so that nothing else kept there is ever removed; temporaries of compiles aside."""
        files: dict[str, list[Path]] = {}
        try:
            for path in self.directory.iterdir():
                if path.suffix in (".mxr", ".json") and _DIGEST.fullmatch(path.stem):
                    files.setdefault(path.stem, []).append(path)
        except OSError:  # no directory, or an unreadable one: nothing to count or evict
            return []
        return [entry for digest, paths in files.items() if (entry := self._entry(digest, paths)) is not None]

    @staticmethod
    def _entry(digest: str, paths: list[Path]) -> _Entry | None:
        try:
            stats = [path.stat() for path in paths]
        except OSError:  # removed meanwhile (another daemon evicting)
            return None
        return _Entry(digest, tuple(sorted(paths, key=lambda path: path.suffix != ".mxr")),  # the program first
                      sum(stat.st_size for stat in stats), max(stat.st_mtime for stat in stats))

    @staticmethod
    def _mark_used(path: Path) -> None:
        """Eviction removes the least recently used entries first: a hit makes its entry the most recent."""
        try:
            os.utime(path)
        except OSError as exc:
            log.warning("cannot mark %s as used (%s); it may be evicted before older entries", path, exc)

    @staticmethod
    def _remove(*paths: Path) -> None:
        for path in paths:
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:
                log.warning("cannot remove %s: %s", path, exc)

"""The compiled-program cache: hits, misses, corrupt and stale entries, atomic writes, unwritable dirs.

Programs here are plain strings in text files: the cache is generic and only sees load/compile_to.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
from pathlib import Path

import pytest

from pipelines.engines.program_cache import CacheKey, ProgramCache

KEY = CacheKey(model_sha256="ab" * 32, batch=4, precision="fp32", target="gpu", migraphx_version="2.15.0",
               device_arch="gfx90a:sramecc+:xnack-", compute_units=104, hip_runtime_version=70226015,
               offload_copy=False, fast_math=True, exhaustive_tune=False,
               environment=(("MIGRAPHX_DISABLE_MLIR", "1"),),
               libraries=(("migraphx", "build-id:0123"), ("libMIOpen.so.1.0", "build-id:4567"),
                          ("librocblas.so", "absent")))
UNBOUNDED = 1 << 50


class Compiler:
    """Counts compiles of text 'programs'."""

    def __init__(self, size: int = 0) -> None:
        self.builds = 0
        self.size = size  # of each program file, padded

    def compile_to(self, path: Path) -> None:
        self.builds += 1
        path.write_text(f"program #{self.builds}".ljust(self.size))

    @staticmethod
    def load(path: Path) -> str:
        text = path.read_text()
        if not text.startswith("program"):
            raise RuntimeError("corrupt program file")
        return text.rstrip()

    def get(self, cache: ProgramCache, key: CacheKey = KEY):
        return cache.load_or_build(key, self.load, self.compile_to)


def test_miss_then_hit(tmp_path: Path) -> None:
    compiler, cache = Compiler(), ProgramCache(tmp_path / "cache", UNBOUNDED)
    first = compiler.get(cache)
    assert (first.outcome, first.program, compiler.builds) == ("miss", "program #1", 1)
    second = compiler.get(cache)
    assert (second.outcome, second.program, second.compile_seconds, compiler.builds) == ("hit", "program #1", 0.0, 1)


def changed(value: object) -> object:
    if isinstance(value, tuple):
        return (*value[:-1], (value[-1][0], f"{value[-1][1]}-other"))
    return not value if isinstance(value, bool) else value + 1 if isinstance(value, int) else f"{value}-other"


@pytest.mark.parametrize("field", [field.name for field in dataclasses.fields(CacheKey)])
def test_every_key_field_separates_entries(tmp_path: Path, field: str) -> None:
    compiler, cache = Compiler(), ProgramCache(tmp_path, UNBOUNDED)
    compiler.get(cache)
    other = dataclasses.replace(KEY, **{field: changed(getattr(KEY, field))})
    assert compiler.get(cache, other).outcome == "miss"
    assert compiler.builds == 2
    assert compiler.get(cache).outcome == compiler.get(cache, other).outcome == "hit"


def test_corrupt_entry_is_rebuilt(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    compiler, cache = Compiler(), ProgramCache(tmp_path, UNBOUNDED)
    compiler.get(cache)
    program_path, _ = cache.paths(KEY)
    program_path.write_bytes(b"\x00garbage")
    result = compiler.get(cache)
    assert (result.outcome, result.program) == ("rebuilt", "program #2")
    assert "cannot be loaded" in caplog.text
    assert compiler.get(cache).outcome == "hit"


def test_stale_key_file_is_rebuilt(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    compiler, cache = Compiler(), ProgramCache(tmp_path, UNBOUNDED)
    compiler.get(cache)
    _, key_path = cache.paths(KEY)
    key_path.write_text(json.dumps({**KEY.record(), "migraphx_version": "2.14.0"}))
    assert compiler.get(cache).outcome == "rebuilt"
    assert "stale" in caplog.text


def test_half_written_entry_is_rebuilt(tmp_path: Path) -> None:
    compiler, cache = Compiler(), ProgramCache(tmp_path, UNBOUNDED)
    compiler.get(cache)
    cache.paths(KEY)[1].unlink()  # as if the process died between the two renames
    assert compiler.get(cache).outcome == "rebuilt"


def test_a_failed_compile_leaves_no_entry_and_no_temporary(tmp_path: Path) -> None:
    cache = ProgramCache(tmp_path, UNBOUNDED)

    def failing_compile(path: Path) -> None:
        path.write_text("prog")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        cache.load_or_build(KEY, Compiler.load, failing_compile)
    assert list(tmp_path.iterdir()) == []


def test_a_fresh_program_that_does_not_load_is_not_kept(tmp_path: Path) -> None:
    cache = ProgramCache(tmp_path, UNBOUNDED)
    with pytest.raises(RuntimeError, match="corrupt program file"):
        cache.load_or_build(KEY, Compiler.load, lambda path: path.write_text("garbage"))
    assert list(tmp_path.iterdir()) == []


def test_an_entry_the_loader_finds_stale_is_rebuilt(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    compiler, cache = Compiler(), ProgramCache(tmp_path, UNBOUNDED)
    compiler.get(cache)

    def picky_load(path: Path) -> str:
        if path.read_text() == "program #1":
            raise ValueError("its parameters are not what the engine feeds")
        return path.read_text()

    result = cache.load_or_build(KEY, picky_load, compiler.compile_to)
    assert (result.outcome, result.program) == ("rebuilt", "program #2")
    assert "not what the engine feeds" in caplog.text


def test_directory_that_is_a_file_compiles_without_caching(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    blocker = tmp_path / "cache"
    blocker.write_text("not a directory")
    result = Compiler().get(ProgramCache(blocker, UNBOUNDED))
    assert (result.outcome, result.program, result.path) == ("uncached", "program #1", None)
    assert list((tmp_path / "tmp").iterdir()) == [], "the temporary program file is removed after loading"


def keys(count: int) -> list[CacheKey]:
    return [dataclasses.replace(KEY, batch=batch) for batch in range(1, count + 1)]


def entry_bytes(cache: ProgramCache, key: CacheKey) -> int:
    return sum(path.stat().st_size for path in cache.paths(key))


def entries(cache: ProgramCache) -> set[str]:
    return {path.stem for path in cache.directory.glob("*.mxr")}


def test_the_least_recently_used_entries_are_evicted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Three entries fit, a fourth does not: the one least recently used goes (a hit counts as a use), the
    eviction is logged with what, how big and why, and the size reported is what is left."""
    caplog.set_level(logging.INFO)
    compiler, (first, second, third, fourth) = Compiler(size=1000), keys(4)
    unbounded = ProgramCache(tmp_path, UNBOUNDED)
    for at, key in enumerate((first, second, third)):
        compiler.get(unbounded, key)
        os.utime(unbounded.paths(key)[0], (1_000_000 + at, 1_000_000 + at))  # used in this order, long ago
    size = entry_bytes(unbounded, first)
    cache = ProgramCache(tmp_path, 3 * size + size // 2)
    assert compiler.get(cache, first).outcome == "hit"  # now the most recent: the second is the oldest
    result = compiler.get(cache, fourth)
    assert result.outcome == "miss"
    assert entries(cache) == {first.digest(), third.digest(), fourth.digest()}
    assert result.cache_bytes == 3 * size == sum(entry_bytes(cache, key) for key in (first, third, fourth))
    evictions = [record.getMessage() for record in caplog.records if "evicted" in record.getMessage()]
    assert len(evictions) == 1
    assert f"{second.digest()}.mxr ({size} bytes" in evictions[0]
    assert f"held {4 * size} bytes, over its bound of {3 * size + size // 2}" in evictions[0]
    assert "engine.migraphx.cache_max_bytes" in evictions[0]


def test_the_entry_in_use_is_kept_even_alone_over_the_bound(tmp_path: Path, caplog: pytest.LogCaptureFixture
                                                            ) -> None:
    caplog.set_level(logging.INFO)
    compiler, (old, new) = Compiler(size=1000), keys(2)
    compiler.get(ProgramCache(tmp_path, UNBOUNDED), old)
    cache = ProgramCache(tmp_path, 0)
    result = compiler.get(cache, new)
    assert (result.outcome, entries(cache)) == ("miss", {new.digest()})
    assert result.cache_bytes == entry_bytes(cache, new)
    assert sum("evicted" in record.getMessage() for record in caplog.records) == 1
    assert "the compiled program in use alone takes" in caplog.text
    hit = compiler.get(cache, new)
    assert (hit.outcome, hit.cache_bytes, entries(cache)) == ("hit", result.cache_bytes, {new.digest()})


def test_a_half_written_entry_counts_and_can_be_evicted(tmp_path: Path) -> None:
    """What a crash left (a program without its key file) takes room too."""
    compiler, (old, new) = Compiler(size=1000), keys(2)
    compiler.get(ProgramCache(tmp_path, UNBOUNDED), old)
    ProgramCache(tmp_path, UNBOUNDED).paths(old)[1].unlink()
    compiler.get(ProgramCache(tmp_path, 0), new)
    assert {path.name for path in tmp_path.iterdir()} == {f"{new.digest()}.mxr", f"{new.digest()}.json"}


def test_files_the_cache_did_not_name_are_never_evicted(tmp_path: Path) -> None:
    """A cache_dir shared with something else: only entries count and go."""
    (tmp_path / "notes.json").write_text("{}" * 1000)
    (tmp_path / "model.mxr").write_text("x" * 1000)
    result = Compiler(size=1000).get(ProgramCache(tmp_path, 0))
    assert {path.name for path in tmp_path.iterdir()} >= {"notes.json", "model.mxr"}
    assert result.cache_bytes == entry_bytes(ProgramCache(tmp_path, 0), KEY)

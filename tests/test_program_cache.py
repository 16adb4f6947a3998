"""The compiled-program cache: hits, misses, corrupt and stale entries, atomic writes, unwritable dirs.

Programs here are plain strings in text files: the cache is generic and only sees load/compile_to.
"""

from __future__ import annotations

import dataclasses
import json
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


class Compiler:
    """Counts compiles of text 'programs'."""

    def __init__(self) -> None:
        self.builds = 0

    def compile_to(self, path: Path) -> None:
        self.builds += 1
        path.write_text(f"program #{self.builds}")

    @staticmethod
    def load(path: Path) -> str:
        text = path.read_text()
        if not text.startswith("program"):
            raise RuntimeError("corrupt program file")
        return text

    def get(self, cache: ProgramCache, key: CacheKey = KEY):
        return cache.load_or_build(key, self.load, self.compile_to)


def test_miss_then_hit(tmp_path: Path) -> None:
    compiler, cache = Compiler(), ProgramCache(tmp_path / "cache")
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
    compiler, cache = Compiler(), ProgramCache(tmp_path)
    compiler.get(cache)
    other = dataclasses.replace(KEY, **{field: changed(getattr(KEY, field))})
    assert compiler.get(cache, other).outcome == "miss"
    assert compiler.builds == 2
    assert compiler.get(cache).outcome == compiler.get(cache, other).outcome == "hit"


def test_corrupt_entry_is_rebuilt(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    compiler, cache = Compiler(), ProgramCache(tmp_path)
    compiler.get(cache)
    program_path, _ = cache.paths(KEY)
    program_path.write_bytes(b"\x00garbage")
    result = compiler.get(cache)
    assert (result.outcome, result.program) == ("rebuilt", "program #2")
    assert "cannot be loaded" in caplog.text
    assert compiler.get(cache).outcome == "hit"


def test_stale_key_file_is_rebuilt(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    compiler, cache = Compiler(), ProgramCache(tmp_path)
    compiler.get(cache)
    _, key_path = cache.paths(KEY)
    key_path.write_text(json.dumps({**KEY.record(), "migraphx_version": "2.14.0"}))
    assert compiler.get(cache).outcome == "rebuilt"
    assert "stale" in caplog.text


def test_half_written_entry_is_rebuilt(tmp_path: Path) -> None:
    compiler, cache = Compiler(), ProgramCache(tmp_path)
    compiler.get(cache)
    cache.paths(KEY)[1].unlink()  # as if the process died between the two renames
    assert compiler.get(cache).outcome == "rebuilt"


def test_a_failed_compile_leaves_no_entry_and_no_temporary(tmp_path: Path) -> None:
    cache = ProgramCache(tmp_path)

    def failing_compile(path: Path) -> None:
        path.write_text("prog")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        cache.load_or_build(KEY, Compiler.load, failing_compile)
    assert list(tmp_path.iterdir()) == []


def test_a_fresh_program_that_does_not_load_is_not_kept(tmp_path: Path) -> None:
    cache = ProgramCache(tmp_path)
    with pytest.raises(RuntimeError, match="corrupt program file"):
        cache.load_or_build(KEY, Compiler.load, lambda path: path.write_text("garbage"))
    assert list(tmp_path.iterdir()) == []


def test_an_entry_the_loader_finds_stale_is_rebuilt(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    compiler, cache = Compiler(), ProgramCache(tmp_path)
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
    result = Compiler().get(ProgramCache(blocker))
    assert (result.outcome, result.program, result.path) == ("uncached", "program #1", None)
    assert list((tmp_path / "tmp").iterdir()) == [], "the temporary program file is removed after loading"


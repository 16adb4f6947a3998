"""The compiled-program cache: hits, misses, corrupt and stale entries, atomic writes, unwritable dirs.

Programs here are plain strings saved as text: the cache is generic and only sees load/save/build.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.engines.gpu_arch import gfx_name, gpu_architecture
from pipelines.engines.program_cache import CacheKey, ProgramCache

KEY = CacheKey("ab" * 32, 4, "fp32", "gpu", "2.15.0", "gfx90a", False)


class Compiler:
    """Counts builds, loads and saves of text 'programs'."""

    def __init__(self) -> None:
        self.builds = 0

    def build(self) -> str:
        self.builds += 1
        return f"program #{self.builds}"

    @staticmethod
    def load(path: Path) -> str:
        text = path.read_text()
        if not text.startswith("program"):
            raise RuntimeError("corrupt program file")
        return text

    @staticmethod
    def save(program: str, path: Path) -> None:
        path.write_text(program)

    def get(self, cache: ProgramCache, key: CacheKey = KEY):
        return cache.load_or_build(key, self.load, self.save, self.build)


def test_miss_then_hit(tmp_path: Path) -> None:
    compiler, cache = Compiler(), ProgramCache(tmp_path / "cache")
    first = compiler.get(cache)
    assert (first.outcome, first.program, compiler.builds) == ("miss", "program #1", 1)
    second = compiler.get(cache)
    assert (second.outcome, second.program, second.compile_seconds, compiler.builds) == ("hit", "program #1", 0.0, 1)


@pytest.mark.parametrize("field", ["batch", "precision", "target", "compiler_version", "gpu_arch", "model_sha256",
                                   "exhaustive_tune"])
def test_every_key_field_separates_entries(tmp_path: Path, field: str) -> None:
    compiler, cache = Compiler(), ProgramCache(tmp_path)
    compiler.get(cache)
    changed = {**KEY.__dict__, field: (not KEY.exhaustive_tune) if field == "exhaustive_tune" else
               (8 if field == "batch" else "other")}
    assert compiler.get(cache, CacheKey(**changed)).outcome == "miss"
    assert compiler.builds == 2


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
    key_path.write_text(json.dumps({**KEY.__dict__, "compiler_version": "2.14.0"}))
    assert compiler.get(cache).outcome == "rebuilt"
    assert "stale" in caplog.text


def test_half_written_entry_is_rebuilt(tmp_path: Path) -> None:
    compiler, cache = Compiler(), ProgramCache(tmp_path)
    compiler.get(cache)
    cache.paths(KEY)[1].unlink()  # as if the process died between the two renames
    assert compiler.get(cache).outcome == "rebuilt"


def test_failed_save_leaves_no_entry_and_no_temporary(tmp_path: Path) -> None:
    cache = ProgramCache(tmp_path)

    def failing_save(program: str, path: Path) -> None:
        path.write_text("prog")
        raise OSError(28, "No space left on device")

    result = cache.load_or_build(KEY, Compiler.load, failing_save, lambda: "program x")
    assert result.outcome == "uncached" and result.program == "program x"
    assert list(tmp_path.iterdir()) == []


def test_directory_that_is_a_file_compiles_without_caching(tmp_path: Path) -> None:
    blocker = tmp_path / "cache"
    blocker.write_text("not a directory")
    result = Compiler().get(ProgramCache(blocker))
    assert result.outcome == "uncached"


def test_gfx_names() -> None:
    assert gfx_name(90010) == "gfx90a"
    assert gfx_name(90402) == "gfx942"
    assert gfx_name(110000) == "gfx1100"
    assert gfx_name(100300) == "gfx1030"


def test_gpu_architecture_from_kfd_topology(tmp_path: Path) -> None:
    for node, version in (("0", 0), ("1", 90010), ("2", 110000)):  # node 0 is the CPU
        (tmp_path / node).mkdir()
        (tmp_path / node / "properties").write_text(f"cpu_cores_count 8\ngfx_target_version {version}\n")
    assert gpu_architecture(0, tmp_path) == "gfx90a"
    assert gpu_architecture(1, tmp_path) == "gfx1100"
    assert gpu_architecture(2, tmp_path) == "unknown"

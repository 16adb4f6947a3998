"""What, besides the model and the device, decides the code MIGraphX compiles: for the program cache's key.

Two things the version string does not say:

- *Environment variables read while compiling.* MIGraphX reads dozens of ``MIGRAPHX_*`` variables
  (``MIGRAPHX_DECLARE_ENV_VAR`` in AMDMIGraphX ``src/``, rocm-7.2.4 and develop); most pick passes,
  fusions, kernel providers or compiler flags, and a saved program carries their effect. Every one that
  is set is part of the key, except those upstream reads only to trace, dump, time or log, to verify,
  or to say how many threads compile (:data:`OBSERVING_VARIABLES`). A variable not in that list (one a
  later release adds, say) is in the key: at worst a needless compile, never a wrong program.
- *The libraries' builds.* ``migraphx.__version__`` is 2.15.0 for five releases (rocm-7.2.0 to 7.2.4), and
  a saved program embeds MIOpen solutions and rocBLAS/hipBLASLt solution indices, which belong to those
  libraries' builds. A library is identified by its GNU build id (the ELF note the linker writes), or by the
  SHA-256 of the file where it has none; they are found among the files this process has mapped
  (``/proc/self/maps``: a GPU build's Python module links ``libmigraphx_gpu``, which links MIOpen and
  rocBLAS, so importing it maps them all), else next to the MIGraphX module. One that is nowhere is
  recorded as ``absent``.
"""

from __future__ import annotations

import hashlib
import re
import struct
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import ModuleType
from typing import BinaryIO

# Read by MIGraphX without changing what it compiles (rocm-7.2.4 and develop, May 2026). Where each is read:
OBSERVING_VARIABLES = frozenset({
    "MIGRAPHX_8BITS_QUANTIZATION_PARAMS",  # quantization.cpp: prints the int8 scales
    "MIGRAPHX_DEBUG_MEMORY_COLORING",  # memory_coloring.cpp: prints the conflict table
    "MIGRAPHX_DEBUG_SAVE_TEMP_DIR",  # tmp_dir.cpp: keeps the compiler's temporary files
    "MIGRAPHX_GPU_COMPILE_PARALLEL",  # compile_ops.cpp: how many threads compile
    "MIGRAPHX_GPU_DUMP_ASM", "MIGRAPHX_GPU_DUMP_SRC", "MIGRAPHX_GPU_DUMP_BENCHMARK_MXR",  # compile_hip/_ops.cpp
    "MIGRAPHX_LOG_CK_GEMM", "MIGRAPHX_LOG_LEVEL",
    "MIGRAPHX_MLIR_DUMP", "MIGRAPHX_MLIR_DUMP_TO_MXR",  # jit/mlir.cpp
    "MIGRAPHX_TIME_MATCHERS", "MIGRAPHX_TIME_PASSES",
    "MIGRAPHX_TRACE_BENCHMARKING", "MIGRAPHX_TRACE_CMD_EXECUTE", "MIGRAPHX_TRACE_COMPILE",
    "MIGRAPHX_TRACE_ELIMINATE_CONTIGUOUS", "MIGRAPHX_TRACE_EVAL", "MIGRAPHX_TRACE_FINALIZE",
    "MIGRAPHX_TRACE_HIPRTC", "MIGRAPHX_TRACE_MATCHES", "MIGRAPHX_TRACE_MATCHES_FOR", "MIGRAPHX_TRACE_MLIR",
    "MIGRAPHX_TRACE_NARY", "MIGRAPHX_TRACE_ONNX_PARSER", "MIGRAPHX_TRACE_PASSES",
    "MIGRAPHX_TRACE_PROPAGATE_CONSTANT", "MIGRAPHX_TRACE_QUANTIZATION", "MIGRAPHX_TRACE_SCHEDULE",
    "MIGRAPHX_VALIDATE_MATCHES",  # matcher.hpp: checks the module after each match
    "MIGRAPHX_VERIFY_DUMP_DIFF", "MIGRAPHX_VERIFY_ENABLE_ALLCLOSE",  # the verify tool
    # problem_cache.cpp: a file of earlier tuning results, reused instead of benchmarking again: it picks
    # among the same correct solutions, as a new benchmark would (the compile child is given one)
    "MIGRAPHX_PROBLEM_CACHE",
})

# The libraries whose builds a saved program depends on, by the start of their file names.
MIGRAPHX_LIBRARY = re.compile(r"^libmigraphx\w*\.so")
OPTIONAL_LIBRARIES = {"libMIOpen.so": re.compile(r"^libMIOpen\.so"),
                      "librocblas.so": re.compile(r"^librocblas\.so"),
                      "libhipblaslt.so": re.compile(r"^libhipblaslt\.so")}
PROC_MAPS = Path("/proc/self/maps")

_NT_GNU_BUILD_ID = 3
_PT_NOTE = 4
_HASH_CHUNK = 1 << 20


def codegen_environment(environ: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """The ``MIGRAPHX_*`` variables set in ``environ`` that can change a compiled program, sorted by name.

    Values are kept as they are: ``0`` and unset (the same to MIGraphX) are different keys, a needless
    compile the first time only.
    """
    return tuple(sorted((name, value) for name, value in environ.items()
                        if name.startswith("MIGRAPHX_") and name not in OBSERVING_VARIABLES))


def library_identities(module: ModuleType, maps: Path | None = None) -> tuple[tuple[str, str], ...]:
    """``(name, identity)`` of the MIGraphX module (by its import name: a test double's is an ``__init__.py``),
    each MIGraphX library mapped, and MIOpen, rocBLAS and hipBLASLt (by file name). ``maps``: this process's
    ``/proc/self/maps`` by default."""
    mapped = _mapped_files(maps or PROC_MAPS)
    module_file = Path(getattr(module, "__file__", None) or "").resolve()
    identities = [(module.__name__, file_identity(module_file) if module_file.is_file() else "absent")]
    libraries = [path for path in mapped if MIGRAPHX_LIBRARY.match(path.name)]
    identities += [(path.name, file_identity(path)) for path in libraries]
    beside = [path.parent for path in [module_file, *libraries]]
    for name, pattern in OPTIONAL_LIBRARIES.items():
        library = _find_library(pattern, mapped, beside)
        identities.append((library.name, file_identity(library)) if library else (name, "absent"))
    return tuple(identities)


def _mapped_files(maps: Path) -> list[Path]:
    """The files mapped into this process, resolved (an empty list where ``/proc`` is not there)."""
    try:
        lines = maps.read_text().splitlines()
    except OSError:
        return []
    paths = {fields[5] for fields in (line.split(maxsplit=5) for line in lines)
             if len(fields) == 6 and fields[5].startswith("/")}
    return sorted({Path(path).resolve() for path in paths if Path(path).is_file()})


def _find_library(pattern: re.Pattern[str], mapped: list[Path], directories: Iterable[Path]) -> Path | None:
    """The library this process has mapped, else the first one in ``directories``, symbolic links resolved."""
    for path in mapped:
        if pattern.match(path.name):
            return path
    for directory in dict.fromkeys(directories):
        candidates = sorted({path.resolve() for path in directory.glob("*") if pattern.match(path.name)
                             and path.is_file()})
        if candidates:
            return candidates[0]
    return None


def file_identity(path: Path) -> str:
    """``build-id:<hex>`` from the file's GNU build-id note, else ``sha256:<hex>`` of its bytes; ``unreadable``
    (with why) for a file this user cannot read, a fact of the setup like any other, not a reason to fail."""
    try:
        build_id = elf_build_id(path)
        if build_id is not None:
            return f"build-id:{build_id}"
        digest = hashlib.sha256()
        with path.open("rb") as file:
            while chunk := file.read(_HASH_CHUNK):
                digest.update(chunk)
    except OSError as exc:
        return f"unreadable ({exc.strerror})"
    return f"sha256:{digest.hexdigest()}"


def elf_build_id(path: Path) -> str | None:
    """The GNU build id (hex) of an ELF file, from its PT_NOTE segments; None for a file without one, or not ELF."""
    with path.open("rb") as file:
        for offset, size, align in _note_segments(file):
            file.seek(offset)
            build_id = _build_id_in_notes(file.read(size), _byte_order(file), 8 if align == 8 else 4)
            if build_id is not None:
                return build_id
    return None


def _byte_order(file: BinaryIO) -> str:
    file.seek(5)
    return "<" if file.read(1) == b"\x01" else ">"


def _note_segments(file: BinaryIO) -> list[tuple[int, int, int]]:
    """``(offset, size, alignment)`` of each PT_NOTE segment of an ELF file (none for a file that is not ELF)."""
    header = file.read(64)
    if len(header) < 52 or header[:4] != b"\x7fELF" or header[4] not in (1, 2) or header[5] not in (1, 2):
        return []
    order = "<" if header[5] == 1 else ">"
    # ELF64: e_phoff at 32, e_phentsize/e_phnum at 54; p_type, p_offset at 8, p_filesz at 32, p_align at 48.
    # ELF32: e_phoff at 28, e_phentsize/e_phnum at 42; p_type, p_offset at 4, p_filesz at 16, p_align at 28.
    wide = header[4] == 2
    word, phoff_at, phnum_at, fields = ("Q", 32, 54, (8, 32, 48)) if wide else ("I", 28, 42, (4, 16, 28))
    phoff, = struct.unpack_from(order + word, header, phoff_at)
    phentsize, phnum = struct.unpack_from(order + "HH", header, phnum_at)
    segments = []
    for index in range(phnum):
        file.seek(phoff + index * phentsize)
        entry = file.read(phentsize)
        if len(entry) < fields[2] + struct.calcsize(word):
            break
        if struct.unpack_from(order + "I", entry, 0)[0] == _PT_NOTE:
            segments.append(tuple(struct.unpack_from(order + word, entry, at)[0] for at in fields))
    return segments


def _build_id_in_notes(notes: bytes, order: str, align: int) -> str | None:
    """The descriptor of the ``GNU`` note of type NT_GNU_BUILD_ID in one PT_NOTE segment's bytes."""
    position = 0
    while position + 12 <= len(notes):
        name_size, desc_size, kind = struct.unpack_from(order + "III", notes, position)
        name_start = position + 12
        desc_start = name_start + -(-name_size // align) * align
        if kind == _NT_GNU_BUILD_ID and notes[name_start:name_start + name_size] == b"GNU\0":
            return notes[desc_start:desc_start + desc_size].hex()
        position = desc_start + -(-desc_size // align) * align
    return None

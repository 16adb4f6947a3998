"""What the program cache's key takes from the environment and the libraries (pipelines/engines/migraphx_identity)."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from pipelines.engines.migraphx_identity import (
    OBSERVING_VARIABLES,
    codegen_environment,
    elf_build_id,
    file_identity,
    library_identities,
)
from tests.elf_files import write_elf

BUILD_ID = bytes.fromhex("00112233445566778899aabbccddeeff01234567")
# Upstream names (AMDMIGraphX src/, rocm-7.2.4) that change the compiled program or what it does, so are in the
# key: those the project's MIGraphX facts name, then others.
FACTS_VARIABLES = ("MIGRAPHX_DISABLE_MLIR", "MIGRAPHX_ENABLE_CK", "MIGRAPHX_SET_GEMM_PROVIDER",
                   "MIGRAPHX_ENABLE_NHWC", "MIGRAPHX_NSTREAMS", "MIGRAPHX_MLIR_USE_SPECIFIC_OPS",
                   "MIGRAPHX_GPU_OPTIMIZE")
CODEGEN_VARIABLES = (*FACTS_VARIABLES, "MIGRAPHX_DISABLE_PASSES", "MIGRAPHX_GPU_HIP_FLAGS",
                     "MIGRAPHX_MLIR_TUNING_DB", "MIGRAPHX_COPY_LITERALS", "MIGRAPHX_ENABLE_NULL_STREAM",
                     "MIGRAPHX_CK_DEBUG")


def test_codegen_variables_are_kept_sorted_and_observing_ones_left_out() -> None:
    environ = {"MIGRAPHX_TRACE_COMPILE": "1", "MIGRAPHX_PROBLEM_CACHE": "/var/cache/p.json", "HOME": "/root",
               "MIGRAPHX_NSTREAMS": "2", "MIGRAPHX_DISABLE_MLIR": "1", "MIGRAPHX_GPU_DUMP_SRC": "1"}
    assert codegen_environment(environ) == (("MIGRAPHX_DISABLE_MLIR", "1"), ("MIGRAPHX_NSTREAMS", "2"))


@pytest.mark.parametrize("name", CODEGEN_VARIABLES)
def test_every_codegen_variable_is_in_the_key(name: str) -> None:
    assert name not in OBSERVING_VARIABLES
    assert codegen_environment({name: "1"}) == ((name, "1"),)


def test_a_variable_unknown_to_this_list_counts() -> None:
    """A later release's new variable: a needless compile at worst, never a program built otherwise loaded."""
    assert codegen_environment({"MIGRAPHX_SOMETHING_NEW": "1"}) == (("MIGRAPHX_SOMETHING_NEW", "1"),)


@pytest.mark.parametrize("wide", [True, False], ids=["elf64", "elf32"])
@pytest.mark.parametrize("little", [True, False], ids=["lsb", "msb"])
def test_the_build_id_is_read_from_the_note(tmp_path: Path, wide: bool, little: bool) -> None:
    library = write_elf(tmp_path / "libMIOpen.so.1", BUILD_ID, wide, little)
    assert elf_build_id(library) == BUILD_ID.hex()
    assert file_identity(library) == f"build-id:{BUILD_ID.hex()}"


def test_a_file_without_a_build_id_is_identified_by_its_hash(tmp_path: Path) -> None:
    elf, text = write_elf(tmp_path / "libx.so", None), tmp_path / "migraphx.py"
    text.write_text("not ELF")
    assert elf_build_id(elf) is None and elf_build_id(text) is None
    assert file_identity(text) == f"sha256:{hashlib.sha256(b'not ELF').hexdigest()}"


@pytest.mark.skipif(shutil.which("readelf") is None, reason="needs binutils' readelf")
def test_the_build_id_of_this_python_is_readelfs() -> None:
    """A real linker's output (several notes, an 8-aligned .note.gnu.property segment first)."""
    printed = subprocess.run(["readelf", "-n", sys.executable], capture_output=True, text=True, check=True).stdout
    expected = [line.split()[-1] for line in printed.splitlines() if "Build ID:" in line]
    assert expected and elf_build_id(Path(sys.executable).resolve()) == expected[0]


def fake_rocm(tmp_path: Path, miopen_id: bytes) -> tuple[ModuleType, Path]:
    """A migraphx module file and libmigraphx/libMIOpen libraries in a lib folder, and a maps file that
    lists the MIGraphX library as mapped (MIOpen is only beside it)."""
    lib = tmp_path / "opt" / "rocm" / "lib"
    lib.mkdir(parents=True, exist_ok=True)
    module = ModuleType("migraphx")
    module.__file__ = str(write_elf(lib / "migraphx.cpython-312-x86_64-linux-gnu.so", b"\x01" * 20))
    migraphx_library = write_elf(lib / "libmigraphx_gpu.so.2015000", b"\x02" * 20)
    miopen = write_elf(lib / "libMIOpen.so.1.0.70204", miopen_id)
    (lib / "libMIOpen.so.1").unlink(missing_ok=True)
    (lib / "libMIOpen.so.1").symlink_to(miopen.name)
    maps = tmp_path / "maps"
    maps.write_text(f"7f0000000000-7f0000001000 r--p 00000000 08:01 1234   {migraphx_library}\n"
                    "7f0000002000-7f0000003000 rw-p 00000000 00:00 0 \n"
                    "7ffc00000000-7ffc00021000 rw-p 00000000 00:00 0    [stack]\n")
    return module, maps


def test_libraries_mapped_and_beside_are_identified_and_missing_ones_said(tmp_path: Path) -> None:
    module, maps = fake_rocm(tmp_path, BUILD_ID)
    assert library_identities(module, maps) == (
        ("migraphx", "build-id:" + "01" * 20),
        ("libmigraphx_gpu.so.2015000", "build-id:" + "02" * 20),
        ("libMIOpen.so.1.0.70204", f"build-id:{BUILD_ID.hex()}"),
        ("librocblas.so", "absent"),
        ("libhipblaslt.so", "absent"),
    )


def test_another_miopen_build_is_another_identity(tmp_path: Path) -> None:
    before = library_identities(*fake_rocm(tmp_path, BUILD_ID))
    after = library_identities(*fake_rocm(tmp_path, b"\xee" * 20))
    assert before != after and before[:2] == after[:2]


def test_an_unreadable_library_is_said_not_fatal(tmp_path: Path) -> None:
    assert file_identity(tmp_path / "gone.so").startswith("unreadable (No such file")

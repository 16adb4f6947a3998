"""Minimal ELF files with a GNU build-id note, as a linker writes it (a PT_NOTE segment), for identity tests."""

from __future__ import annotations

import struct
from pathlib import Path

NT_GNU_BUILD_ID = 3
PT_NOTE = 4


def write_elf(path: Path, build_id: bytes | None, wide: bool = True, little: bool = True) -> Path:
    """An ELF shared object header, one PT_NOTE segment holding a ``.note.gnu.property``-like note of another
    type, then (unless ``build_id`` is None) the GNU build-id note."""
    order = "<" if little else ">"
    notes = _note(order, b"GNU\0", 5, b"\0" * 16)  # NT_GNU_PROPERTY_TYPE_0: must be skipped
    if build_id is not None:
        notes += _note(order, b"GNU\0", NT_GNU_BUILD_ID, build_id)
    header_size, entry_size = (64, 56) if wide else (52, 32)
    notes_at = header_size + entry_size
    ident = b"\x7fELF" + bytes([2 if wide else 1, 1 if little else 2, 1]) + b"\0" * 9
    if wide:
        header = ident + struct.pack(order + "HHIQQQIHHHHHH", 3, 62, 1, 0, header_size, 0, 0, header_size,
                                     entry_size, 1, 64, 0, 0)
        segment = struct.pack(order + "IIQQQQQQ", PT_NOTE, 4, notes_at, 0, 0, len(notes), len(notes), 4)
    else:
        header = ident + struct.pack(order + "HHIIIIIHHHHHH", 3, 3, 1, 0, header_size, 0, 0, header_size,
                                     entry_size, 1, 40, 0, 0)
        segment = struct.pack(order + "IIIIIIII", PT_NOTE, notes_at, 0, 0, len(notes), len(notes), 4, 4)
    path.write_bytes(header + segment + notes)
    return path


def _note(order: str, name: bytes, kind: int, descriptor: bytes) -> bytes:
    def padded(data: bytes) -> bytes:
        return data + b"\0" * (-len(data) % 4)

    return struct.pack(order + "III", len(name), len(descriptor), kind) + padded(name) + padded(descriptor)

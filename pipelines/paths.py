"""Paths in configuration files are relative to the file that names them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, Field, ValidationInfo


def _resolve(value: Path, info: ValidationInfo) -> Path:
    base = (info.context or {}).get("base_dir")
    value = _expand_home(value)
    if base is not None and not value.is_absolute():
        value = Path(os.path.normpath(Path(base) / value))
    return value


def _expand_home(value: Path) -> Path:
    """``~`` and ``~user`` expanded. A user with no home directory (or none at all) is a ValueError, which
    pydantic reports as a configuration error: pathlib's RuntimeError would pass through validation."""
    try:
        return value.expanduser()
    except RuntimeError:
        home = value.parts[0]
        raise ValueError(f"cannot expand {home}: no such user, or no home directory") from None


ConfigPath = Annotated[Path, Field(strict=False), AfterValidator(_resolve)]  # TOML has no path type: a string


def file_problem(path: Path) -> str:
    """Why ``path`` cannot be read as a file ('' if it can): missing, a directory, or not a regular file
    (a FIFO would block whoever opens it until something writes to it)."""
    if not path.exists():
        return f"file not found: {path}"
    if path.is_dir():
        return f"{path} is a directory, not a file"
    if not path.is_file():
        return f"{path} is not a regular file"
    return ""

"""CURVE key files (ZeroMQ certificates, as written by ``zmq.auth.create_certificates``), read with the
checks OpenSSH applies to its own keys: a secret key must be the running user's and private to them
(no group or other permission bits); a public key, and the directory of authorised ones, must be the
running user's or root's and writable by no one else, or anyone who could write there could let
themselves in. Every problem is a :class:`CurveKeyError` naming the file.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import zmq.auth
from zmq.utils import z85

from pipelines.publishers.base import PublisherError

PUBLIC_SUFFIX = ".key"  # what zmq.auth.load_certificates reads from a directory
SECRET_SUFFIX = ".key_secret"
_Z85_KEY_LENGTH = 40  # a 32-byte Curve25519 key in Z85


class CurveKeyError(PublisherError):
    """A key file or directory is missing, malformed or not protected enough."""


def load_secret_key(path: Path) -> tuple[bytes, bytes]:
    """``(public, secret)`` Z85 keys from a secret key file that only its owner, the running user, can use."""
    info = _stat(path, "secret key file")
    if info.st_uid != os.geteuid():
        raise CurveKeyError(f"secret key file {path} is owned by uid {info.st_uid}, not by the user running this "
                            f"(uid {os.geteuid()}): chown it")
    if info.st_mode & 0o077:
        raise CurveKeyError(f"secret key file {path} has mode {_mode(info)}: group and others must have no access "
                            f"(chmod 600 {path})")
    public, secret = _read(path)
    if secret is None:
        raise CurveKeyError(f"{path} holds no secret-key: is it the public half ({PUBLIC_SUFFIX})? The secret one "
                            f"ends in {SECRET_SUFFIX}")
    return public, _valid(secret, path, "secret-key")


def load_public_key(path: Path) -> bytes:
    """The Z85 public key in ``path``, a file no one but its owner (the running user or root) can change."""
    _check_not_writable_by_others(path, _stat(path, "public key file"), "public key file")
    return _read(path)[0]


def authorized_key_files(directory: Path) -> list[Path]:
    """Every public key file in ``directory`` (``*.key``, as ``zmq.auth`` reads them), each checked; at
    least one, since a CURVE publisher with none would refuse every subscriber."""
    info = _stat(directory, "authorized keys directory")
    if not stat.S_ISDIR(info.st_mode):
        raise CurveKeyError(f"authorized keys directory {directory} is not a directory")
    _check_not_writable_by_others(directory, info, "authorized keys directory")
    files = sorted(directory.glob("*" + PUBLIC_SUFFIX))
    for path in files:
        load_public_key(path)
    if not files:
        raise CurveKeyError(f"authorized keys directory {directory} holds no public key (*{PUBLIC_SUFFIX}): "
                            f"no subscriber could connect")
    return files


def _stat(path: Path, what: str) -> os.stat_result:
    try:
        return path.stat()
    except FileNotFoundError:
        raise CurveKeyError(f"{what} not found: {path}") from None
    except OSError as exc:
        raise CurveKeyError(f"cannot read {what} {path}: {exc.strerror}") from exc


def _check_not_writable_by_others(path: Path, info: os.stat_result, what: str) -> None:
    if info.st_uid not in (os.geteuid(), 0):
        raise CurveKeyError(f"{what} {path} is owned by uid {info.st_uid}: it must be owned by the user running "
                            f"this (uid {os.geteuid()}) or root")
    if info.st_mode & 0o022:
        raise CurveKeyError(f"{what} {path} has mode {_mode(info)}: it must not be writable by group or others "
                            f"(chmod go-w {path})")


def _read(path: Path) -> tuple[bytes, bytes | None]:
    try:
        public, secret = zmq.auth.load_certificate(path)
    except ValueError:
        raise CurveKeyError(f"{path} is not a CURVE key file: no public-key line (make keys with nfnet-keys)") \
            from None
    except OSError as exc:
        raise CurveKeyError(f"cannot read key file {path}: {exc.strerror or exc}") from exc
    return _valid(public, path, "public-key"), secret


def _valid(key: bytes, path: Path, field: str) -> bytes:
    if len(key) == _Z85_KEY_LENGTH:
        try:
            z85.decode(key)
            return key
        except KeyError:  # a character outside Z85's alphabet
            pass
    raise CurveKeyError(f"{path}: {field} is not a 40-character Z85 CURVE key")


def _mode(info: os.stat_result) -> str:
    return f"{stat.S_IMODE(info.st_mode):04o}"

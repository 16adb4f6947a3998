"""CURVE key files: ``nfnet-keys`` makes private secret keys and never overwrites by accident; the loader
refuses keys that others could read or replace, and malformed ones, naming the file."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest
import zmq.auth

from pipelines.publishers.curve_keys import CurveKeyError, authorized_key_files, load_public_key, load_secret_key
from tests.conftest import REPO
from tools.keys import create_key_pair


def nfnet_keys(*args: str | Path, umask: int = 0o022) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tools.keys", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=60, umask=umask)


def refused(message: str) -> AbstractContextManager[Any]:
    """Expect a CurveKeyError whose message contains ``message`` verbatim."""
    return pytest.raises(CurveKeyError, match=re.escape(message))


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_key_tool_makes_private_secret_keys_even_under_a_permissive_umask(tmp_path: Path) -> None:
    server = nfnet_keys("server", tmp_path / "daemon", umask=0)
    client = nfnet_keys("client", "viewer-1", tmp_path / "viewer", umask=0)
    assert server.returncode == 0 and client.returncode == 0, server.stderr + client.stderr
    for directory, name in ((tmp_path / "daemon", "server"), (tmp_path / "viewer", "viewer-1")):
        assert mode(directory / f"{name}.key_secret") == 0o600
        assert mode(directory / f"{name}.key") == 0o644
        assert sorted(p.name for p in directory.iterdir()) == [f"{name}.key", f"{name}.key_secret"]
        public, secret = load_secret_key(directory / f"{name}.key_secret")
        assert load_public_key(directory / f"{name}.key") == public and secret
    # What to copy where: the client's public key to the daemon, the server's public key to the client.
    assert "authorized_keys_dir" in client.stdout and str(tmp_path / "viewer" / "viewer-1.key") in client.stdout
    assert "server_secret_key" in server.stdout and "--server-key" in server.stdout


def test_key_tool_refuses_to_overwrite_unless_forced(tmp_path: Path) -> None:
    assert nfnet_keys("server", tmp_path).returncode == 0
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    refused = nfnet_keys("server", tmp_path)
    assert refused.returncode == 1 and "already exist" in refused.stderr and "--force" in refused.stderr
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before

    (tmp_path / "server.key_secret").chmod(0o644)  # an old key someone loosened: --force must not keep that mode
    forced = nfnet_keys("server", tmp_path, "--force")
    assert forced.returncode == 0, forced.stderr
    assert (tmp_path / "server.key_secret").read_bytes() != before["server.key_secret"]
    assert mode(tmp_path / "server.key_secret") == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["server.key", "server.key_secret"]


def test_key_tool_rejects_a_name_that_is_a_path(tmp_path: Path) -> None:
    result = nfnet_keys("client", "../escape", tmp_path / "keys")
    assert result.returncode == 2 and "invalid name" in result.stderr
    assert not (tmp_path / "escape.key").exists()


@pytest.mark.parametrize("loose", [0o640, 0o604, 0o620, 0o644])
def test_secret_key_readable_or_writable_by_others_is_refused(tmp_path: Path, loose: int) -> None:
    _, secret = create_key_pair(tmp_path, "server")
    secret.chmod(loose)
    with refused(f"{secret} has mode {loose:04o}: group and others must have no access"):
        load_secret_key(secret)


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_secret_key_of_another_user_is_refused(tmp_path: Path) -> None:
    _, secret = create_key_pair(tmp_path, "server")
    os.chown(secret, 65534, -1)
    with refused(f"{secret} is owned by uid 65534, not by the user running this"):
        load_secret_key(secret)


def test_public_half_or_garbage_instead_of_a_secret_key(tmp_path: Path) -> None:
    public, _ = create_key_pair(tmp_path, "server")
    public.chmod(0o600)
    with refused(f"{public} holds no secret-key: is it the public half"):
        load_secret_key(public)
    garbage = tmp_path / "garbage.key_secret"
    garbage.write_text("not a certificate\n")
    garbage.chmod(0o600)
    with refused(f"{garbage} is not a CURVE key file"):
        load_secret_key(garbage)
    short = tmp_path / "short.key"
    short.write_text('curve\n    public-key = "tooshort"\n')
    with refused(f"{short}: public-key is not a 40-character Z85 CURVE key"):
        load_public_key(short)
    with refused(f"secret key file not found: {tmp_path / 'absent'}"):
        load_secret_key(tmp_path / "absent")


def test_authorized_keys_must_be_protected_and_present(tmp_path: Path) -> None:
    authorized = tmp_path / "authorized"
    with refused(f"authorized keys directory not found: {authorized}"):
        authorized_key_files(authorized)
    authorized.mkdir()
    with refused(f"authorized keys directory {authorized} holds no public key"):
        authorized_key_files(authorized)
    first, _ = create_key_pair(tmp_path / "clients", "a")
    second, _ = create_key_pair(tmp_path / "clients", "b")
    for public in (first, second):
        (authorized / public.name).write_bytes(public.read_bytes())
    (authorized / "notes.txt").write_text("not a key; ignored, as zmq.auth ignores it\n")
    assert authorized_key_files(authorized) == [authorized / "a.key", authorized / "b.key"]
    assert set(zmq.auth.load_certificates(authorized)) == {load_public_key(first), load_public_key(second)}

    (authorized / "b.key").chmod(0o666)
    with refused(f"public key file {authorized / 'b.key'} has mode 0666: it must not be writable by group or others"):
        authorized_key_files(authorized)
    (authorized / "b.key").chmod(0o644)
    authorized.chmod(0o777)
    with refused(f"authorized keys directory {authorized} has mode 0777"):
        authorized_key_files(authorized)

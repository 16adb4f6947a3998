"""``nfnet-keys``: make the CURVE key pairs of the label stream, the daemon's (server) and each
subscriber's (client NAME), with secret key files that only their owner can read (0600)."""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from pathlib import Path

import zmq.auth

from pipelines.publishers.curve_keys import PUBLIC_SUFFIX, SECRET_SUFFIX

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def create_key_pair(directory: Path, name: str, force: bool = False) -> tuple[Path, Path]:
    """Write ``NAME.key`` (public, 0644) and ``NAME.key_secret`` (0600) into ``directory``; return their paths.

    The pair is made in a private (0700) directory beside them and then moved in, so no other user can ever
    open the secret file; existing keys are replaced only with ``force``.
    """
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    targets = (directory / f"{name}{PUBLIC_SUFFIX}", directory / f"{name}{SECRET_SUFFIX}")
    existing = [str(path) for path in targets if path.exists() or path.is_symlink()]
    if existing and not force:
        raise FileExistsError(f"{' and '.join(existing)} already exist (--force replaces them)")
    with tempfile.TemporaryDirectory(dir=directory, prefix=".nfnet-keys-") as private:
        made = [Path(path) for path in zmq.auth.create_certificates(private, name)]
        for path, mode in zip(made, (0o644, 0o600), strict=True):
            path.chmod(mode)
        for path, target in zip(made, targets, strict=True):
            if force:
                path.replace(target)
            else:
                os.link(path, target)  # fails, rather than replaces, if the file appeared meanwhile
    return targets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nfnet-keys", description=__doc__.split(": ", 1)[1])
    commands = parser.add_subparsers(dest="command", required=True)
    server = commands.add_parser("server", help="the daemon's key pair: server.key and server.key_secret")
    server.add_argument("dir", type=Path, help="where to write them (made, mode 0700, if missing)")
    client = commands.add_parser("client", help="a subscriber's key pair: NAME.key and NAME.key_secret")
    client.add_argument("name", help="letters, digits, '_', '.', '-'")
    client.add_argument("dir", type=Path, help="where to write them (made, mode 0700, if missing)")
    for command in (server, client):
        command.add_argument("--force", action="store_true", help="replace existing keys of that name")
    args = parser.parse_args(argv)
    name = "server" if args.command == "server" else args.name
    if not NAME.fullmatch(name):
        parser.error(f"invalid name {name!r}: use letters, digits, '_', '.', '-'")
    try:
        public, secret = create_key_pair(args.dir.resolve(), name, args.force)
    except OSError as exc:
        print(f"nfnet-keys: error: {exc}", file=sys.stderr)
        return 1
    if args.command == "server":
        print(f"secret key: {secret} (0600): keep it with the daemon; in its config:\n"
              f"    [publish.zmq.curve]\n    server_secret_key = \"{secret}\"\n"
              f"public key: {public}: give it to every subscriber (nfnet-subscribe --server-key {public})")
    else:
        print(f"secret key: {secret} (0600): keep it with the subscriber (nfnet-subscribe --client-key {secret})\n"
              f"public key: {public}: copy it into the daemon's authorized_keys_dir, then reload the daemon (SIGHUP)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""CURVE on the label stream (CurveZMQ: encrypted, and every subscriber authenticated by its key pair).

The daemon is the CURVE server; pyzmq's own ZAP handler (``zmq.auth.ThreadAuthenticator``) admits only
the public keys found in the authorised directory. A subscriber without CURVE, or with a key that is
not listed, completes no handshake and so never subscribes nor receives anything.
"""

from __future__ import annotations

import logging
from pathlib import Path

import zmq
from zmq.auth.thread import ThreadAuthenticator

from pipelines.publishers.base import PublisherError
from pipelines.publishers.config import CurveConfig
from pipelines.publishers.curve_keys import authorized_key_files, load_public_key, load_secret_key

log = logging.getLogger(__name__)


class CurveServer:
    """The daemon's key pair and the ZAP handler for the sockets of one context.

    The authorised keys are read at start-up and again on SIGHUP (:meth:`reload_authorized`): a key added
    admits its subscriber from then on; a key removed refuses its next handshake (a connection already
    made stays until it reconnects). Admissions and refusals are logged by ``zmq.auth`` at debug level (a
    refused client may retry several times a second).
    """

    def __init__(self, config: CurveConfig, context: zmq.Context) -> None:
        if not zmq.has("curve"):
            raise PublisherError(f"publish.zmq.curve is set but this libzmq ({zmq.zmq_version()}) has no CURVE support")
        self._public, self._secret = load_secret_key(config.server_secret_key)
        self._authorized_dir = config.authorized_keys_dir
        # Before any socket binds: a CURVE server with no ZAP handler would admit every client.
        self._authenticator = ThreadAuthenticator(context)
        self._authenticator.start()
        try:
            self.reload_authorized()
        except BaseException:
            self._authenticator.stop()
            raise

    def reload_authorized(self) -> None:
        """(Re-)read the authorised public keys, with the same checks as at start-up; on an error
        (:class:`PublisherError`) the keys in force stay."""
        keys = authorized_key_files(self._authorized_dir)
        self._authenticator.configure_curve(domain="*", location=str(self._authorized_dir))
        log.info("CURVE on: %d subscriber key(s) authorised from %s", len(keys), self._authorized_dir)

    def secure(self, socket: zmq.Socket) -> None:
        """Make ``socket`` a CURVE server; call before it binds."""
        socket.curve_secretkey = self._secret
        socket.curve_publickey = self._public
        socket.curve_server = True

    def stop(self) -> None:
        self._authenticator.stop()


def secure_client(socket: zmq.Socket, client_secret_key: Path, server_public_key: Path) -> None:
    """Make ``socket`` a CURVE client of the server whose public key is in ``server_public_key``; call before it
    connects."""
    public, secret = load_secret_key(client_secret_key)
    socket.curve_serverkey = load_public_key(server_public_key)
    socket.curve_secretkey = secret
    socket.curve_publickey = public

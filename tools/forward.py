"""``nfnet-forward``: one endpoint for a fleet's label streams. A ZeroMQ XSUB/XPUB forwarder (libzmq's
``zmq_proxy``) that subscribes to several daemons and republishes everything they publish.

Subscriptions travel upstream (every one of them: the XPUB side is verbose), so each daemon sends only what
some subscriber wants, and a subscriber that joins late still gets each stream's current status from the
daemon that owns it (its last-value cache). Stream ids must be unique across the fleet; every message
names its daemon (``instance``) and its run (``run_id``). Without CURVE: put it on the daemons' network.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

import zmq

from pipelines.publishers.zmq import needs_ipv6

DEFAULT_SEND_HWM = 10000


class Forwarder:
    """The proxy on a thread of its own; :meth:`stop` ends it."""

    def __init__(self, upstreams: list[str], bind: str, send_hwm: int = DEFAULT_SEND_HWM) -> None:
        self._context = zmq.Context()
        self._frontend = self._context.socket(zmq.XSUB)
        self._backend = self._context.socket(zmq.XPUB)
        self._control = self._context.socket(zmq.PAIR)
        self._steer = self._context.socket(zmq.PAIR)
        for socket in (self._frontend, self._backend, self._control, self._steer):
            socket.setsockopt(zmq.LINGER, 0)
        ipv6 = any(needs_ipv6(endpoint) for endpoint in [*upstreams, bind])
        for socket in (self._frontend, self._backend):
            socket.setsockopt(zmq.IPV6, int(ipv6))
        self._backend.setsockopt(zmq.XPUB_VERBOSER, 1)  # every subscription upstream, not only a topic's first
        self._backend.setsockopt(zmq.SNDHWM, send_hwm)
        self._backend.bind(bind)
        self.endpoint = self._backend.getsockopt_string(zmq.LAST_ENDPOINT)
        for upstream in upstreams:
            self._frontend.connect(upstream)
        control = f"inproc://forward-control-{id(self)}"
        self._control.bind(control)
        self._steer.connect(control)
        self._thread = threading.Thread(target=self._run, name="forwarder", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        zmq.proxy_steerable(self._frontend, self._backend, None, self._control)

    def stop(self) -> None:
        self._steer.send(b"TERMINATE")
        self._thread.join(timeout=10)
        for socket in (self._frontend, self._backend, self._control, self._steer):
            socket.close()
        self._context.term()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nfnet-forward", description=__doc__.split(": ", 1)[1].split("\n\n")[0])
    parser.add_argument("--connect", action="append", required=True,
                        help="a daemon's ZeroMQ endpoint (repeat for each daemon)")
    parser.add_argument("--bind", default="tcp://*:5556", help="where subscribers connect (default tcp://*:5556)")
    parser.add_argument("--send-hwm", type=int, default=DEFAULT_SEND_HWM,
                        help="messages queued per subscriber before ZeroMQ drops for it")
    args = parser.parse_args(argv)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})  # for sigwait, in every thread
    try:
        forwarder = Forwarder(args.connect, args.bind, args.send_hwm)
    except zmq.ZMQError as exc:
        print(f"nfnet-forward: error: {exc}", file=sys.stderr)
        return 3
    print(f"forwarding {', '.join(args.connect)} on {forwarder.endpoint}", file=sys.stderr)
    signal.sigwait({signal.SIGINT, signal.SIGTERM})
    forwarder.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

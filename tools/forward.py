"""``nfnet-forward``: one endpoint for a fleet's label streams. A ZeroMQ XSUB/XPUB forwarder (libzmq's
``zmq_proxy``) that subscribes to several daemons and republishes everything they publish.

Subscriptions travel upstream (every one of them: the XPUB side is verbose), so each daemon sends only what
some subscriber wants, and a subscriber that joins late still gets each stream's current status from the
daemon that owns it (its last-value cache). Stream ids must be unique across the fleet; every message
names its daemon (``instance``) and its run (``run_id``). Without CURVE: put it on the daemons' network.

Its endpoints and ``--send-hwm`` are checked as the daemon checks ``publish.zmq`` (exit 2 and one line when
wrong). SIGTERM and SIGINT stop it; SIGHUP is ignored (there is nothing to reload), so that a ``kill -HUP``
meant for the daemons never cuts their subscribers off.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time

import zmq

from pipelines.publishers.zmq import needs_ipv6
from tools import zmq_options

DEFAULT_SEND_HWM = 10000
STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}
HANDLED_SIGNALS = {*STOP_SIGNALS, signal.SIGHUP}
TICK_S = 0.1  # how soon a recorded signal is acted on


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
    # First, and until exit: handlers that only record (Python runs them in this thread, whichever thread the
    # signal reached). A mask and sigwait would not do: threads started by the imports (NumPy's OpenBLAS
    # pool) do not block the signals, and one that takes a SIGHUP or a SIGTERM ends the process.
    received: list[int] = []
    for signum in HANDLED_SIGNALS:
        signal.signal(signum, lambda signum, frame: received.append(signum))
    parser = argparse.ArgumentParser(prog="nfnet-forward", description=__doc__.split(": ", 1)[1].split("\n\n")[0])
    parser.add_argument("--connect", action="append", required=True, type=zmq_options.connect_endpoint,
                        help="a daemon's ZeroMQ endpoint (repeat for each daemon)")
    parser.add_argument("--bind", default="tcp://*:5556", type=zmq_options.bind_endpoint,
                        help="where subscribers connect (default tcp://*:5556)")
    parser.add_argument("--send-hwm", type=zmq_options.send_hwm, default=DEFAULT_SEND_HWM,
                        help="messages queued per subscriber before ZeroMQ drops for it (1 to 10000000)")
    args = parser.parse_args(argv)
    try:
        forwarder = Forwarder(args.connect, args.bind, args.send_hwm)
    except zmq.ZMQError as exc:
        print(f"nfnet-forward: error: {exc}", file=sys.stderr)
        return 3
    print(f"forwarding {', '.join(args.connect)} on {forwarder.endpoint}", file=sys.stderr)
    while not STOP_SIGNALS.intersection(received):
        time.sleep(TICK_S)
        while signal.SIGHUP in received:
            received.remove(signal.SIGHUP)
            print("nfnet-forward: SIGHUP ignored (nothing to reload)", file=sys.stderr)
    forwarder.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

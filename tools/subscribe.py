"""``nfnet-subscribe``: print the daemon's labels and stream states live, and say so when a stream's seq
has a gap (lost messages; frames the daemon dropped are reported in each message, not a gap) or a daemon
restarted (a new run_id). Several ``--endpoint``s merge several daemons (a fleet) on one socket; stream ids
must then be unique across the fleet, and one that two daemons publish is an error."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from pipelines.publishers.base import PublisherError
from pipelines.publishers.console import format_text
from pipelines.publishers.curve import secure_client
from pipelines.publishers.message import LABEL_PREFIX, STATUS_PREFIX, label_topic, status_topic
from pipelines.publishers.zmq import needs_ipv6
from tools import zmq_options

EXIT_LABELS_MISSING = 4  # with --until-ended: labels were lost on the way
FINAL_STATES = ("ended", "failed")

HANDSHAKE_EVENTS = zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL \
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="nfnet-subscribe", description=__doc__.split(": ", 1)[1])
    parser.add_argument("--endpoint", action="append", default=[], type=zmq_options.connect_endpoint,
                        help="a daemon's (or forwarder's) ZeroMQ endpoint; repeat for a fleet "
                             "(default: tcp://127.0.0.1:5555)")
    parser.add_argument("--stream", action="append", default=[],
                        help="only this stream id's labels and states (repeatable; default: all streams)")
    parser.add_argument("--json", action="store_true", help="print each message as received (JSON)")
    parser.add_argument("--count", type=int, default=0, help="exit after this many label messages (0: never)")
    parser.add_argument("--until-ended", action="store_true",
                        help="exit once every stream seen has ended or failed: 0 if no label was missing, "
                             f"{EXIT_LABELS_MISSING} if some were (a gap, or labels lost before a stream's end)")
    parser.add_argument("--client-key", type=Path, help="CURVE: this subscriber's secret key file (nfnet-keys client)")
    parser.add_argument("--server-key", type=Path, help="CURVE: the daemon's public key file (its server.key)")
    args = parser.parse_args(argv)
    if bool(args.client_key) != bool(args.server_key):
        parser.error("CURVE needs both --client-key and --server-key")
    args.endpoint = args.endpoint or ["tcp://127.0.0.1:5555"]
    return args


def subscriptions(streams: list[str]) -> list[str]:
    """The topic prefixes for these streams' labels and states, or for everything."""
    if not streams:
        return [LABEL_PREFIX, STATUS_PREFIX]
    return [topic for stream in streams for topic in (label_topic(stream), status_topic(stream))]


def handshake_problem(event: dict[str, Any]) -> tuple[bool, str]:
    """What a failed handshake means for the user, and whether it is final (retrying cannot help)."""
    if event["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        return True, ("the daemon refused this subscriber's key: copy its public key into the daemon's "
                      "authorized_keys_dir and reload the daemon (systemctl reload: SIGHUP)")
    if event["value"] == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
        return True, ("CURVE on one side only: use --client-key and --server-key exactly when the daemon "
                      "has [publish.zmq.curve]")
    return False, "handshake with the daemon failed (is --server-key the daemon's public key?); retrying"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    context = zmq.Context()
    socket = context.socket(zmq.SUB)
    socket.setsockopt(zmq.LINGER, 0)
    try:
        if args.client_key:
            secure_client(socket, args.client_key, args.server_key)
        for topic in subscriptions(args.stream):
            socket.setsockopt_string(zmq.SUBSCRIBE, topic)
        if any(needs_ipv6(endpoint) for endpoint in args.endpoint):
            socket.setsockopt(zmq.IPV6, 1)
        monitor = socket.get_monitor_socket(HANDSHAKE_EVENTS)
        for endpoint in args.endpoint:
            socket.connect(endpoint)
        print(f"listening on {', '.join(args.endpoint)}", file=sys.stderr)
        return _receive(socket, monitor, args)
    except PublisherError as exc:
        print(f"nfnet-subscribe: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    finally:
        socket.close()
        context.destroy(linger=0)


class LabelTracker:
    """Per stream: the daemon and run its messages come from, the next seq expected, and its state, to report
    gaps, labels lost before a stream's end (its ``ended`` status says its last seq), restarts and ends."""

    def __init__(self) -> None:
        self.next_seq: dict[str, int] = {}
        self.runs: dict[str, tuple[str, str]] = {}  # stream -> (instance, run_id) of its last message
        self.states: dict[str, str] = {}
        self.missing = 0  # labels known to be lost

    def take(self, message: dict[str, Any]) -> str | None:
        """Note one message; return what to report about it (None: nothing). Raises ValueError when one
        stream id comes from two daemons."""
        stream, source = message["stream_id"], (message["instance"], message["run_id"])
        previous = self.runs.get(stream)
        self.runs[stream] = source
        if previous is not None and previous[0] != source[0]:
            raise ValueError(f"stream {stream!r} comes from two daemons ({previous[0]} and {source[0]}); give "
                             "streams ids unique across the fleet")
        report = None
        if previous is not None and previous[1] != source[1]:
            report = f"{stream}: {source[0]} RESTARTED (run {source[1]}); seq starts again"
            self.next_seq.pop(stream, None)
        if message["type"] == "status":
            self.states[stream] = message["state"]
            return self._end(message) if message["state"] in FINAL_STATES and not message["replay"] else report
        seq, expected = message["seq"], self.next_seq.get(stream)
        self.next_seq[stream] = seq + 1
        if expected is not None and seq != expected:
            self.missing += max(0, seq - expected)
            return f"{stream}: GAP, expected seq {expected}, got {seq}"
        return report

    def _end(self, status: dict[str, Any]) -> str | None:
        """A stream's end: the labels published after the last one received were lost."""
        stream, last = status["stream_id"], status.get("last_seq")
        expected = self.next_seq.get(stream)
        if last is None or expected is None or last < expected:
            return None
        self.missing += last - expected + 1
        self.next_seq[stream] = last + 1
        return (f"{stream}: {last - expected + 1} label(s) MISSING at the end: the last received was seq "
                f"{expected - 1}, the stream's last is {last}")

    @property
    def all_ended(self) -> bool:
        return bool(self.states) and all(state in FINAL_STATES for state in self.states.values())


def _receive(socket: zmq.Socket, monitor: zmq.Socket, args: argparse.Namespace) -> int:
    poller = zmq.Poller()
    poller.register(socket, zmq.POLLIN)
    poller.register(monitor, zmq.POLLIN)
    tracker = LabelTracker()
    warned = False
    received = 0
    while not args.count or received < args.count:
        if monitor in dict(poller.poll()):
            final, problem = handshake_problem(recv_monitor_message(monitor))
            if final:
                print(f"nfnet-subscribe: error: {problem}", file=sys.stderr)
                return 1
            if not warned:
                print(f"nfnet-subscribe: {problem}", file=sys.stderr)
                warned = True
            continue
        _, payload = socket.recv_multipart()
        message = json.loads(payload)
        print(payload.decode() if args.json else format_text(message), flush=True)
        try:
            report = tracker.take(message)
        except ValueError as exc:
            print(f"nfnet-subscribe: error: {exc}", file=sys.stderr)
            return 1
        if report:
            print(report, file=sys.stderr, flush=True)
        received += message["type"] == "label"
        if args.until_ended and tracker.all_ended:
            return EXIT_LABELS_MISSING if tracker.missing else 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""``nfnet-subscribe``: print the daemon's labels and stream states live, and say so when a stream's seq
has a gap (lost messages; frames the daemon dropped are reported in each message, not a gap)."""

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
from pipelines.publishers.message import STATUS_TOPIC

HANDSHAKE_EVENTS = zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL \
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="nfnet-subscribe", description=__doc__.split(": ", 1)[1])
    parser.add_argument("--endpoint", default="tcp://127.0.0.1:5555", help="the daemon's ZeroMQ endpoint")
    parser.add_argument("--stream", action="append", default=[],
                        help="only this stream id's labels (repeatable; default: all streams)")
    parser.add_argument("--json", action="store_true", help="print each message as received (JSON)")
    parser.add_argument("--count", type=int, default=0, help="exit after this many label messages (0: never)")
    parser.add_argument("--client-key", type=Path, help="CURVE: this subscriber's secret key file (nfnet-keys client)")
    parser.add_argument("--server-key", type=Path, help="CURVE: the daemon's public key file (its server.key)")
    args = parser.parse_args(argv)
    if bool(args.client_key) != bool(args.server_key):
        parser.error("CURVE needs both --client-key and --server-key")
    return args


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
        for topic in [*args.stream, STATUS_TOPIC] if args.stream else [""]:
            socket.setsockopt_string(zmq.SUBSCRIBE, topic)
        monitor = socket.get_monitor_socket(HANDSHAKE_EVENTS)
        socket.connect(args.endpoint)
        print(f"listening on {args.endpoint}", file=sys.stderr)
        return _receive(socket, monitor, args)
    except PublisherError as exc:
        print(f"nfnet-subscribe: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    finally:
        socket.close()
        context.destroy(linger=0)


def _receive(socket: zmq.Socket, monitor: zmq.Socket, args: argparse.Namespace) -> int:
    poller = zmq.Poller()
    poller.register(socket, zmq.POLLIN)
    poller.register(monitor, zmq.POLLIN)
    next_seq: dict[str, int] = {}
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
        if args.stream and message["stream_id"] not in args.stream:
            continue  # another stream's status
        print(payload.decode() if args.json else format_text(message), flush=True)
        if message["type"] != "label":
            continue
        stream, seq = message["stream_id"], message["seq"]
        expected = next_seq.get(stream)
        if expected is not None and seq != expected:
            print(f"{stream}: GAP, expected seq {expected}, got {seq}", file=sys.stderr)
        next_seq[stream] = seq + 1
        received += 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

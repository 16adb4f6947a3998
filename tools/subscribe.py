"""``nfnet-subscribe``: print the daemon's labels and stream states live, and say so when a stream's seq
has a gap (lost messages; frames the daemon dropped are reported in each message, not a gap)."""

from __future__ import annotations

import argparse
import json
import sys

import zmq

from pipelines.publishers.console import format_text
from pipelines.publishers.message import STATUS_TOPIC


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nfnet-subscribe", description=__doc__.split(": ", 1)[1])
    parser.add_argument("--endpoint", default="tcp://127.0.0.1:5555", help="the daemon's ZeroMQ endpoint")
    parser.add_argument("--stream", action="append", default=[],
                        help="only this stream id's labels (repeatable; default: all streams)")
    parser.add_argument("--json", action="store_true", help="print each message as received (JSON)")
    parser.add_argument("--count", type=int, default=0, help="exit after this many label messages (0: never)")
    args = parser.parse_args(argv)

    context = zmq.Context()
    socket = context.socket(zmq.SUB)
    socket.setsockopt(zmq.LINGER, 0)
    for topic in [*args.stream, STATUS_TOPIC] if args.stream else [""]:
        socket.setsockopt_string(zmq.SUBSCRIBE, topic)
    socket.connect(args.endpoint)
    print(f"listening on {args.endpoint}", file=sys.stderr)
    next_seq: dict[str, int] = {}
    received = 0
    try:
        while not args.count or received < args.count:
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
    except KeyboardInterrupt:
        pass
    finally:
        socket.close()
        context.term()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

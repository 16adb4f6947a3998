"""The ZeroMQ publisher on real sockets: subscribers are counted one by one, also on the same topic."""

from __future__ import annotations

import zmq

from pipelines.publishers.config import ZmqPublisherConfig
from pipelines.publishers.zmq import ZmqPublisher
from tests.conftest import free_port


def subscriber(context: zmq.Context, endpoint: str, topic: str = "") -> zmq.Socket:
    socket = context.socket(zmq.SUB)
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt_string(zmq.SUBSCRIBE, topic)
    socket.connect(endpoint)
    return socket


def test_two_subscribers_of_every_topic_count_as_two() -> None:
    publisher = ZmqPublisher(ZmqPublisherConfig(endpoint=f"tcp://127.0.0.1:{free_port()}"))
    context = zmq.Context()
    try:
        first = subscriber(context, publisher.endpoint)
        assert publisher.wait_for_subscribers(1, timeout_s=10) == 1
        second = subscriber(context, publisher.endpoint)
        assert publisher.wait_for_subscribers(2, timeout_s=10) == 2
        third = subscriber(context, publisher.endpoint, "label/cam1/")
        assert publisher.wait_for_subscribers(3, timeout_s=10) == 3
        second.close()
        assert publisher.wait_for_subscribers(4, timeout_s=1.0) == 2, "one left while it waited"
        first.close()
        third.close()
    finally:
        context.destroy(linger=0)
        publisher.close()

"""A real RTSP server for the tests, on Debian's gst-rtsp-server (run with the system python3, which has
the GObject bindings: ``/usr/bin/python3 tests/rtsp_server.py PORT FRAMES_DIR``).

It serves ``rtsp://127.0.0.1:PORT/cam``: the JPEG files of FRAMES_DIR (``%05d.jpg``) in a loop at 25
frames/s, as motion JPEG over RTP. It prints ``ready`` once it listens, and runs until killed.
"""

import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402 - after the version requirements

PIPELINE = (
    "( multifilesrc location={frames}/%05d.jpg index=0 loop=true caps=image/jpeg,framerate=25/1 "
    "! jpegdec ! videoconvert ! jpegenc quality=90 ! rtpjpegpay name=pay0 pt=26 )"
)


def main() -> None:
    port, frames = sys.argv[1], sys.argv[2]
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(port)
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(PIPELINE.format(frames=frames))
    factory.set_shared(True)
    server.get_mount_points().add_factory("/cam", factory)
    if server.attach(None) == 0:
        sys.exit(f"cannot listen on 127.0.0.1:{port}")
    print("ready", flush=True)
    GLib.MainLoop().run()


if __name__ == "__main__":
    main()

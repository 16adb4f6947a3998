"""The ``nfnet-daemon`` command, also ``python -m daemon``.

SIGHUP is ignored before anything else is imported: its default action ends the process, and the imports
(NumPy, OpenCV, ONNX Runtime) take about a second before the daemon installs its own handler. While it runs,
the daemon's handler takes over (a reload); it restores this one when it is done, so that a SIGHUP during
the exit that follows is ignored too.
"""

import signal
import sys


def main() -> int:
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    from daemon.cli import main as cli_main  # only now: its imports are the heavy ones

    return cli_main()


if __name__ == "__main__":
    sys.exit(main())

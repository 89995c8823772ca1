"""The `ipo` executable's first code: Ctrl-C or SIGTERM while the command is still being
imported is one line and exit 130 (143), like everywhere else, not a traceback."""

import signal
import sys


def main() -> None:
    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        from ipo_cli.cli import app as cli
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        sys.stderr.write("error: interrupted\n")
        sys.exit(130)
    cli.main()

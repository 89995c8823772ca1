"""The error mapping of the CLI: every library error, usage error, signal or bug becomes one
line on stderr and an exit code (IpoError 2, usage 2, Ctrl-C 130, SIGTERM 143, bug 1)."""

from __future__ import annotations

import logging
import os
import sys

from ipo_cli.cli.console import err, fail, warn
from ipo_cli.errors import IpoError


def run(app) -> None:
    """Entry point: every error is one line on stderr and a non-zero exit code.

    Typer runs outside click's standalone mode so that usage errors (a bad flag, a value
    out of range) are one line too, like the library's IpoError (exit 2); --help and
    `ipo` alone print help as usual. SIGTERM is handled like Ctrl-C.
    """
    import signal

    debug = os.environ.get("IPO_DEBUG") == "1"
    # open_clip and huggingface_hub log through the root logger; we report errors ourselves.
    logging.basicConfig(level=logging.DEBUG if debug else logging.CRITICAL, format="%(name)s: %(message)s")
    from ipo_cli import cache

    cache.set_warner(warn)
    signal.signal(signal.SIGTERM, _terminated)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        code = app(standalone_mode=False)
    except IpoError as exc:
        if debug:
            raise
        fail(" ".join(str(exc).split("\n")))
        _exit(exc.exit_code)
    except KeyboardInterrupt:
        _interrupted()
    except Exception as exc:  # noqa: BLE001 - click's own errors, then bugs
        kinds = {cls.__name__ for cls in type(exc).__mro__}
        # Typer may vendor click (typer._click): its exceptions are known by their class names.
        if "NoArgsIsHelpError" in kinds:
            err.print(exc.format_message())
            _exit(2)
        if "UsageError" in kinds:
            ctx = getattr(exc, "ctx", None)
            command = ctx.command_path if ctx is not None else "ipo"
            fail(f"{' '.join(exc.format_message().split())} (see: {command} --help)")
            _exit(exc.exit_code)
        if "ClickException" in kinds:
            fail(" ".join(exc.format_message().split()))
            _exit(exc.exit_code)
        if "Abort" in kinds:
            _interrupted()
        if debug:
            raise
        fail(f"unexpected {type(exc).__name__}: {' '.join(str(exc).split())} "
             "(set IPO_DEBUG=1 for the traceback and report it)")
        _exit(1)
    if code == 130 and not SUMMARY_SHOWN[0]:
        _interrupted()  # typer turns a Ctrl-C into a silent exit code 130
    _exit(code if isinstance(code, int) else 0)


TERMINATED = [False]
SUMMARY_SHOWN = [False]  # optimize already said it stopped, with the resume hint


def _exit(code: int) -> None:
    """Leave with this code; a Ctrl-C that arrives while leaving changes nothing."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sys.exit(code)


def _interrupted() -> None:
    terminated = TERMINATED[0]
    fail("terminated" if terminated else "interrupted")
    _exit(143 if terminated else 130)


def _terminated(signum, frame) -> None:
    """SIGTERM: stop like Ctrl-C (what is scored is saved, the resume hint is printed)."""
    TERMINATED[0] = True
    raise KeyboardInterrupt

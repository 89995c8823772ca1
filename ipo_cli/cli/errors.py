"""The error mapping of the CLI: every library error, usage error, signal or bug becomes one
line on stderr and an exit code (IpoError 2, usage 2, Ctrl-C 130, SIGTERM 143, bug 1).

Known exceptions are looked up in one table, type by type, as huggingface_hub's CLI does
(`CLI_ERROR_MAPPINGS` and `format_known_exception` in huggingface/huggingface_hub,
src/huggingface_hub/cli/_errors.py). The library's errors are `IpoError` subclasses
(ipo_cli/errors.py); each row says how that kind is worded on the terminal.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from ipo_cli.cli.console import err, fail, warn
from ipo_cli.errors import InvalidInput, IpoError, ModelError, NetworkError, NotFound


def _one_line(exc: BaseException) -> str:
    return " ".join(_text_of(exc).split("\n"))


def _text_of(exc: BaseException) -> str:
    """str(exc), which may itself fail for an exception carrying a hostile value (a list
    nested 100,000 deep, an int over Python's 4,300-digit limit): then its type alone."""
    try:
        return str(exc)
    except Exception:  # noqa: BLE001 - the message of a message that cannot be shown
        return f"({type(exc).__name__} with a message that cannot be shown)"


# The most specific type first; the first row an exception is an instance of wins. Every
# kind is worded as the library wrote it (its message, then "; " and its hint), so the kinds
# differ for programs that catch them, not in what a user reads.
CLI_ERROR_MAPPINGS: dict[type[BaseException], Callable[[Any], str]] = {
    InvalidInput: _one_line,
    NotFound: _one_line,
    NetworkError: _one_line,
    ModelError: _one_line,
    IpoError: _one_line,
}


def format_known_exception(exc: BaseException) -> tuple[str, int] | None:
    """The one-line message and exit code of a library error, or None for anything else."""
    for kind, formatter in CLI_ERROR_MAPPINGS.items():
        if isinstance(exc, kind):
            return formatter(exc), getattr(exc, "exit_code", 2)
    return None


def _format_click_exception(exc: BaseException) -> tuple[str | None, int] | None:
    """Click's own errors, known by class name: Typer may vendor click (typer._click).

    (None, code) means: print click's message as it is (the help of `ipo models`)."""
    kinds = {cls.__name__ for cls in type(exc).__mro__}
    message = getattr(exc, "format_message", lambda: str(exc))
    if "NoArgsIsHelpError" in kinds:
        err.print(message())
        return None, 2
    if "UsageError" in kinds:
        ctx = getattr(exc, "ctx", None)
        command = ctx.command_path if ctx is not None else "ipo"
        return f"{' '.join(message().split())} (see: {command} --help)", getattr(exc, "exit_code", 2)
    if "ClickException" in kinds:
        return " ".join(message().split()), getattr(exc, "exit_code", 1)
    return None


def run(app: Callable[..., Any]) -> None:
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
    cache.keep_third_party_caches_inside(cache.cache_root())
    from ipo_cli.gates.text import tolerant_streams

    tolerant_streams()  # a terminal that cannot show a character gets "?" instead of a crash
    signal.signal(signal.SIGTERM, _terminated)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        code = app(standalone_mode=False, prog_name="ipo")
        sys.stdout.flush()  # a reader that went away is found here, not at the interpreter's exit
    except BrokenPipeError:
        _pipe_closed()
    except SystemExit as exc:
        # Typer's own main turns EPIPE into a silent sys.exit(1) (typer/core.py `_main`:
        # `except OSError as e: if e.errno == errno.EPIPE: ... sys.exit(1)`); said here instead
        if isinstance(exc.__context__, BrokenPipeError):
            _pipe_closed()
        raise
    except IpoError as exc:
        if debug:
            raise
        message, status = format_known_exception(exc) or (_one_line(exc), 2)
        fail(message)
        _exit(status)
    except KeyboardInterrupt:
        _interrupted()
    except Exception as exc:  # noqa: BLE001 - click's own errors, then bugs
        known = _format_click_exception(exc)
        if known is not None:
            click_message, click_status = known
            if click_message is not None:
                fail(click_message)
            _exit(click_status)
        if "Abort" in {cls.__name__ for cls in type(exc).__mro__}:
            _interrupted()
        if debug:
            raise
        if isinstance(exc, OSError):  # said by what it is (no space, name too long, ...) with the path
            from ipo_cli.gates.paths import os_error

            fail(_one_line(os_error(exc, "a file operation failed")))
            _exit(2)
        fail(f"unexpected {type(exc).__name__}: {' '.join(_text_of(exc).split())[:500]} "
             "(set IPO_DEBUG=1 for the traceback and report it)")
        _exit(1)
    if code == 130 and not SUMMARY_SHOWN[0]:
        _interrupted()  # typer turns a Ctrl-C into a silent exit code 130
    _exit(code if isinstance(code, int) else 0)


TERMINATED = [False]
SUMMARY_SHOWN = [False]  # optimize already said it stopped, with the resume hint


def _exit(code: int) -> NoReturn:
    """Leave with this code; a Ctrl-C that arrives while leaving changes nothing."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sys.exit(code)


def _pipe_closed() -> NoReturn:
    """stdout's reader stopped reading (`ipo eval --json | head -c 5`): one line and exit 141,
    the status a shell shows for a program ended by SIGPIPE (128 + 13), as `git log | head`
    ends. stdout is pointed at /dev/null first, as Python's docs advise (signal module, "Note
    on SIGPIPE": https://docs.python.org/3/library/signal.html#note-on-sigpipe), so that the
    interpreter's last flush cannot fail once more."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    try:
        fail("the output's reader stopped reading (a closed pipe); the rest of the output was not written")
    except OSError:
        pass  # stderr is gone too: the exit code says it
    _exit(141)


def _interrupted() -> NoReturn:
    terminated = TERMINATED[0]
    fail("terminated" if terminated else "interrupted")
    _exit(143 if terminated else 130)


def _terminated(signum: int, frame: object) -> None:
    """SIGTERM: stop like Ctrl-C (what is scored is saved, the resume hint is printed)."""
    TERMINATED[0] = True
    raise KeyboardInterrupt

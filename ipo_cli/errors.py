"""Errors a user can fix. The CLI prints them as one line and exits with code 2.

The library raises the subclass that says what kind of problem it is, so a caller (the
CLI's `cli/errors.py`, or a program using ipo as a library) can tell a bad argument from a
missing file, a failed download or a model that cannot run, without parsing the message.
Every subclass is still an `IpoError`: `except IpoError` catches them all, the exit code
is 2 for all of them and the message is the same as before the split.
"""

from __future__ import annotations


class IpoError(Exception):
    """A problem with the user's input or environment, worded for the user.

    `hint` says how to fix it; the CLI appends it to the message.
    """

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}; {self.hint}" if self.hint else self.message


class InvalidInput(IpoError):
    """A value the user passed (a flag, a setting, a file's content) is not usable as it is."""


class NotFound(IpoError):
    """Something named does not exist: a file, a folder, a model, a dataset, a run."""


class NetworkError(IpoError):
    """A server (the model hub, an OpenAI-compatible or Ollama server) failed or answered badly."""


class ModelError(IpoError):
    """A model cannot be loaded or run: a broken GGUF, a missing backend, too little memory."""


def close_matches(name: str, choices: list[str], n: int = 3) -> str:
    """A ' (did you mean a, b?)' suffix, or '' when nothing is close."""
    import difflib

    lowered = {c.lower(): c for c in choices}
    found = difflib.get_close_matches(name.lower(), list(lowered), n=n, cutoff=0.6)
    return f" (did you mean {', '.join(lowered[f] for f in found)}?)" if found else ""


def shown(value: object, limit: int = 80) -> str:
    """A value read from outside, as a message shows it: its repr, nested containers cut at
    a few levels and items, cut to `limit` characters, and never an error itself.

    A message is formatted after something went wrong, from values a hostile file chose: a
    list nested 100,000 deep makes `str()` raise RecursionError, and an int of 5,000 digits
    makes it raise ValueError (Python's integer-to-text limit, `sys.get_int_max_str_digits`,
    4,300 digits by default: https://docs.python.org/3/library/stdtypes.html#int-max-str-digits).
    `reprlib` (stdlib) walks containers only to `maxlevel` deep; its ints are shown here by
    size once they are too long to print."""
    import reprlib

    class _Bounded(reprlib.Repr):
        def repr_int(self, x: int, level: int) -> str:
            if x.bit_length() > 128:  # about 39 digits and more: said by size
                return f"<an integer of about {int(x.bit_length() * 0.30103) + 1} digits>"
            return repr(x)

    bounded = _Bounded()
    bounded.maxlevel, bounded.maxstring, bounded.maxother = 4, limit, limit
    try:
        text = value if isinstance(value, str) else bounded.repr(value)
        text = repr(text[:limit]) + ("..." if len(text) > limit else "") if isinstance(value, str) else text
    except Exception:  # noqa: BLE001 - a value that cannot even be shown is named by its type
        return f"<a {type(value).__name__} that cannot be shown>"
    return text if len(text) <= limit + 5 else text[:limit] + "..."

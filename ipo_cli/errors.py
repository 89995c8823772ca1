"""Errors a user can fix. The CLI prints them as one line and exits with code 2."""

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


def close_matches(name: str, choices: list[str], n: int = 3) -> str:
    """A ' (did you mean a, b?)' suffix, or '' when nothing is close."""
    import difflib

    lowered = {c.lower(): c for c in choices}
    found = difflib.get_close_matches(name.lower(), list(lowered), n=n, cutoff=0.6)
    return f" (did you mean {', '.join(lowered[f] for f in found)}?)" if found else ""

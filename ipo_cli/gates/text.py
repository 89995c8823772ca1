"""Text out: what outside text (a model's answer, a caption, a file name, a server's
message) may look like once it reaches a terminal, an HTML report or a spreadsheet.

- `terminal_safe`: C0 and C1 control characters (ESC, BEL, CR, ...) and the bidi
  overrides and isolates are shown escaped (`\\x1b`, `\\u202e`), so that no answer can set
  the terminal's title, move the cursor, hide text or reorder a line.
- `html_text`: HTML escaping for every report.
- `csv_cell`: a cell that a spreadsheet would read as a formula gets a leading `'`.
- `tolerant_streams`: stdout and stderr degrade (`errors="replace"`) where the terminal's
  encoding cannot show a character, instead of failing after the work is done.
"""

from __future__ import annotations

import html
import re
import sys

# Unicode's explicit directional formatting characters (UAX #9, section 2): the embeddings
# and overrides U+202A..U+202E and the isolates U+2066..U+2069. The marks U+200E/U+200F and
# U+061C are shown too: they are invisible and reorder neighbouring text.
BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c")
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\u200e\u200f\u061c]")
_UNSAFE_WITH_NEWLINES = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\u200e\u200f\u061c]")


# A model's answer is at most --max-tokens tokens (a few hundred characters); a server that
# sends more (20 MB were seen) is cut here, before validation, the cache and history.jsonl.
MAX_ANSWER_CHARS = 16_384


def _escape(match: re.Match) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def terminal_safe(text: object, newlines: bool = True) -> str:
    """`text` with every control character escaped but tab and (when `newlines`) line
    feed; a message meant as one line passes `newlines=False` to escape those too."""
    pattern = _UNSAFE if newlines else _UNSAFE_WITH_NEWLINES
    return pattern.sub(_escape, str(text))


def html_text(text: object) -> str:
    """HTML-escaped text (quotes included, so it is safe in attribute values too), with
    the same control characters escaped as on the terminal."""
    return html.escape(terminal_safe(text), quote=True)


# OWASP, "CSV Injection" (https://owasp.org/www-community/attacks/CSV_Injection): fields
# starting with = + - @ tab or carriage return are read as formulas; prepend a single quote.
# OWASP ASVS 4.0 requirement 1.2.10 adds the NUL character. (The csv module does the other
# half of OWASP's advice: RFC 4180 quoting with doubled quotes.)
CSV_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "\0")


def csv_cell(value: object) -> object:
    """A cell safe to open in a spreadsheet: strings that would start a formula get a
    leading `'`; numbers pass as they are (a negative number is not a formula)."""
    if isinstance(value, str) and value.startswith(CSV_FORMULA_STARTS):
        return "'" + value
    return value


def tolerant_streams() -> None:
    """Let stdout and stderr replace what their encoding cannot show (PYTHONIOENCODING=ascii,
    a Latin-1 terminal) instead of raising UnicodeEncodeError after the work is done."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is None:
            continue
        try:
            if stream.errors == "strict":
                reconfigure(errors="replace")
        except (ValueError, OSError, AttributeError):  # a closed or foreign stream
            pass


def terminal_console(**kwargs):
    """A rich Console whose every printed character passes `terminal_safe`, whatever the
    renderable (a string, a Text, a table cell, a progress bar's field); rich's own control
    sequences (styles, cursor moves) are untouched. Rich strips only BEL, BS, VT, FF and CR
    from text (rich/control.py, `strip_control_codes`), so ESC and the bidi controls would
    otherwise reach the terminal."""
    from rich.console import Console
    from rich.segment import Segment

    class TerminalSafeConsole(Console):
        def render_str(self, text, **kwargs):  # strings are escaped before rich strips CR and BEL
            return super().render_str(terminal_safe(text), **kwargs)

        def _render_buffer(self, buffer):  # rich.console.Console._render_buffer (rich 13-15)
            return super()._render_buffer(
                segment if segment.control else Segment(terminal_safe(segment.text), segment.style)
                for segment in buffer)

    return TerminalSafeConsole(**kwargs)

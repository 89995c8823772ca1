"""Prompt templates: where the class name goes, and the exact text ipo scores.

Two forms, told apart by whether `<CLASS>` appears:

- ipo's own form (the loop's, the LLM's): one `<CLASS>`; everything else is literal text,
  braces included ("a {curly} <CLASS>" is scored with "{curly}" as written).
- the str.format form of the field's files: one `{}` (CoOp: `template.format(classname)`)
  or `{c}` (CLIP_benchmark: `template.format(c=classname)`,
  LAION-AI/CLIP_benchmark clip_benchmark/metrics/zeroshot_classification.py,
  zero_shot_classifier). It is read with str.format's own parser
  (`string.Formatter().parse`), so ipo scores exactly what those tools would: `{{` and `}}`
  are one literal brace each. A field that is not the bare placeholder is refused: a
  format spec or conversion (`{c!r:>99999999}` pads every prompt to 100 MB), an index or
  attribute (`{c[0]}`, `{c.__class__.__mro__}` reads attributes through the template), a
  positional or other name (`{0}` raises IndexError there, `{x}` KeyError), and a lone
  brace (ValueError there).

Export (`str_format`) writes the text ipo scored as a CLIP_benchmark template: exactly one
`{c}` and every other brace doubled, so that `exported.format(c=name)` is `fill(t, name)`
for every template and class name (tests/test_hostile_typed.py checks it with Hypothesis).
"""

from __future__ import annotations

import functools
import re
import string

from ipo_cli.errors import IpoError

CLASS_TOKEN = "<CLASS>"
PLACEHOLDERS = (CLASS_TOKEN, "{c}", "{}")
_PLACEHOLDER_RE = re.compile(r"<CLASS>|\{c\}|\{\}")
_HINT = "write exactly one of {}, {c} or <CLASS> where the class name goes"


def placeholder_count(template: str) -> int:
    """How many placeholder-looking spans the raw text holds (a CuPL sentence has none)."""
    return len(_PLACEHOLDER_RE.findall(template))


def looks_like_template(text: str) -> bool:
    """Whether `text` holds a placeholder, or anything str.format would read as a field (or
    fail on): a finished CuPL sentence does neither, so `{"cars": ["a {0} photo"]}` is a
    template list to refuse, not one class's sentences."""
    if placeholder_count(text):
        return True
    try:
        return any(name is not None for _, name, _, _ in string.Formatter().parse(text))
    except ValueError:
        return True


def _field_text(name: str, spec: str | None, conversion: str | None) -> str:
    return "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"


def _why(name: str, spec: str | None, conversion: str | None) -> str:
    if name in ("", "c"):
        return "a conversion or format spec would change or pad the class name"
    if "[" in name or "." in name:
        return "an index or attribute would be read from the class name"
    if name.isdigit():
        return f"str.format(c=...) has no positional argument {name} (IndexError)"
    return f"str.format(c=...) has no value named {name[:40]!r} (KeyError)"


@functools.lru_cache(maxsize=8192)
def _parse(template: str) -> tuple[tuple[str, str] | None, str | None]:
    """((text before the class, text after it), None), or (None, what is wrong)."""
    if CLASS_TOKEN in template:
        n = placeholder_count(template)
        if n != 1:
            return None, f"{n} class placeholders"
        before, _, after = template.partition(CLASS_TOKEN)
        return (before, after), None
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:  # a lone "{" or "}": str.format raises the same
        return None, f"a lone brace ({exc}); a literal brace is written {{{{ or }}}}"
    literal: list[str] = []
    split: int | None = None
    fields = 0
    for text, name, spec, conversion in parts:
        literal.append(text)
        if name is None:
            continue
        if name not in ("", "c") or spec or conversion:
            field = _field_text(name, spec, conversion)
            return None, f"the format field {field[:60]!r} ({_why(name, spec, conversion)})"
        fields += 1
        split = len(literal)
    if fields != 1 or split is None:
        return None, "no class placeholder" if fields == 0 else f"{fields} class placeholders"
    return ("".join(literal[:split]), "".join(literal[split:])), None


def check_template(template: str, where: str = "") -> str:
    """The template itself, or a one-line error saying what is wrong with it."""
    parts, problem = _parse(template)
    if parts is None:
        raise IpoError(f"template {template[:200]!r}{where} has {problem}", _HINT)
    return template


def _split(template: str) -> tuple[str, str]:
    """Text before and after the class; a template never checked (the LLM's candidates are
    checked by their own rules) falls back to its first placeholder-looking span, all else
    literal, so that `fill` never raises and export still agrees with it."""
    parts, _ = _parse(template)
    if parts is not None:
        return parts
    if CLASS_TOKEN in template:
        before, _, after = template.partition(CLASS_TOKEN)
        return before, after
    match = _PLACEHOLDER_RE.search(template)
    if match is None:
        return template, ""
    return template[:match.start()], template[match.end():]


def fill(template: str, classname: str) -> str:
    """The text ipo scores for one class."""
    before, after = _split(template)
    return before + classname + after


def _escape(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


def str_format(template: str) -> str:
    """The template for tools that call `template.format(c=classname)` (CLIP_benchmark):
    one `{c}`, every other brace doubled, so that it gives exactly `fill(template, c)`."""
    before, after = _split(template)
    return _escape(before) + "{c}" + _escape(after)


__all__ = ["CLASS_TOKEN", "PLACEHOLDERS", "check_template", "fill", "looks_like_template", "placeholder_count",
           "str_format"]

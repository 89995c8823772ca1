"""docs/cli.md is the real CLI's help, and every command and option has help text
(as sqlite-utils' tests/test_docs.py and simonw/llm's generated docs/help.md)."""

from pathlib import Path

import typer.main

from ipo_cli.cli import docs
from ipo_cli.cli.app import app

DOC = Path(__file__).resolve().parent.parent / "docs" / "cli.md"


def commands():
    root = typer.main.get_command(app)
    ctx = root.context_class(root, info_name="ipo")
    for path, command, _ in docs._walk(root, ctx, []):
        yield " ".join(["ipo", *path]), command


def test_the_cli_reference_is_current():
    assert DOC.read_text(encoding="utf-8") == docs.reference(), \
        "docs/cli.md is out of date: run python -m ipo_cli.cli.docs > docs/cli.md"


def test_every_command_and_option_has_help_and_is_in_the_reference():
    text = DOC.read_text(encoding="utf-8")
    names = list(commands())
    assert {"ipo optimize", "ipo eval", "ipo bench", "ipo models show", "ipo cache clear"} <= {n for n, _ in names}
    for name, command in names:
        assert f"\n## {name}\n" in text or f"\n### {name}\n" in text or f"\n#### {name}\n" in text, name
        assert (command.help or "").strip(), f"{name} has no help text"
        for param in command.params:
            if param.param_type_name == "option":
                assert (param.help or "").strip(), f"{name} {param.opts[0]} has no help text"
                assert all(opt in text for opt in param.opts), (name, param.opts)

"""`--help` for every command: plain text (click's formatter), options in named panels.

Typer's rich help draws each panel as a rich table in a box: importing `typer.rich_utils`
(rich's markdown renderer and markdown-it come with it) and laying out the boxes cost about
a third of `ipo optimize --help`. ipo keeps Typer's `rich_help_panel=` on every option (the
panels are declared in cli/options.py) but writes them with click's own formatter, one
section per panel, as plain click help does (simonw/llm's docs/help.md shows that form), so
`ipo CMD --help` needs neither rich's layout nor pydantic.
"""

from __future__ import annotations

from typing import Any

from typer.core import TyperCommand, TyperGroup

DEFAULT_PANEL = "Options"


def _help_option_without_pydantic(option: Any) -> Any:
    """Typer (0.29) checks every option's value through a pydantic TypeAdapter built on first
    use, the help flag's included, even when it was not given; importing pydantic is a
    quarter of `ipo CMD --help`. The help flag is a plain bool flag, so it gets the plain
    check Typer uses for values it builds no adapter for (`PassThroughRuntimeParam`).
    Versions of Typer without that machinery are left alone."""
    if option is not None and getattr(option, "_runtime_param", False) is None:
        try:
            from typer._coercion import PassThroughRuntimeParam
            from typer.models import OptionInfo
        except ImportError:
            return option
        option._runtime_param = PassThroughRuntimeParam(annotation=bool, parameter_info=OptionInfo())
    return option


def _format_panels(command: Any, ctx: Any, formatter: Any) -> None:
    """Arguments first, then one section per panel in the order the options come, then the
    options without a panel (--help)."""
    arguments: list[tuple[str, str]] = []
    panels: dict[str, list[tuple[str, str]]] = {}
    for param in command.get_params(ctx):
        record = param.get_help_record(ctx)
        if record is None:
            continue
        if param.param_type_name == "argument":
            arguments.append(record)
        elif param.param_type_name == "option":
            panel = getattr(param, "rich_help_panel", None) or DEFAULT_PANEL
            panels.setdefault(panel, []).append(record)
    if arguments:
        with formatter.section("Arguments"):
            formatter.write_dl(arguments)
    for name in sorted(panels, key=lambda n: n == DEFAULT_PANEL):
        with formatter.section(name):
            formatter.write_dl(panels[name])


class PanelCommand(TyperCommand):
    """A command whose --help lists its options by panel."""

    def get_help_option(self, ctx: Any) -> Any:
        return _help_option_without_pydantic(super().get_help_option(ctx))

    def format_options(self, ctx: Any, formatter: Any) -> None:
        _format_panels(self, ctx, formatter)


class PanelGroup(TyperGroup):
    """A command group (ipo, ipo models, ipo cache) with the same help."""

    def get_help_option(self, ctx: Any) -> Any:
        return _help_option_without_pydantic(super().get_help_option(ctx))

    def format_options(self, ctx: Any, formatter: Any) -> None:
        _format_panels(self, ctx, formatter)
        self.format_commands(ctx, formatter)

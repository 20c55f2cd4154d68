"""How every schoolctl command group is made: plain help, and help (exit 0) when bare.

Typer's rich help shows flags as ``--json <bool>`` as if they took a value and keeps a
docstring's line breaks mid-phrase; click's plain help shows ``--json`` and rewraps
paragraphs to the terminal. A group run with no command prints its help on stdout and
exits 0: asking what there is is not a mistake. Help never breaks a line inside a
hyphenated word, so ``--max-fail`` stays whole.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import typer

# Typer 0.29 makes its commands of its own copy of click, not the installed one.
from typer import _click as click
from typer.core import TyperGroup

# click wraps help with textwrap, which breaks after any hyphen; a non-breaking hyphen
# (the same width) stands in for each while wrapping and is turned back before output.
_KEEP = "\u2011"


class _HelpFormatter(click.HelpFormatter):
    def write_text(self, text: str) -> None:
        super().write_text(text.replace("-", _KEEP))

    def write_dl(
        self, rows: Iterable[tuple[str, str]], col_max: int = 30, col_spacing: int = 2
    ) -> None:
        kept = [(term, text.replace("-", _KEEP)) for term, text in rows]
        super().write_dl(kept, col_max, col_spacing)

    def getvalue(self) -> str:
        return super().getvalue().replace(_KEEP, "-")


class _HelpContext(click.Context):
    formatter_class = _HelpFormatter


class HelpWhenBare(TyperGroup):
    """A group that answers no arguments with its help and exit 0 (click says 2)."""

    context_class = _HelpContext

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            # Typer makes the commands; their help is formatted like the group's.
            command.context_class = _HelpContext
        return command

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args and not ctx.resilient_parsing:
            click.echo(ctx.get_help(), color=ctx.color)
            ctx.exit(0)
        return super().parse_args(ctx, args)


def command_group(help: str, **options: Any) -> typer.Typer:
    """A schoolctl command group with plain help, printed when it is run bare."""
    return typer.Typer(
        help=help,
        cls=HelpWhenBare,
        rich_markup_mode=None,
        pretty_exceptions_enable=False,
        **options,
    )

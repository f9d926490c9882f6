"""The CLI's command group: one handler that turns every user error into one line and exit status 1, and
`--method` options checked against the method registry (imported only when a command needs it)."""

from __future__ import annotations

import traceback

import typer
from typer.core import TyperGroup

STATE = {"verbose": False}


def check_methods(value):
    """Callback of every `--method` option: each name must be registered (see `mvalign methods`)."""
    from .methods import get_method

    for name in [value] if isinstance(value, str) else value or ():
        get_method(name)  # ConfigError naming the choices
    return value


class Group(TyperGroup):
    """Runs a command; a user error (`MvalignError`: bad config, data, adapter, model, judge, run directory, unknown
    method; a disk that is full, read-only or not writable) becomes one red line `error: ...` and exit status 1,
    with the traceback under --verbose. Command-line
    syntax errors keep the usage message and exit status 2.

    The registered methods are listed in the help of every `--method` option when that command is resolved (so
    `mvalign --help` does not import the registry, which loads torch and peft)."""

    def resolve_command(self, ctx, args):
        name, cmd, rest = super().resolve_command(ctx, args)
        for param in getattr(cmd, "params", ()):
            if param.name == "method" and "One of:" not in (param.help or ""):
                from .methods import method_names

                param.help = f"{param.help} One of: {', '.join(method_names())}."
        return name, cmd, rest

    def invoke(self, ctx):
        from .errors import MvalignError, disk_failure

        try:
            return super().invoke(ctx)
        except MvalignError as e:
            self._fail(str(e))
        except Exception as e:  # a disk failure at a write not wrapped in `errors.writing`
            why = disk_failure(e)
            if why is None:
                raise
            where = getattr(e, "filename", None) or "a file"
            self._fail(f"{where}: cannot write ({why}); free space or fix permissions and re-run (finished work is kept)")

    @staticmethod
    def _fail(message: str):
        if STATE["verbose"]:
            traceback.print_exc()
        typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None

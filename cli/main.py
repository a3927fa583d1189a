"""The `flux` command: wires the command groups together and prints FluxErrors as one clear line.

Heavy imports stay inside the commands so `flux --help` answers at once.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import typer

from cli import bug, build, db, explain, incident, init, manage, queue, server, state, trace, why


class FluxTyper(typer.Typer):
    """A Typer app whose FluxErrors end the command with `error FXnnn: message` and exit code 1."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from flux.errors import FluxError

        try:
            return super().__call__(*args, **kwargs)
        except FluxError as error:
            from cli._output import print_error

            print_error(error)
            sys.exit(1)
        except Exception as error:
            if os.environ.get("FLUX_DEBUG"):
                raise
            from cli._output import print_error
            from flux.errors import InternalError

            print_error(
                InternalError(
                    f"unexpected {type(error).__name__}: {error}",
                    hint="run again with FLUX_DEBUG=1 for the traceback",
                )
            )
            sys.exit(1)


app = FluxTyper(
    name="flux",
    help="Flux: a backend runtime that records everything it runs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(db.app, name="db")
app.add_typer(trace.app, name="trace")
app.add_typer(state.app, name="state")
app.add_typer(incident.app, name="incident")
app.add_typer(bug.app, name="bug")
server.register(app)
explain.register(app)
build.register(app)
manage.register(app)
init.register(app)
why.register(app)
queue.register(app)
app.command("tail")(trace.tail)


@app.command()
def version() -> None:
    """Print the version of Flux."""
    from flux import __version__

    typer.echo(__version__)

"""What several commands take the same way: the project folder is `--project DIR`; a JSON input is
`--data JSON` (`-d`, as curl spells it) on every command; `--payload`, its old name on `flux queue push`,
still works and is left out of the help."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

import typer

from flux.errors import FluxError

ProjectDir = Annotated[Path, typer.Option("--project", help="The Flux project folder.", file_okay=False)]
OldDataName = Annotated[str | None, typer.Option("--payload", hidden=True, help="The old name of --data.")]


def json_data(data: str | None, payload: str | None, error: type[FluxError], example: str) -> Any:
    """The JSON given with --data (or --payload), parsed; null when neither was given. `error` is the
    command's own FluxError for a bad value, `example` a good one for the hint."""
    if data is not None and payload is not None:
        raise error("--data and --payload are one option (--payload is its old name)", hint="give it once")
    option, text = ("--payload", payload) if payload is not None else ("--data", data)
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise error(f"{option} is not JSON: {exc}", hint=f"e.g. --data '{example}'") from None


_PERIOD = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def period(text: str) -> timedelta | None:
    """A period as `--since` takes it (`15m`, `2h`, `1d`), or None for text that is not one."""
    found = _PERIOD.match(text)
    return timedelta(**{_UNITS[found.group(2)]: int(found.group(1))}) if found else None

"""Compiling on several threads from the first statement on (a queue worker's runners do) needs the Postgres
dialect loaded before any of them starts: sqlglot loads a dialect named by a string at its first use, and a
thread that came in while another was loading it got a half-made one, which wrote `$1` as `@1` (seen as
Postgres's "could not determine data type of parameter $1" on a worker's first inserts)."""

from __future__ import annotations

import subprocess
import sys


def test_the_dialect_is_loaded_with_the_compiler() -> None:
    probe = "import sys, flux.data.sql; print('sqlglot.dialects.postgres' in sys.modules)"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "True"


def test_parameters_are_written_for_postgres() -> None:
    from sqlglot import exp

    from flux.data.sql import DIALECT

    cast = exp.Cast(this=exp.Parameter(this=exp.Literal.number(1)), to=exp.DataType.build("bigint"))
    assert cast.sql(dialect=DIALECT) == "CAST($1 AS BIGINT)"

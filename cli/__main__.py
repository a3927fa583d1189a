"""`python -m cli` runs the `flux` command."""

from cli.main import app

app()

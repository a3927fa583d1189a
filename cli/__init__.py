"""The `flux` command line: one Typer module per command group."""

"""Flux: a backend runtime that records every execution in Postgres."""

__version__ = "0.1.0"

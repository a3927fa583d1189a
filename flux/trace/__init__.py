"""Traces: the record of each request (spans and the request row), and later the tools that read it."""

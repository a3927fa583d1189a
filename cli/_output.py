"""How the CLI shows results and errors: plain text when piped, colour on a terminal."""

from __future__ import annotations

import sys

from flux.errors import FluxError


def print_error(error: FluxError) -> None:
    """One line `error FXnnn: message`, then the hint on its own line when there is one, then every problem of
    a refused query (code, JSON pointer, message and hint), one a line."""
    color = sys.stderr.isatty()
    label = f"\033[31merror {error.code}\033[0m" if color else f"error {error.code}"
    print(f"{label}: {error.message}", file=sys.stderr)
    if error.hint:
        print(f"  hint: {error.hint}", file=sys.stderr)
    problems = getattr(error, "problems", None) or []
    if problems:
        print("  problems:", file=sys.stderr)
    for problem in problems:
        hint = f" ({problem['hint']})" if problem.get("hint") else ""
        print(f"    {problem['code']} {problem['pointer']}: {problem['message']}{hint}", file=sys.stderr)

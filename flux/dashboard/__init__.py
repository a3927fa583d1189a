"""The web dashboard under `/flux/`: server-rendered pages over the management API's own checks and
functions, one small script (the live request list and the trace waterfall) and one stylesheet, shipped in
the package."""

from __future__ import annotations

from flux.dashboard._routes import ByPort, redirect_to_port, register

__all__ = ["ByPort", "redirect_to_port", "register"]

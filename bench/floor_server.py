"""Serve the hand-written floor app (`bench/floor_app.py`) exactly as `flux server` serves Flux: the same
gunicorn application class (`flux.server.FluxApplication`, so the same worker class, workers, threads, CPU
pinning and timeouts, from the same FLUX_* settings), only its `load` builds the floor instead of Flux.

`python -m bench.floor_server PORT` with DATABASE_URL set; `BENCH_OTEL=<sink url>` instruments the app with
OpenTelemetry (Falcon and psycopg auto-instrumentation, the SDK's BatchSpanProcessor, an OTLP/HTTP exporter to
that URL), set up in each worker after the fork, as a gunicorn app must.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from flux.config import load_settings
from flux.server import FluxApplication


class FloorApplication(FluxApplication):
    """Flux's gunicorn application serving the floor app."""

    def load(self) -> Any:
        from bench import floor_app

        sink = os.environ.get("BENCH_OTEL")
        if sink:
            instrument(sink)
        return floor_app.create(self.dsn, self.settings.threads)


def instrument(sink: str) -> None:
    """OpenTelemetry as its docs set it up for a Falcon + psycopg app: a tracer provider with a
    BatchSpanProcessor and an OTLP/HTTP exporter, and both auto-instrumentations (before the app and the pool
    are made, so they wrap them)."""
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.falcon import FalconInstrumentor
    from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": "bench-floor"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=sink)))
    trace.set_tracer_provider(provider)
    FalconInstrumentor().instrument()
    PsycopgInstrumentor().instrument(enable_commenter=False)


def main(port: int) -> None:
    # the project folder's flux.toml and FLUX_*, as `flux server`; no dashboard (the bench's Flux has none)
    settings = load_settings(port=port, dashboard_port=0)
    FloorApplication(settings, os.environ["DATABASE_URL"], reload=False).run()


if __name__ == "__main__":
    main(int(sys.argv[1]))

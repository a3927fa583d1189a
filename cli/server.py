"""`flux server` (production) and `flux dev` (local, with reload): one gunicorn master on port 4000 (the
dashboard on 4001)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

ProjectDir = Annotated[Path, typer.Argument(help="The Flux project folder.", file_okay=False)]
Port = Annotated[int | None, typer.Option("--port", "-p", help="Port to listen on (default 4000).")]
Host = Annotated[str | None, typer.Option("--host", help="Address to bind (default 127.0.0.1).")]
Bind = Annotated[
    str | None, typer.Option("--bind", "-b", help="HOST:PORT to listen on, instead of --host and --port.")
]
DashboardPort = Annotated[
    int | None,
    typer.Option(
        "--dashboard-port", help="The web dashboard's own port (default: --port + 1; 0: no dashboard)."
    ),
]
NoDeploy = Annotated[
    bool, typer.Option("--no-deploy", help="Serve the active version as it is; do not deploy the folder.")
]
Workers = Annotated[
    int | None, typer.Option("--workers", "-w", help="Worker processes (default 2; 1 for dev).")
]


QueueWorkers = Annotated[
    int | None,
    typer.Option("--queue-workers", help="Jobs run at once by the queue process (default 2; 0: none)."),
]
OtlpEndpoint = Annotated[
    str | None,
    typer.Option("--otlp-endpoint", help="Send every finished trace to this OTLP/HTTP collector."),
]


def register(app: typer.Typer) -> None:
    app.command("server")(run_server)
    app.command("dev")(run_dev)


def run_server(
    project: ProjectDir = Path("."), port: Port = None, host: Host = None, bind: Bind = None,
    workers: Workers = None,
    no_deploy: NoDeploy = False, otlp_endpoint: OtlpEndpoint = None, queue_workers: QueueWorkers = None,
    dashboard_port: DashboardPort = None,
) -> None:  # fmt: skip
    """Deploy the project folder (unless it is the active version already) and serve it in production:
    DATABASE_URL, or the project's embedded Postgres."""
    _serve(project, port, host, bind, workers, reload=False, deploy_project=not no_deploy,
           otlp_endpoint=otlp_endpoint, queue_workers=queue_workers,
           dashboard_port=dashboard_port)  # fmt: skip


def run_dev(
    project: ProjectDir = Path("."), port: Port = None, host: Host = None, bind: Bind = None,
    workers: Workers = None, otlp_endpoint: OtlpEndpoint = None, queue_workers: QueueWorkers = None,
    dashboard_port: DashboardPort = None,
) -> None:  # fmt: skip
    """Serve the project locally: deploy it again on every save, and print each request; starts an embedded
    Postgres when DATABASE_URL is unset."""
    _serve(project, port, host, bind, workers or 1, reload=True, otlp_endpoint=otlp_endpoint,
           queue_workers=queue_workers, dashboard_port=dashboard_port)  # fmt: skip


def _serve(
    project: Path, port: int | None, host: str | None, bind: str | None, workers: int | None, *, reload: bool,
    deploy_project: bool = True, otlp_endpoint: str | None = None, queue_workers: int | None = None,
    dashboard_port: int | None = None,
) -> None:  # fmt: skip
    from flux.config import load_settings, split_bind
    from flux.server import serve

    logging.basicConfig(level=logging.INFO, format="flux: %(message)s")
    if bind is not None:
        host, port = split_bind(bind)
    settings = load_settings(project, port=port, host=host, workers=workers, otlp_endpoint=otlp_endpoint,
                             queue_workers=queue_workers, dashboard_port=dashboard_port)  # fmt: skip
    serve(settings, reload=reload, deploy_project=deploy_project)

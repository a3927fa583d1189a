"""Settings: one frozen object built from `flux.toml` (sections `[server]`, `[auth]`, `[deploy]`, `[dev]`, …)
and `FLUX_*` environment variables.

The environment wins over the file, so an operator can override a project's file without editing it.
`DATABASE_URL` (or `FLUX_DATABASE_URL`) selects an existing Postgres; without it Flux runs an embedded one.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, cast, get_args

from flux.errors import InvalidConfig

DEFAULT_PORT = 4000
# Run as root, the embedded Postgres runs as the postgres user; when that user cannot reach a project's
# `.flux`, the cluster lives in a folder of its own under here instead, and `.flux/pg` links to it.
DEFAULT_PG_FALLBACK_DIR = Path("/var/lib/flux")
PinMode = Literal["auto", "on", "off"]
DEFAULT_GATE_LAST = 200  # `[deploy] gate = true`: the latest this many requests of each changed function
DEFAULT_DEV_REPLAY_LAST = 20  # `flux dev` replays this many requests of the changed functions after a save
_GATE_KEYS = {"last", "since", "db"}


@dataclass(frozen=True)
class Settings:
    """Everything a Flux process needs to start; built once by `load_settings`."""

    project_dir: Path = field(default_factory=Path.cwd)
    database_url: str | None = None
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    # the dashboard's own port (an origin of its own, on the same host): None is `port` + 1, 0 serves none
    dashboard_port: int | None = None
    workers: int = 2
    worker_class: str = "sync"  # or "gthread", `threads` per worker (docs/performance-log.md compares them)
    threads: int = 1
    # each worker on one CPU: "on", "off", or "auto" (sync workers, one per CPU; flux/cpus.py)
    pin_workers: PinMode = "auto"
    migrations_dir: str = "migrations"
    pg_bindir: Path | None = None
    # where the cluster goes when the Postgres user cannot reach `.flux/pg`; None ("off") refuses instead
    pg_fallback_dir: Path | None = DEFAULT_PG_FALLBACK_DIR
    # [auth]: JWT verification (HS256 with a shared secret, or RS256/ES256 keys from a JWKS URL)
    jwt_secret: str | None = None
    jwks_url: str | None = None
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    # hosts (names, addresses or networks) functions may fetch from although they are private
    fetch_allow: tuple[str, ...] = ()
    # an OTLP/HTTP collector's traces URL: every finished trace is sent there (flux/trace/forward.py)
    otlp_endpoint: str | None = None
    # [[routes]]: method, path, function, auth, rate_per_s, burst, cors, max_body_bytes (deployed at start)
    routes: tuple[dict[str, Any], ...] = ()
    # [[cron]]: name, schedule, function, timezone, payload, queue, enabled (deployed at start)
    cron: tuple[dict[str, Any], ...] = ()
    # queue worker threads `flux server` and `flux dev` run (in a process of their own); 0 runs none
    queue_workers: int = 2
    # the project's name (`name` at the top of flux.toml; the folder's name without it)
    name: str = ""
    # [functions.<name>]: timeout_ms, memory_mb, fuel for one function
    function_limits: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # [deploy] gate = {last = 200} (or {since = "1h"}, with db = "as-of"): `flux deploy` runs the deploy gate
    # (docs/replay.md) unless --no-gate; None: only with --gate
    deploy_gate: Mapping[str, Any] | None = None
    # the biggest `flux deploy` upload the management API reads (bytes; over it: 413 FX003 before reading)
    max_deploy_bytes: int = 256 * 1024 * 1024
    # what one JSON query may answer, embedded rows included (over it: FX114 naming the limit)
    max_answer_rows: int = 100_000
    max_answer_bytes: int = 16 * 1024 * 1024
    # the sync worker answers 408 to a connection whose request head has not arrived this long after it was
    # accepted, or whose body (up to 1 MiB) has not arrived this long after its head (seconds)
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    # [dev] replay_last: after each save `flux dev` replays this many recent requests of the changed functions
    # and prints one line (0: off)
    dev_replay_last: int = DEFAULT_DEV_REPLAY_LAST

    @property
    def dashboard_listen_port(self) -> int:
        """The port the dashboard answers on (0: none)."""
        if self.dashboard_port is None:
            return self.port + 1 if self.port < 65535 else 0
        return self.dashboard_port

    @property
    def data_dir(self) -> Path:
        """Where the embedded Postgres keeps its cluster."""
        return self.project_dir / ".flux" / "pg"

    @property
    def project_migrations(self) -> Path:
        return self.project_dir / self.migrations_dir


_ENV_NAMES = {
    "database_url": ("FLUX_DATABASE_URL", "DATABASE_URL"),
    "host": ("FLUX_HOST",),
    "port": ("FLUX_PORT",),
    "dashboard_port": ("FLUX_DASHBOARD_PORT",),
    "workers": ("FLUX_WORKERS",),
    "worker_class": ("FLUX_WORKER_CLASS",),
    "threads": ("FLUX_THREADS",),
    "pin_workers": ("FLUX_PIN_WORKERS",),
    "migrations_dir": ("FLUX_MIGRATIONS_DIR",),
    "pg_bindir": ("FLUX_PG_BINDIR",),
    "pg_fallback_dir": ("FLUX_PG_FALLBACK_DIR",),
    "fetch_allow": ("FLUX_FETCH_ALLOW",),
    "otlp_endpoint": ("FLUX_OTLP_ENDPOINT",),
    "queue_workers": ("FLUX_QUEUE_WORKERS",),
    "max_deploy_bytes": ("FLUX_MAX_DEPLOY_BYTES",),
    "max_answer_rows": ("FLUX_MAX_ANSWER_ROWS",),
    "max_answer_bytes": ("FLUX_MAX_ANSWER_BYTES",),
    "header_timeout_s": ("FLUX_HEADER_TIMEOUT_S",),
    "body_timeout_s": ("FLUX_BODY_TIMEOUT_S",),
    "jwt_secret": ("FLUX_JWT_SECRET",),
    "jwks_url": ("FLUX_JWKS_URL",),
    "jwt_audience": ("FLUX_JWT_AUDIENCE",),
    "jwt_issuer": ("FLUX_JWT_ISSUER",),
}
_AUTH_KEYS = {
    "secret": "jwt_secret",
    "jwks_url": "jwks_url",
    "audience": "jwt_audience",
    "issuer": "jwt_issuer",
}


def load_settings(
    project_dir: Path | None = None, env: Mapping[str, str] | None = None, **overrides: Any
) -> Settings:
    """Read `flux.toml` in the project folder, then the environment, then explicit overrides (CLI flags)."""
    project = (project_dir or Path.cwd()).resolve()
    environ = os.environ if env is None else env
    values: dict[str, Any] = {}
    values.update(_read_toml(project / "flux.toml"))
    for name, env_names in _ENV_NAMES.items():
        for env_name in env_names:
            if environ.get(env_name):
                values[name] = environ[env_name]
                break
    values.update({key: value for key, value in overrides.items() if value is not None})
    return _build(project, values)


def _read_toml(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        document = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise InvalidConfig(f"{path} is not valid TOML: {exc}", hint="fix the file and start again") from exc
    server, auth = document.get("server", {}), document.get("auth", {})
    if not isinstance(server, dict) or not isinstance(auth, dict):
        raise InvalidConfig(f"{path}: [server] and [auth] must be tables", hint="write them as sections")
    unknown = sorted(set(auth) - set(_AUTH_KEYS))
    if unknown:
        raise InvalidConfig(
            f"{path}: unknown [auth] setting {unknown[0]!r}", hint=f"known: {', '.join(_AUTH_KEYS)}"
        )
    routes, cron = document.get("routes", []), document.get("cron", [])
    if not isinstance(routes, list) or not all(isinstance(route, dict) for route in routes):
        raise InvalidConfig(f"{path}: routes must be [[routes]] tables", hint="see docs/cli.md")
    if not isinstance(cron, list) or not all(isinstance(entry, dict) for entry in cron):
        raise InvalidConfig(f"{path}: cron must be [[cron]] tables", hint="see docs/queue.md")
    functions = document.get("functions", {})
    if not isinstance(functions, dict) or not all(isinstance(limits, dict) for limits in functions.values()):
        raise InvalidConfig(f"{path}: [functions.<name>] must be tables", hint="e.g. [functions.hello]")
    sections = {"server", "auth", "routes", "cron", "functions", "name", "deploy", "dev"}
    unknown_sections = sorted(set(document) - sections)
    if unknown_sections:
        raise InvalidConfig(
            f"{path}: unknown section {unknown_sections[0]!r}",
            hint="flux.toml has name, [server], [auth], [deploy], [dev], [[routes]], [[cron]] and"
            " [functions.<name>]",
        )
    values = {
        **server, **{_AUTH_KEYS[key]: value for key, value in auth.items()}, "routes": tuple(routes),
        "cron": tuple(cron),
    }  # fmt: skip
    if functions:
        values["function_limits"] = functions
    if "name" in document:
        values["name"] = str(document["name"])
    values.update(_deploy_and_dev(path, document.get("deploy", {}), document.get("dev", {})))
    return values


def _deploy_and_dev(path: Path, deploy: Any, dev: Any) -> dict[str, Any]:
    """`[deploy] gate` (true, false, or a table of last, since and db) and `[dev] replay_last`."""
    if not isinstance(deploy, dict) or not isinstance(dev, dict):
        raise InvalidConfig(f"{path}: [deploy] and [dev] must be tables", hint="write them as sections")
    for section, given, known in (("deploy", deploy, {"gate"}), ("dev", dev, {"replay_last"})):
        unknown = sorted(set(given) - known)
        if unknown:
            raise InvalidConfig(
                f"{path}: unknown [{section}] setting {unknown[0]!r}",
                hint=f"known: {', '.join(sorted(known))}",
            )
    values: dict[str, Any] = {}
    gate = deploy.get("gate", False)
    if gate is True:
        gate = {"last": DEFAULT_GATE_LAST}
    if gate is not False:
        if not isinstance(gate, dict) or set(gate) - _GATE_KEYS:
            raise InvalidConfig(
                f"{path}: [deploy] gate is true, false or a table of last, since and db",
                hint="e.g. gate = {last = 200}",
            )
        last, since, mode = gate.get("last"), gate.get("since"), gate.get("db", "recorded")
        if last is not None and (
            isinstance(last, bool) or not isinstance(last, int) or not 1 <= last <= 10_000
        ):
            raise InvalidConfig(
                f"{path}: [deploy] gate's last is 1 to 10000", hint="e.g. gate = {last = 200}"
            )
        if since is not None and not isinstance(since, str):
            raise InvalidConfig(
                f"{path}: [deploy] gate's since is a period", hint='e.g. gate = {since = "1h"}'
            )
        if mode not in ("recorded", "as-of"):
            raise InvalidConfig(f"{path}: [deploy] gate's db is recorded or as-of", hint='e.g. db = "as-of"')
        if last is not None and since is not None:
            raise InvalidConfig(f"{path}: [deploy] gate takes last or since, not both", hint="keep one")
        values["deploy_gate"] = {k: v for k, v in {"last": last, "since": since, "db": mode}.items()
                                 if v is not None} or {"last": DEFAULT_GATE_LAST}  # fmt: skip
    if "replay_last" in dev:
        replay_last = dev["replay_last"]
        if isinstance(replay_last, bool) or not isinstance(replay_last, int) or not 0 <= replay_last <= 1000:
            raise InvalidConfig(
                f"{path}: [dev] replay_last is 0 to 1000", hint="e.g. replay_last = 20, 0: off"
            )
        values["dev_replay_last"] = replay_last
    return values


def _build(project: Path, values: dict[str, Any]) -> Settings:
    known = {f.name for f in fields(Settings)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise InvalidConfig(
            f"unknown setting {unknown[0]!r}",
            hint=f"known settings: {', '.join(sorted(known - {'project_dir'}))}",
        )
    try:
        port = int(values.get("port", DEFAULT_PORT))
        workers = int(values.get("workers", 2))
        threads = int(values.get("threads", 1))
        queue_workers = int(values.get("queue_workers", 2))
    except (TypeError, ValueError) as exc:
        raise InvalidConfig(f"port and workers must be integers: {exc}", hint="e.g. port = 4000") from exc
    if not 0 <= queue_workers <= 256:
        raise InvalidConfig(
            f"queue_workers ({queue_workers}) must be 0 to 256", hint="e.g. queue_workers = 4"
        )
    if not 0 < port < 65536:
        raise InvalidConfig(f"port {port} is outside 1-65535", hint="pick a free port such as 4000")
    dashboard_port = _dashboard_port(values.get("dashboard_port"), port)
    if workers < 1 or not 1 <= threads <= 64:
        raise InvalidConfig(
            f"workers ({workers}) and threads ({threads}) must be 1 or more", hint="e.g. workers = 2"
        )
    worker_class = str(values.get("worker_class", "sync"))
    if worker_class not in ("sync", "gthread"):
        raise InvalidConfig(
            f"worker_class {worker_class!r} is not sync or gthread", hint="use sync (the default)"
        )
    pin_workers = _pin_workers(values.get("pin_workers", "auto"))
    deploy_bytes, answer_rows, answer_bytes = (_bound(values, name, low, high) for name, low, high in _BOUNDS)
    header_timeout_s, body_timeout_s = (
        _seconds(values, name) for name in ("header_timeout_s", "body_timeout_s")
    )
    bindir = values.get("pg_bindir")
    return Settings(
        project_dir=project,
        database_url=values.get("database_url") or None,
        host=str(values.get("host", "127.0.0.1")),
        port=port,
        dashboard_port=dashboard_port,
        workers=workers,
        worker_class=worker_class,
        threads=threads,
        pin_workers=pin_workers,
        migrations_dir=str(values.get("migrations_dir", "migrations")),
        pg_bindir=Path(bindir) if bindir else None,
        pg_fallback_dir=_pg_fallback_dir(values.get("pg_fallback_dir", DEFAULT_PG_FALLBACK_DIR)),
        **{name: str(values[name]) if values.get(name) else None for name in _AUTH_KEYS.values()},
        routes=tuple(values.get("routes", ())),
        cron=tuple(values.get("cron", ())),
        queue_workers=queue_workers,
        fetch_allow=_host_list(values.get("fetch_allow", ())),
        otlp_endpoint=_otlp_endpoint(values.get("otlp_endpoint")),
        name=str(values.get("name") or project.name),
        function_limits=dict(values.get("function_limits", {})),
        deploy_gate=values.get("deploy_gate"),
        dev_replay_last=int(values.get("dev_replay_last", DEFAULT_DEV_REPLAY_LAST)),
        max_deploy_bytes=deploy_bytes,
        max_answer_rows=answer_rows,
        max_answer_bytes=answer_bytes,
        header_timeout_s=header_timeout_s,
        body_timeout_s=body_timeout_s,
    )


def _dashboard_port(value: Any, port: int) -> int:
    """The dashboard's port: given (0: no dashboard), or the one after `port`."""
    if value is None or value == "":
        return port + 1 if port < 65535 else 0
    try:
        dashboard_port = int(value)
    except (TypeError, ValueError) as exc:
        raise InvalidConfig(
            f"dashboard_port {value!r} is not a port", hint="e.g. dashboard_port = 4001"
        ) from exc
    if not 0 <= dashboard_port < 65536 or dashboard_port == port:
        raise InvalidConfig(
            f"dashboard_port {dashboard_port} must be 1-65535 and not the port ({port})",
            hint="e.g. dashboard_port = 4001; 0 serves no dashboard",
        )
    return dashboard_port


# Sizes a setting may take: name, lowest, highest.
_BOUNDS = (
    ("max_deploy_bytes", 1024, 4 * 1024**3),
    ("max_answer_rows", 1, 100_000_000),
    ("max_answer_bytes", 1024, 1024**3),
)


def _bound(values: dict[str, Any], name: str, low: int, high: int) -> int:
    """A whole number setting within [low, high] (its default when unset)."""
    default = next(f.default for f in fields(Settings) if f.name == name)
    value = values.get(name, default)
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = None
    if isinstance(value, bool) or number is None or not low <= number <= high:
        raise InvalidConfig(f"{name} {value!r} is not a whole number from {low} to {high}",
                            hint=f"e.g. {name} = {default}")  # fmt: skip
    return number


# A read deadline (seconds) is from MIN_READ_TIMEOUT_S to MAX_READ_TIMEOUT_S.
MIN_READ_TIMEOUT_S, MAX_READ_TIMEOUT_S = 0.1, 3600.0


def _seconds(values: dict[str, Any], name: str) -> float:
    """A read deadline in seconds (its default when unset): a number from 0.1 to 3600."""
    default = next(f.default for f in fields(Settings) if f.name == name)
    value = values.get(name, default)
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = None
    if isinstance(value, bool) or seconds is None or not MIN_READ_TIMEOUT_S <= seconds <= MAX_READ_TIMEOUT_S:
        raise InvalidConfig(
            f"{name} {value!r} is not a number of seconds"
            f" from {MIN_READ_TIMEOUT_S:g} to {MAX_READ_TIMEOUT_S:g}",
            hint=f"e.g. {name} = {default:g}",
        )
    return seconds


def _pin_workers(value: Any) -> PinMode:
    """`auto`, `on` or `off`; true and false (or 1 and 0) are `on` and `off`."""
    text = str(value).lower()
    mode = {"true": "on", "1": "on", "false": "off", "0": "off"}.get(text, text)
    if mode not in get_args(PinMode):
        raise InvalidConfig(f"pin_workers {value!r} is not auto, on or off", hint="use auto (the default)")
    return cast(PinMode, mode)


def _pg_fallback_dir(value: Any) -> Path | None:
    """An absolute folder, or `off` (false works too) for none."""
    if value is False or str(value).lower() in ("off", "false", "0", "none"):
        return None
    folder = Path(str(value))
    if not folder.is_absolute():
        raise InvalidConfig(
            f"pg_fallback_dir {str(value)!r} is not an absolute path", hint="e.g. /var/lib/flux, or off"
        )
    return folder


def _otlp_endpoint(value: Any) -> str | None:
    """A collector's base URL (`http://collector:4318`) or its full traces URL; traces go to `/v1/traces`."""
    if not value:
        return None
    url = str(value).rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise InvalidConfig(f"otlp_endpoint {url!r} is not an http(s) URL", hint="e.g. http://localhost:4318")
    return url if url.endswith("/v1/traces") else url + "/v1/traces"


def _host_list(value: Any) -> tuple[str, ...]:
    """`fetch_allow` as a list in flux.toml, or comma-separated in FLUX_FETCH_ALLOW."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(item, str) for item in items):
        raise InvalidConfig("fetch_allow must be a list of hosts", hint='e.g. fetch_allow = ["10.0.0.0/8"]')
    return tuple(item.strip() for item in items if item.strip())


def split_bind(bind: str) -> tuple[str, int]:
    """`--bind HOST:PORT` (`[::1]:4000` for IPv6) as a host and a port."""
    host, separator, port = bind.rpartition(":")
    if not separator or not port.isdigit() or not host:
        raise InvalidConfig(f"--bind {bind!r} is not HOST:PORT", hint="e.g. --bind 0.0.0.0:4000")
    return host.strip("[]"), int(port)

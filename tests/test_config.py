"""Settings from flux.toml and the environment: what the gateway and the server read, and what they refuse."""

from __future__ import annotations

from pathlib import Path

import pytest

from flux import cpus
from flux.config import load_settings, split_bind
from flux.errors import InvalidConfig


def test_auth_routes_and_fetch_allow_are_read(tmp_path: Path) -> None:
    (tmp_path / "flux.toml").write_text(
        '[server]\nworkers = 3\nworker_class = "gthread"\nthreads = 4\n'
        '[auth]\nsecret = "s"\naudience = "app"\n'
        '[[routes]]\nmethod = "GET"\npath = "/a"\nfunction = "f"\n'
    )
    settings = load_settings(tmp_path, env={"FLUX_FETCH_ALLOW": "10.0.0.0/8, internal.example"})
    assert (settings.workers, settings.worker_class, settings.threads) == (3, "gthread", 4)
    assert (settings.jwt_secret, settings.jwt_audience, settings.jwks_url) == ("s", "app", None)
    assert settings.routes == ({"method": "GET", "path": "/a", "function": "f"},)
    assert settings.fetch_allow == ("10.0.0.0/8", "internal.example")


@pytest.mark.parametrize(
    "toml",
    ['[auth]\nsecrte = "x"\n', '[server]\nworker_class = "gevent"\n', '[server]\nthreads = 0\n',
     "routes = 3\n", '[server]\nfetch_allow = 1\n', '[server]\npin_workers = "sometimes"\n'],
)  # fmt: skip
def test_a_bad_setting_is_one_clear_error(tmp_path: Path, toml: str) -> None:
    (tmp_path / "flux.toml").write_text(toml)
    with pytest.raises(InvalidConfig):
        load_settings(tmp_path, env={})


@pytest.mark.parametrize(
    ("toml", "env", "mode"),
    [("", {}, "auto"), ("[server]\npin_workers = false\n", {}, "off"),
     ("[server]\npin_workers = true\n", {}, "on"),
     ("[server]\npin_workers = false\n", {"FLUX_PIN_WORKERS": "ON"}, "on"),
     ("", {"FLUX_PIN_WORKERS": "0"}, "off")],
)  # fmt: skip
def test_pin_workers_is_auto_on_or_off(tmp_path: Path, toml: str, env: dict[str, str], mode: str) -> None:
    (tmp_path / "flux.toml").write_text(toml)
    assert load_settings(tmp_path, env=env).pin_workers == mode


def test_auto_pins_sync_workers_only_one_to_each_of_several_cpus() -> None:
    assert cpus.should_pin("auto", "sync", workers=2, cpu_count=2)
    assert cpus.should_pin("auto", "sync", workers=8, cpu_count=8)
    assert not cpus.should_pin("auto", "sync", workers=3, cpu_count=2)  # one CPU would get two workers
    assert not cpus.should_pin("auto", "sync", workers=4, cpu_count=2)  # measured: no clear gain
    assert not cpus.should_pin("auto", "sync", workers=2, cpu_count=64)  # a container seeing its host's CPUs
    assert not cpus.should_pin("auto", "sync", workers=1, cpu_count=1)
    assert not cpus.should_pin("auto", "gthread", workers=2, cpu_count=2)
    assert cpus.should_pin("on", "gthread", workers=3, cpu_count=64)
    assert not cpus.should_pin("off", "sync", workers=2, cpu_count=2)


def test_bind_is_host_and_port() -> None:
    assert split_bind("0.0.0.0:4000") == ("0.0.0.0", 4000)
    assert split_bind("[::1]:4001") == ("::1", 4001)
    for bad in ("4000", "host:", ":4000", "host:port"):
        with pytest.raises(InvalidConfig):
            split_bind(bad)


@pytest.mark.parametrize(
    ("toml", "env", "folder"),
    [("", {}, Path("/var/lib/flux")), ('[server]\npg_fallback_dir = "/srv/flux"\n', {}, Path("/srv/flux")),
     ('[server]\npg_fallback_dir = "/srv/flux"\n', {"FLUX_PG_FALLBACK_DIR": "off"}, None),
     ("[server]\npg_fallback_dir = false\n", {}, None)],
)  # fmt: skip
def test_pg_fallback_dir_is_an_absolute_folder_or_off(
    tmp_path: Path, toml: str, env: dict[str, str], folder: Path | None
) -> None:
    (tmp_path / "flux.toml").write_text(toml)
    assert load_settings(tmp_path, env=env).pg_fallback_dir == folder


def test_a_relative_pg_fallback_dir_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidConfig, match="pg_fallback_dir 'flux' is not an absolute path"):
        load_settings(tmp_path, env={"FLUX_PG_FALLBACK_DIR": "flux"})


def test_read_deadlines_are_seconds_from_the_file_or_the_environment(tmp_path: Path) -> None:
    defaults = load_settings(tmp_path, env={})
    assert (defaults.header_timeout_s, defaults.body_timeout_s) == (10.0, 30.0)
    (tmp_path / "flux.toml").write_text("[server]\nheader_timeout_s = 2\nbody_timeout_s = 0.5\n")
    settings = load_settings(tmp_path, env={"FLUX_BODY_TIMEOUT_S": "7.5"})
    assert (settings.header_timeout_s, settings.body_timeout_s) == (2.0, 7.5)


@pytest.mark.parametrize("value", ["0", "-1", "0.05", "3601", '"soon"', "true", '"nan"', '"inf"'])
def test_a_bad_read_deadline_is_refused_naming_it(tmp_path: Path, value: str) -> None:
    (tmp_path / "flux.toml").write_text(f"[server]\nheader_timeout_s = {value}\n")
    with pytest.raises(
        InvalidConfig, match=r"header_timeout_s .* is not a number of seconds from 0\.1 to 3600"
    ):
        load_settings(tmp_path, env={})

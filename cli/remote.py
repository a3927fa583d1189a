"""The CLI's way to a Flux server's management API: `FLUX_URL` (default http://127.0.0.1:4000) and an admin
key from `FLUX_ADMIN_KEY`, or the one `flux login` stored for that URL in `~/.config/flux/credentials.json`
(mode 0600). Commands use it when `FLUX_URL` is set (and `flux invoke` always); otherwise they go to the
database directly."""

from __future__ import annotations

import json
import os
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import urllib3

from flux.errors import AdminKeyRefused, ServerUnreachable, error_for_code

DEFAULT_URL = "http://127.0.0.1:4000"
TIMEOUT_S = 60.0


def credentials_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "flux" / "credentials.json"


def stored_keys() -> dict[str, str]:
    path = credentials_path()
    return json.loads(path.read_text()) if path.exists() else {}


def store_key(url: str, admin_key: str) -> Path:
    """Keep `admin_key` for `url` in the credentials file (readable by this user only)."""
    keys = {**stored_keys(), url: admin_key}
    path = credentials_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        json.dump(keys, file, indent=2)
    path.chmod(0o600)
    return path


@dataclass(frozen=True)
class Remote:
    url: str
    admin_key: str

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        params: dict[str, Any] | None = None,
        *,
        exact_numbers: bool = False,
    ) -> Any:
        """One management API call; its JSON answer (None for 204), or the FluxError it answered. With
        `exact_numbers`, numbers keep every digit the server wrote (`Decimal`), as records hold them."""
        query = urllib.parse.urlencode({k: v for k, v in (params or {}).items() if v is not None})
        url = self.url + urllib.parse.quote(path) + (f"?{query}" if query else "")
        headers = {"authorization": f"Bearer {self.admin_key}", "content-type": "application/json"}
        data = json.dumps(body).encode() if body is not None else None
        try:
            response = urllib3.request(
                method, url, headers=headers, body=data, timeout=TIMEOUT_S, retries=False
            )
        except urllib3.exceptions.HTTPError as exc:
            raise ServerUnreachable(
                f"cannot reach {self.url}: {exc}", hint="check FLUX_URL, and that Flux runs there"
            ) from None
        if response.status == 204:
            return None
        try:
            if exact_numbers:
                from flux import jsontext  # psycopg comes with it: only for the commands that need it

                answer = jsontext.loads(response.data or b"null")
            else:
                answer = json.loads(response.data or b"null")
        except ValueError:
            answer = None
        if response.status >= 400:
            if isinstance(answer, dict) and isinstance(answer.get("code"), str):
                raise error_for_code(answer["code"], str(answer.get("message")), hint=answer.get("hint"),
                                     details=answer.get("details"))  # fmt: skip
            raise ServerUnreachable(
                f"{self.url} answered {response.status}, not as Flux does", hint="check FLUX_URL"
            )
        return answer


def remote(required: bool = False) -> Remote | None:
    """The management API the CLI should use: when FLUX_URL is set, or always when `required`."""
    url = os.environ.get("FLUX_URL")
    if url is None and not required:
        return None
    url = (url or DEFAULT_URL).rstrip("/")
    key = os.environ.get("FLUX_ADMIN_KEY") or stored_keys().get(url)
    if not key:
        raise AdminKeyRefused(
            f"no admin key for {url}",
            hint="set FLUX_ADMIN_KEY, or run `flux login` (keys: flux keys create --admin)",
        )
    return Remote(url, key)

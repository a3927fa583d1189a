"""The code a replay runs: what served the request (`recorded`, the artifact with its code_sha), the active
deployment's, a deployment's by version, or functions built from a folder or a git revision (the CLI builds
those)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flux.errors import DeploymentNotFound, NotReplayable
from flux.gateway.handler import BUILTINS
from flux.replay.engine import CodeFor
from flux.replay.recording import Recording
from flux.runtime.invoke import Function
from flux.runtime.limits import FunctionLimits

_RECORDED = """
SELECT a.runtime, a.code, coalesce(f.limits, '{}') FROM flux.artifacts a
  LEFT JOIN flux.deployment_functions f ON f.deployment_id = %s AND f.name = %s AND f.sha256 = a.sha256
 WHERE a.sha256 = %s
"""
_OF_VERSION = """
SELECT d.id, f.runtime, f.sha256, a.code, f.limits FROM flux.deployments d
  LEFT JOIN flux.deployment_functions f ON f.deployment_id = d.id AND f.name = %s
  LEFT JOIN flux.artifacts a ON a.sha256 = f.sha256
 WHERE CASE WHEN %s::bigint IS NULL THEN d.active ELSE d.id = %s END
"""


def recorded_code(conn: Any) -> CodeFor:
    """The code that served each request: its artifact, with the limits of the deployment it came from."""

    def code_for(recording: Recording) -> Function:
        request = recording.request
        row = conn.execute(
            _RECORDED, [request.get("deployment_id"), request["function"], request["code_sha"]]
        ).fetchone()
        if row is None:
            raise NotReplayable(
                f"the code that served request {recording.id} (sha256 {request['code_sha'][:12]})"
                " is no longer stored",
                hint="replay on other code: --code active, --code DIR or --code git:REV",
            )
        runtime, code, limits = row
        return Function(
            request["function"],
            runtime,
            bytes(code),
            request["code_sha"],
            FunctionLimits(**limits),
            request.get("deployment_id"),
        )

    return _with_builtins(code_for)


def deployed_code(conn: Any, version: int | None = None) -> CodeFor:
    """The functions of deployment `version`, or of the active deployment."""

    def code_for(recording: Recording) -> Function:
        name = recording.request["function"]
        row = conn.execute(_OF_VERSION, [name, version, version]).fetchone()
        if row is None:
            raise DeploymentNotFound(
                f"no deployment {version}" if version is not None else "no deployment is active",
                hint="flux deployments ls",
            )
        deployment, runtime, sha, code, limits = row
        if sha is None:
            raise NotReplayable(
                f"deployment {deployment} has no function {name!r}",
                hint="replay on the code that has it: --version N or --code recorded",
            )
        return Function(name, runtime, bytes(code), sha, FunctionLimits(**limits), deployment)

    return _with_builtins(code_for)


def built_code(functions: Mapping[str, Function]) -> CodeFor:
    """Functions built from a folder or a git revision (nothing deployed)."""

    def code_for(recording: Recording) -> Function:
        name = recording.request["function"]
        if name not in functions:
            raise NotReplayable(f"the code given has no function {name!r}", hint="give code that has it")
        return functions[name]

    return _with_builtins(code_for)


def _with_builtins(code_for: CodeFor) -> CodeFor:
    """`code_for`, but a built-in (`POST /db/query`) runs no code of the project's: the same on any code."""

    def with_builtins(recording: Recording) -> Function:
        return BUILTINS[recording.request["function"]] if recording.builtin else code_for(recording)

    return with_builtins

"""Every error a user can cause: one root class, one stable FX code per cause.

Codes are `FX` + 3 digits, grouped by hundreds (see docs/errors.md). A code is also a valid custom SQLSTATE,
so PL/pgSQL raises `USING ERRCODE = 'FX501'` and `flux.db` maps it back to the same class here.
Retired codes stay in `RETIRED` and are never reused.
"""

from __future__ import annotations

from typing import Any, ClassVar


class FluxError(Exception):
    """An error with a stable code, a one-line message that says what to do, and optional details."""

    code: str = "FX900"  # a class's code; an InvalidQuery takes its first problem's (see there)
    http_status: int = 500
    title: ClassVar[str] = "internal error"

    def __init__(self, message: str, *, details: Any = None, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        self.hint = hint

    def to_dict(self, request_id: str | None = None) -> dict[str, Any]:
        """The HTTP body of this error: `{code, message, details, hint, request_id}`."""
        return {
            "code": self.code,
            "message": self.message,
            "details": self.details,
            "hint": self.hint,
            "request_id": request_id,
        }

    def __str__(self) -> str:
        text = f"{self.code}: {self.message}"
        return f"{text} ({self.hint})" if self.hint else text


# -- FX0xx gateway and auth -----------------------------------------------------------------------------


class MalformedBody(FluxError):
    code = "FX001"
    http_status = 400
    title = "the request body is not valid JSON"


class UnsupportedMediaType(FluxError):
    code = "FX002"
    http_status = 415
    title = "the request body is not application/json"


class PayloadTooLarge(FluxError):
    code = "FX003"
    http_status = 413
    title = "the request body is larger than the route allows"


class BodyTooDeep(FluxError):
    code = "FX006"
    http_status = 400
    title = "the request body's JSON nests deeper than 128 levels"


class RouteNotFound(FluxError):
    code = "FX004"
    http_status = 404
    title = "no route matches the path"


class MethodNotAllowed(FluxError):
    code = "FX005"
    http_status = 405
    title = "the path has routes, but not for this method"


class InvalidTenantClaim(FluxError):
    code = "FX010"
    http_status = 401
    title = "the tenant id of the caller is not a uuid"


class MissingCredentials(FluxError):
    code = "FX011"
    http_status = 401
    title = "the route needs an API key or a token, and the request has none"


class InvalidApiKey(FluxError):
    code = "FX012"
    http_status = 401
    title = "the API key is unknown or revoked"


class InvalidToken(FluxError):
    code = "FX013"
    http_status = 401
    title = "the token is invalid: signature, expiry, not-before, audience or issuer"


class CorsOriginRefused(FluxError):
    code = "FX014"
    http_status = 403
    title = "the route does not allow requests from this origin"


class RateLimited(FluxError):
    code = "FX020"
    http_status = 429
    title = "too many requests: the tenant's or the route's rate limit is reached"


# -- FX1xx the query language ----------------------------------------------------------------------------
# A query with problems raises one InvalidQuery listing every problem, each with its own code below, a JSON
# pointer into the query, and a hint such as the nearest existing name; the error takes the first one's code.


class InvalidQuery(FluxError):
    """A query refused before it ran. `problems` lists every problem found, and the error answers with the
    code (and HTTP status) of the first, so a client sees the specific cause (FX101, FX102, ...). Its own code
    FX100 stays only for a query with no problem listed (a query file that is not JSON)."""

    code = "FX100"
    http_status = 400
    title = "the query is not valid; problems list every problem, and the code is the first one's"

    def __init__(
        self,
        message: str,
        *,
        problems: list[dict[str, str]] | None = None,
        details: Any = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, details=details, hint=hint)
        self.problems = list(problems or ())
        first = ERRORS.get(self.problems[0].get("code", "")) if self.problems else None
        if first is not None:
            self.code, self.http_status = first.code, first.http_status

    def to_dict(self, request_id: str | None = None) -> dict[str, Any]:
        found = super().to_dict(request_id)
        return found | {"problems": self.problems} if self.problems else found


class UnknownTable(FluxError):
    code = "FX101"
    http_status = 400
    title = "no such table or view"


class UnknownColumn(FluxError):
    code = "FX102"
    http_status = 400
    title = "no such column"


class UnknownRelation(FluxError):
    code = "FX103"
    http_status = 400
    title = "no foreign key joins these tables"


class InvalidOperator(FluxError):
    code = "FX104"
    http_status = 400
    title = "unknown filter operator, or a value of the wrong kind for it"


class InvalidQueryShape(FluxError):
    code = "FX105"
    http_status = 400
    title = "a key is unknown, missing or of the wrong JSON type"


class QueryTooDeep(FluxError):
    code = "FX110"
    http_status = 400
    title = "nested relations go deeper than allowed"


class TooManyRows(FluxError):
    code = "FX111"
    http_status = 400
    title = "the query would return more rows than allowed"


class AnswerTooLarge(FluxError):
    code = "FX114"
    http_status = 400
    title = "the answer, rows of embedded relations included, is over max_answer_rows or max_answer_bytes"


class TooManyColumns(FluxError):
    code = "FX113"
    http_status = 400
    title = "the query asks for more columns than Postgres allows in one select (1664)"


class QueryTimedOut(FluxError):
    code = "FX112"
    http_status = 504
    title = "the statement ran longer than the role's statement_timeout"


class InvalidRawSql(FluxError):
    code = "FX120"
    http_status = 400
    title = "raw SQL must be exactly one valid statement"


class ConstraintViolation(FluxError):
    code = "FX130"
    http_status = 409
    title = "a write broke a constraint (unique, foreign key, not null or check)"


class InvalidValue(FluxError):
    code = "FX131"
    http_status = 400
    title = "a value does not fit its column's type"


# FX140-FX149: the web dashboard under /flux/ (flux/dashboard/).


class SignInRequired(FluxError):
    code = "FX140"
    http_status = 401
    title = "a dashboard call came without a session, or with one that ended or whose admin key was revoked"


class CsrfRefused(FluxError):
    code = "FX141"
    http_status = 403
    title = "a dashboard form came without this session's CSRF token, or from another site"


class DashboardMethodRefused(FluxError):
    code = "FX142"
    http_status = 405
    title = "a dashboard address was asked with a method it does not take (pages are GET, actions POST)"


class DashboardPageNotFound(FluxError):
    code = "FX143"
    http_status = 404
    title = "no dashboard page or file at that address of the dashboard's port"


class ScriptedRequestRefused(FluxError):
    code = "FX144"
    http_status = 403
    title = "a dashboard page or form was fetched by a script, not opened or submitted by the browser"


class InvalidTimeWindow(FluxError):
    code = "FX146"
    http_status = 400
    title = "a dashboard page's from/until is not a date and time, or until comes before from"


class DashboardElsewhere(FluxError):
    code = "FX145"
    http_status = 421
    title = "a dashboard form or call came to the project's port; the dashboard answers on its own port"


class DashboardHostRefused(FluxError):
    code = "FX147"
    http_status = 400
    title = "a dashboard address on the project's port came with a Host header that is not a host name"


class LiveFeedNotYours(FluxError):
    code = "FX148"
    http_status = 403
    title = "a dashboard live feed was asked for a follower that is not this session's"


# -- FX2xx policies -------------------------------------------------------------------------------------


class ColumnNotReadable(FluxError):
    code = "FX201"
    http_status = 403
    title = "a column policy forbids reading this column for the role"


class ColumnNotWritable(FluxError):
    code = "FX202"
    http_status = 403
    title = "a column policy forbids writing this column for the role"


class RawSqlForbidden(FluxError):
    code = "FX203"
    http_status = 403
    title = "raw SQL is for the service role only"


class PermissionDenied(FluxError):
    code = "FX204"
    http_status = 403
    title = "Postgres refused the role this access (a GRANT or a row-level security policy)"


class UnsupportedStatement(FluxError):
    code = "FX205"
    http_status = 400
    title = "a statement Flux cannot run on a request's connection (COPY to or from the client)"


# -- FX3xx the runtime: functions and their host calls --------------------------------------------------
# A host call that fails answers the function with the error (it may catch it); what the function does not
# catch fails the request with FX300 and the error in its span.


class FunctionFailed(FluxError):
    code = "FX300"
    title = "the function threw an error"


class FunctionTimedOut(FluxError):
    code = "FX301"
    http_status = 504
    title = "the function ran past its time or CPU limit"


class FunctionOutOfMemory(FluxError):
    code = "FX302"
    title = "the function went past its memory limit"


class InvalidFunctionResponse(FluxError):
    code = "FX303"
    http_status = 502
    title = "the function's response is not valid"


class UnknownHostCall(FluxError):
    code = "FX304"
    title = "the function called a host operation that does not exist"


class InvalidHostCall(FluxError):
    code = "FX305"
    title = "the function passed bad arguments to a host call"


class FunctionCrashed(FluxError):
    code = "FX306"
    http_status = 502
    title = "the function's worker crashed"


class InvalidFunctionCode(FluxError):
    code = "FX307"
    title = "the function's code cannot be loaded (not built, or not the Flux ABI)"


class SecretNotFound(FluxError):
    code = "FX308"
    title = "the function asked for a secret that is not set"


class TransactionAborted(FluxError):
    code = "FX309"
    title = "an earlier database call of the request failed, so its transaction is rolled back"


class FetchRefused(FluxError):
    code = "FX310"
    title = "the function's fetch was refused (a private address, or not http/https)"


class FetchFailed(FluxError):
    code = "FX311"
    http_status = 502
    title = "the function's fetch failed or timed out"


# -- FX4xx the queue --------------------------------------------------------------------------------------


class InvalidJob(FluxError):
    code = "FX401"
    http_status = 400
    title = "the job cannot be enqueued (bad function name, queue, attempts or payload)"


class JobFunctionNotFound(FluxError):
    code = "FX402"
    http_status = 400
    title = "a pushed job names a function the active version does not have"


class JobNotFound(FluxError):
    code = "FX403"
    http_status = 404
    title = "no job has this id"


class JobLeaseLost(FluxError):
    code = "FX404"
    http_status = 409
    title = "the worker running a job attempt stopped, or held it past its lease; the job runs again"


class JobStateConflict(FluxError):
    code = "FX405"
    http_status = 409
    title = "its state does not allow this (retry a failed, dead or cancelled job; cancel a waiting one)"


class InvalidSchedule(FluxError):
    code = "FX406"
    http_status = 400
    title = "a cron schedule has a bad expression, time zone, name or field"


# -- FX5xx trace and replay -----------------------------------------------------------------------------


class TableNotTrackable(FluxError):
    code = "FX501"
    http_status = 400
    title = "only your own tables with a primary key can be tracked"


class InvalidRetention(FluxError):
    code = "FX502"
    http_status = 400
    title = "retention period is not a positive duration"


class NotInRecording(FluxError):
    code = "FX506"
    http_status = 409
    title = "a replayed function made a call its recording does not have, so the replay cannot answer it"


class NotReplayable(FluxError):
    code = "FX507"
    http_status = 400
    title = "the request cannot be replayed: no function of yours ran in it, or its code is not stored"


class InvalidReplayOption(FluxError):
    code = "FX508"
    http_status = 400
    title = "a replay's options do not fit together, or name code that the server cannot see"


# -- FX6xx projects, deployments, secrets and the management API ------------------------------------------


class InvalidProject(FluxError):
    code = "FX601"
    http_status = 400
    title = "the project cannot be deployed (a route, a function, a limit or a migration is wrong)"


class DeploymentNotFound(FluxError):
    code = "FX602"
    http_status = 404
    title = "no deployment with that version"


class InvalidSecretName(FluxError):
    code = "FX603"
    http_status = 400
    title = "a secret's name is an identifier: letters, digits and _, not starting with a digit"


class SecretKeyInvalid(FluxError):
    code = "FX604"
    http_status = 500
    title = "the secret key is missing, malformed, or not the key the secrets were stored with"


class NotFound(FluxError):
    code = "FX605"
    http_status = 404
    title = "no such secret, tenant or key"


class InvalidRequest(FluxError):
    code = "FX607"
    http_status = 400
    title = "a management call's parameter or field is wrong: unknown, of the wrong type, or out of range"


class ServerUnreachable(FluxError):
    code = "FX608"
    http_status = 502
    title = "the Flux server at FLUX_URL does not answer"


class AdminKeyRefused(FluxError):
    code = "FX606"
    http_status = 401
    title = "the management API needs a live admin key"


class RequestNotFound(FluxError):
    code = "FX503"
    http_status = 404
    title = "no request has that id (or id prefix), or more than one has"


class TableNotTracked(FluxError):
    code = "FX504"
    http_status = 404
    title = "the table does not exist, or Flux does not record its changes"


class FollowerGone(FluxError):
    code = "FX505"
    http_status = 404
    title = "a follower of new requests (flux tail through the API) expired or was stopped"


# FX510-FX511: the code a replay runs on (`flux incident replay --code DIR|git:REV`, `flux bug bisect`).


class CodeFolderNotFound(FluxError):
    code = "FX510"
    http_status = 400
    title = "the folder given as the code to replay on does not exist or is not a Flux project"


class GitRevisionUnusable(FluxError):
    code = "FX511"
    http_status = 400
    title = "the git revision to replay on cannot be checked out (no repository, no such commit, no project)"


# FX512-FX514: `flux bug bisect`.


class InvalidExpectation(FluxError):
    code = "FX512"
    http_status = 400
    title = "bisect's --expect is not a predicate it can read"


class BisectEndpointsRefused(FluxError):
    code = "FX513"
    http_status = 409
    title = "bisect's endpoints do not judge as given: --good is bad, --bad is good, or one cannot run"


class InvalidBisect(FluxError):
    code = "FX514"
    http_status = 400
    title = "bisect cannot run as asked: no request, no commits between --good and --bad, or no database here"


# FX515-FX518: the deploy gate (`flux deploy --gate`: recent requests replayed on the candidate first).


class DeployGateRefused(FluxError):
    code = "FX515"
    http_status = 409
    title = "recent requests replayed on the candidate version diverged; the deploy gate activated nothing"


class InvalidGateOption(FluxError):
    code = "FX516"
    http_status = 400
    title = "the deploy gate's options do not fit together, or are out of range"


class VersionRefusedByGate(FluxError):
    code = "FX517"
    http_status = 409
    title = "the version was refused by the deploy gate and never activated, so it cannot be rolled back to"


class ActiveVersionChanged(FluxError):
    code = "FX518"
    http_status = 409
    title = (
        "another version was activated while the deploy gate ran, so its verdict is about the wrong version"
    )


# FX520: the database a replay runs on (`--db live|as-of`).


class RewindFailed(FluxError):
    code = "FX520"
    http_status = 409
    title = "a live or as-of replay could not set its database up: the writes since could not be taken back"


# -- FX8xx set-up: configuration, database, migrations, server ------------------------------------------


class InvalidConfig(FluxError):
    code = "FX800"
    title = "configuration is invalid"


class DatabaseUnreachable(FluxError):
    code = "FX801"
    http_status = 503
    title = "Postgres cannot be reached"


class DatabaseUnsupported(FluxError):
    code = "FX802"
    title = "Postgres is older than 14"


class PortInUse(FluxError):
    code = "FX803"
    title = "the server's port is already taken"


class DataDirectoryNotUsable(FluxError):
    code = "FX804"
    title = "the embedded Postgres data directory cannot be used"


class EmbeddedPostgresFailed(FluxError):
    code = "FX805"
    title = "the embedded Postgres did not start"


class PostgresBinariesMissing(FluxError):
    code = "FX806"
    title = "no Postgres server binaries were found"


class NoDatabase(FluxError):
    code = "FX807"
    title = "a command that only reads found no database, and creates none"


class MigrationFailed(FluxError):
    code = "FX810"
    http_status = 400  # a project's migration, uploaded with a deploy (the management API)
    title = "a migration failed and was rolled back"


class MigrationEdited(FluxError):
    code = "FX811"
    http_status = 409  # a project's migration, uploaded with a deploy (the management API)
    title = "an applied migration file was edited"


class DatabaseNewerThanCode(FluxError):
    code = "FX812"
    http_status = 409  # a project's migration, uploaded with a deploy (the management API)
    title = "the database has migrations this code does not know"


class MigrationFileInvalid(FluxError):
    code = "FX813"
    http_status = 400  # a project's migration, uploaded with a deploy (the management API)
    title = "a migration file is misnamed, out of sequence or not valid SQL"


class DatabaseNotMigrated(FluxError):
    code = "FX814"
    http_status = 503
    title = "the database lacks Flux's migrations"


class RequestLost(FluxError):
    code = "FX815"
    http_status = 500
    title = "the worker serving the request died before it finished"


# -- FX9xx internal -------------------------------------------------------------------------------------


class InternalError(FluxError):
    code = "FX900"
    title = "internal error"


def _all_error_classes() -> dict[str, type[FluxError]]:
    found: dict[str, type[FluxError]] = {}
    pending: list[type[FluxError]] = [FluxError]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if cls is not FluxError:
            found[cls.code] = cls
    return dict(sorted(found.items()))


ERRORS: dict[str, type[FluxError]] = _all_error_classes()
"""Every live code and its class, in code order."""

RETIRED: dict[str, str] = {
    "FX509": "ReplayRefused: a live or as-of replay refused raw SQL that creates a function; replays now run"
    " the function's SQL on a request connection, where such a function reaches no more than in the gateway",
}
"""Codes no longer raised, with what they meant; kept so they are never reused."""


def error_for_code(code: str, message: str, *, details: Any = None, hint: str | None = None) -> FluxError:
    """Build the error for `code` (a SQLSTATE raised by PL/pgSQL); an unknown FX code stays an FX900."""
    cls = ERRORS.get(code, InternalError)
    return cls(message, details=details, hint=hint)

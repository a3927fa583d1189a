"""A request's record as an OpenTelemetry trace (OTLP), for Jaeger, Grafana Tempo or any collector.

The request is the root span (kind SERVER), in the W3C trace the request continued (or one named after the
request id); each recorded span becomes a child with its module, seq, input, output and error as attributes;
each row change becomes an event on the database call that made it. `to_otlp_json` writes OTLP/JSON as the
specification has it (ids in hex, not protobuf's base64); `to_otlp_protobuf` the binary form collectors take
on `/v1/traces`.
"""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from flux import __version__, jsontext
from flux.trace.ids import request_span_id
from flux.trace.tree import Trace

MAX_ATTRIBUTE_CHARS = 65_536  # inputs and outputs longer than this are cut (and say so)
_ID_FIELDS = ("traceId", "spanId", "parentSpanId")


def export_request(trace: Trace) -> ExportTraceServiceRequest:
    """The OTLP export request holding `trace` as one trace."""
    return export_requests([trace])


def export_requests(traces: list[Trace]) -> ExportTraceServiceRequest:
    """One OTLP export request holding each of `traces`."""
    spans = [span for trace in traces for span in _spans(trace)]
    scope = ScopeSpans(scope=InstrumentationScope(name="flux", version=__version__), spans=spans)
    resource = Resource(attributes=_attributes({"service.name": "flux", "service.version": __version__}))
    return ExportTraceServiceRequest(resource_spans=[ResourceSpans(resource=resource, scope_spans=[scope])])


def _spans(trace: Trace) -> list[Span]:
    """The request's root span, then each recorded span."""
    request = trace.request
    request_id = str(request["id"])
    trace_id = bytes.fromhex(request["trace_id"]) if request.get("trace_id") else uuid.UUID(request_id).bytes
    root_id = bytes.fromhex(request_span_id(request_id))  # the parent its outbound calls named
    start_ns = _epoch_ns(request["started_at"])
    root = Span(
        trace_id=trace_id,
        span_id=root_id,
        name=f"{request['method']} {request['path']}" if request.get("method") else str(request["kind"]),
        kind=Span.SPAN_KIND_SERVER,
        start_time_unix_nano=start_ns,
        end_time_unix_nano=start_ns + int(request["duration_us"] or 0) * 1000,
        attributes=_attributes(
            {
                "flux.request_id": request_id,
                "flux.kind": request["kind"],
                "flux.function": request["function"],
                "flux.deployment_id": request["deployment_id"],
                "flux.code_sha": request["code_sha"],
                "http.request.method": request.get("method"),
                "url.path": request.get("path"),
                "http.response.status_code": request.get("status"),
            }
        ),
        status=_status(request["ok"], request["error"]),
    )
    ids = {span["seq"]: bytes.fromhex(span["span_id"]) for span in trace.spans}
    events: dict[int, list[Span.Event]] = {}
    for m in trace.mutations:
        if m["span_seq"] in ids:
            events.setdefault(m["span_seq"], []).append(_mutation_event(m))
    spans = [root]
    for span in trace.spans:
        started = _epoch_ns(span["started_at"])
        spans.append(
            Span(
                trace_id=trace_id,
                span_id=ids[span["seq"]],
                parent_span_id=ids.get(span["parent_seq"], root_id),
                name=span["name"],
                kind=Span.SPAN_KIND_CLIENT if span["module"] == "fetch" else Span.SPAN_KIND_INTERNAL,
                start_time_unix_nano=started,
                end_time_unix_nano=started + int(span["duration_us"] or 0) * 1000,
                attributes=_attributes(
                    {
                        "flux.module": span["module"],
                        "flux.seq": span["seq"],
                        "flux.input": _text(span["input"]),
                        "flux.output": _text(span["output"]),
                        "flux.attributes": _text(span["attributes"]),
                    }
                ),
                events=events.get(span["seq"], []),
                status=_status(span["ok"], span["error"]),
            )
        )
    return spans


def to_otlp_json(trace: Trace) -> str:
    """OTLP/JSON: protobuf's JSON mapping, with enums as numbers and ids in hex as OTLP requires."""
    document = json_format.MessageToDict(export_request(trace), use_integers_for_enums=True)
    for resource_spans in document.get("resourceSpans", []):
        for scope_spans in resource_spans.get("scopeSpans", []):
            for span in scope_spans.get("spans", []):
                for name in _ID_FIELDS:
                    if name in span:
                        span[name] = _hex(span[name])
    return json.dumps(document, ensure_ascii=False)


def to_otlp_protobuf(trace: Trace) -> bytes:
    return bytes(export_request(trace).SerializeToString())


def _mutation_event(m: dict[str, Any]) -> Span.Event:
    return Span.Event(
        time_unix_nano=_epoch_ns(m["at"]),
        name=f"{m['op']} {m['table_schema']}.{m['table_name']}",
        attributes=_attributes(
            {
                "flux.row_pk": _text(m["row_pk"]),
                "flux.changed": ",".join(m["changed"] or []),
                "flux.old": _text(m["old"]),
                "flux.new": _text(m["new"]),
            }
        ),
    )


def _status(ok: bool, error: Any) -> Status:
    if ok:
        return Status(code=Status.STATUS_CODE_UNSET)
    message = f"{error.get('code')}: {error.get('message')}" if isinstance(error, dict) else "failed"
    return Status(code=Status.STATUS_CODE_ERROR, message=message)


def _attributes(values: dict[str, Any]) -> list[KeyValue]:
    """Attributes of the values that are set: text, whole numbers or booleans."""
    attributes = []
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, bool):
            attributes.append(KeyValue(key=key, value=AnyValue(bool_value=value)))
        elif isinstance(value, int):
            attributes.append(KeyValue(key=key, value=AnyValue(int_value=value)))
        else:
            attributes.append(KeyValue(key=key, value=AnyValue(string_value=str(value))))
    return attributes


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = jsontext.display(value)
    return text if len(text) <= MAX_ATTRIBUTE_CHARS else text[:MAX_ATTRIBUTE_CHARS] + "…(cut)"


def _epoch_ns(moment: Any) -> int:
    return int(moment.timestamp()) * 1_000_000_000 + int(moment.microsecond) * 1000


def _hex(base64_text: str) -> str:
    return base64.b64decode(base64_text).hex()

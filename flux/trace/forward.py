"""`flux server --otlp-endpoint URL`: every finished trace sent to an OpenTelemetry collector over OTLP/HTTP
(protobuf), by a process of its own (`python -m flux.trace.forward`) that follows new requests as `flux tail`
does. It is not a thread of the gunicorn master, whose forked workers would inherit its connection.

A collector that cannot be reached, or refuses a batch, costs that batch (logged), never a request: the
record stays in Postgres and `flux trace export` can send it again.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
from typing import Any

import urllib3

from flux import db
from flux.trace import otlp
from flux.trace.tree import announced_requests, load_trace

log = logging.getLogger("flux.forward")
TIMEOUT_S = 5.0
RECONNECT_S = 1.0


class OtlpForwarder:
    """Follows new requests and posts each announced batch of them to `endpoint` as one OTLP export."""

    def __init__(self, dsn: str, endpoint: str) -> None:
        self.dsn = dsn
        self.endpoint = endpoint
        self.http = urllib3.PoolManager(timeout=TIMEOUT_S, retries=False)
        self.stop = threading.Event()

    def run(self) -> None:
        """Until `stop` is set: follow, load, send; reconnect after losing Postgres."""
        while not self.stop.is_set():
            try:
                with db.connect(self.dsn, autocommit=True) as conn:
                    for ids in announced_requests(conn, self.stop):
                        self.send([load_trace(conn, request_id) for request_id in ids])
            except Exception as exc:
                log.warning("the OTLP forwarder lost Postgres: %s", db.as_flux_error(exc).message)
                self.stop.wait(RECONNECT_S)

    def send(self, traces: list[Any]) -> bool:
        """Post `traces` as one export request; False (and a log line) when the collector did not take it."""
        body = otlp.export_requests(traces).SerializeToString()
        try:
            answer = self.http.request(
                "POST", self.endpoint, body=body, headers={"content-type": "application/x-protobuf"}
            )
        except urllib3.exceptions.HTTPError as exc:
            log.warning("could not send %d traces to %s: %s", len(traces), self.endpoint, exc)
            return False
        if answer.status >= 300:
            log.warning("%s refused %d traces: HTTP %d", self.endpoint, len(traces), answer.status)
            return False
        return True


def main() -> None:
    parser = argparse.ArgumentParser(description="Send every finished Flux trace to an OTLP collector.")
    parser.add_argument("--endpoint", required=True, help="the collector's /v1/traces URL")
    arguments = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="flux: %(message)s")
    forwarder = OtlpForwarder(os.environ["DATABASE_URL"], arguments.endpoint)
    signal.signal(signal.SIGTERM, lambda *_: forwarder.stop.set())
    signal.signal(signal.SIGINT, lambda *_: forwarder.stop.set())
    log.info("sending traces to %s", arguments.endpoint)
    forwarder.run()


if __name__ == "__main__":
    main()

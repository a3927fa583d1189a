"""A Flux function in Python (a WebAssembly component built by `flux build py_notes` with componentize-py):
records a note, pushes a job, fetches the URL given in the request, and reads the host's clock and randomness.
"""

import json
import random
import time

import wit_world
from wit_world.imports import host


def call(op: str, args: object = None) -> object:
    """One host call; a failed one raises, with the FX code in the message."""
    reply = json.loads(host.call(op, json.dumps(args)))
    if not reply["ok"]:
        raise RuntimeError(f"{reply['error']['code']}: {reply['error']['message']}")
    return reply["value"]


class WitWorld(wit_world.WitWorld):
    def handle(self, request: str) -> str:
        req = json.loads(request)
        body = req.get("body") or {}
        now = time.time()  # WASI's clock, served and recorded by the host
        noise = random.random()  # seeded from WASI's random, served and recorded by the host
        host.log(f"py_notes at {now:.0f}")
        note = call(
            "db.query",
            {
                "insert": "notes",
                "values": {"body": body.get("text", "written by python")},
                "returning": ["id", "body"],
            },
        )
        job = call("queue.push", {"function": "py_notes", "payload": {"from": "python"}})
        fetched = call("fetch", {"url": body["url"]}) if body.get("url") else None
        return json.dumps({"note": note, "job": job, "fetched": fetched, "now": now, "noise": noise})

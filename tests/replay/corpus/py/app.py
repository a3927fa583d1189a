"""The replay corpus in Python (a component): the clock and randomness through WASI, a log line, a secret, a
fetch, a read, a write and a push; `do` makes it raise or spin."""

import json
import random
import time
import uuid

import wit_world
from wit_world.imports import host


def call(op: str, args: object = None) -> object:
    reply = json.loads(host.call(op, json.dumps(args)))
    if not reply["ok"]:
        raise RuntimeError(f"{reply['error']['code']}: {reply['error']['message']}")
    return reply["value"]


class WitWorld(wit_world.WitWorld):
    def handle(self, request: str) -> str:
        body = json.loads(request).get("body") or {}
        started, clock = time.time(), time.monotonic()
        noise, token = random.random(), str(uuid.uuid4())
        host.log(f"python at {started:.3f}")
        secret = call("secrets.get", {"name": "token"})
        fetched = call("fetch", {"url": body["url"] + "/py", "headers": {"x-token": secret}})
        values = {"body": f"{body['text']} {noise:.6f}"}
        event = call("db.query", {"insert": "events", "values": values, "returning": ["id", "at", "uid"]})
        read = call("db.query", {"select": "events", "where": {"id": {"lte": event["rows"][0]["id"]}}})
        job = call("queue.push", {"function": "after", "payload": {"event": event["rows"][0]}})
        if body.get("do") == "throw!":
            raise ValueError(f"refused {event['rows'][0]['id']}")
        if body.get("do") == "timeout~":
            while True:
                pass
        took = time.monotonic() - clock
        answer = {"started": started, "noise": noise, "token": token, "fetched": fetched, "event": event}
        return json.dumps(answer | {"read": read, "job": job, "took": took, "secret": len(secret)})

"""GET /notes/count: how many notes there are, in Python (built into a WebAssembly component by Flux)."""

import json

import wit_world
from wit_world.imports import host


class WitWorld(wit_world.WitWorld):
    def handle(self, request: str) -> str:
        query = {"select": "notes", "columns": ["id"], "count": "exact", "limit": 1}
        reply = json.loads(host.call("db.query", json.dumps(query)))
        if not reply["ok"]:
            raise RuntimeError(f"{reply['error']['code']}: {reply['error']['message']}")
        return json.dumps({"count": reply["value"]["count"]})

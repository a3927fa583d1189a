"""The gateway: what happens to a request before its function runs (request id, route, CORS, body, auth,
rate limit), and the Falcon resource that runs it (`handler.py`)."""

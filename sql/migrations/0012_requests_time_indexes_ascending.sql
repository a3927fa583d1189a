-- Purpose: the time indexes of flux.requests in ascending order. Scanned backwards they serve "the latest first"
-- as well, and a new request then goes to the right edge of each, where a full page splits unevenly and stays
-- full. In descending order every new request went to the left edge, where each split left two half-empty
-- pages: these indexes were twice their size, and recording a request cost more (docs/performance.md).

DROP INDEX flux.requests_started_at_idx;
DROP INDEX flux.requests_function_started_at_idx;
DROP INDEX flux.requests_failed_started_at_idx;

CREATE INDEX requests_started_at_idx ON flux.requests (started_at);
CREATE INDEX requests_function_started_at_idx ON flux.requests (function, started_at);
CREATE INDEX requests_failed_started_at_idx ON flux.requests (started_at) WHERE NOT ok;
